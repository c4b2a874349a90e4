//! Child reaping.
//!
//! The agent is the parent of its helpers and of every container process
//! (the helper clones them as siblings), and PID 1 in the guest adopts every
//! orphan. One reaper owns `waitpid(-1)`. Code that starts children and must
//! learn their pids first runs inside [`Reaper::exclusive`]: while it holds
//! the lock nothing is reaped, so a child that exits early cannot lose its
//! status before it is registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => 128 + sig,
        }
    }

    pub fn signal(self) -> i32 {
        match self {
            ExitStatus::Exited(_) => 0,
            ExitStatus::Signaled(sig) => sig,
        }
    }
}

/// Receives the exit status of one registered process.
pub type ExitWatch = watch::Receiver<Option<ExitStatus>>;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, watch::Sender<Option<ExitStatus>>>>,
}

/// Access to the registry while reaping is held off.
pub struct Registrar<'a> {
    waiters: MutexGuard<'a, HashMap<i32, watch::Sender<Option<ExitStatus>>>>,
}

impl Registrar<'_> {
    /// Starts watching `pid`, which must be a child of this process.
    pub fn register(&mut self, pid: i32) -> ExitWatch {
        let (tx, rx) = watch::channel(None);
        self.waiters.insert(pid, tx);
        rx
    }
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, watch::Sender<Option<ExitStatus>>>> {
        // A panic while the lock was held leaves the map consistent (inserts
        // and removes are single operations), so a poisoned lock is usable.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with reaping held off. `f` may wait for its own children
    /// with `waitpid(pid)`; it blocks, so call this from blocking contexts.
    pub fn exclusive<R>(&self, f: impl FnOnce(&mut Registrar<'_>) -> R) -> R {
        let result = {
            let mut registrar = Registrar {
                waiters: self.lock(),
            };
            f(&mut registrar)
        };
        // Children that exited meanwhile have already raised SIGCHLD.
        self.reap();
        result
    }

    /// Collects every exited child and hands registered statuses out.
    pub fn reap(&self) {
        let mut waiters = self.lock();
        loop {
            let status = match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    return;
                }
            };
            let (pid, exit) = status;
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    tracing::debug!(pid = pid.as_raw(), ?exit, "process exited");
                    tx.send_replace(Some(exit));
                }
                None => tracing::trace!(pid = pid.as_raw(), ?exit, "reaped unwatched process"),
            }
        }
    }

    /// Reaps on every SIGCHLD until the runtime stops. The signal handler is
    /// installed before this returns, so start it before any child.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let r = Arc::clone(&reaper);
                if let Err(e) = tokio::task::spawn_blocking(move || r.reap()).await {
                    tracing::error!("reaper task failed: {e}");
                }
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[tokio::test]
    async fn registered_child_status_arrives() {
        let reaper = Reaper::new();
        reaper.spawn().unwrap();
        let (pid, mut watch) = reaper.exclusive(|reg| {
            // The reaper, not Child::wait, collects this child.
            #[allow(clippy::zombie_processes)]
            let child = Command::new("/bin/sh")
                .args(["-c", "exit 7"])
                .spawn()
                .unwrap();
            let pid = i32::try_from(child.id()).unwrap();
            (pid, reg.register(pid))
        });
        assert!(pid > 0);
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            watch.wait_for(|s| s.is_some()),
        )
        .await
        .expect("exit status within 10 s")
        .unwrap()
        .unwrap();
        assert_eq!(status, ExitStatus::Exited(7));
        assert_eq!(status.code(), 7);
    }

    #[test]
    fn signal_status_code() {
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(9).signal(), 9);
        assert_eq!(ExitStatus::Exited(3).signal(), 0);
    }
}
