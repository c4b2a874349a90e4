//! One process the agent started in a container: its pid, a pidfd to signal
//! it without pid-reuse races, its exit status and its stdio.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::reaper::{ExitStatus, ExitWatch};

use super::stdio::Stdio;

pub struct Process {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
    exit: ExitWatch,
    pub stdio: Stdio,
}

impl Process {
    pub fn new(pid: i32, pidfd: Option<OwnedFd>, exit: ExitWatch, stdio: Stdio) -> Self {
        Self {
            pid,
            pidfd,
            exit,
            stdio,
        }
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> ExitStatus {
        let mut watch = self.exit.clone();
        let status = match watch.wait_for(|s| s.is_some()).await {
            Ok(status) => *status,
            // The reaper is gone only when the agent shuts down.
            Err(_) => None,
        };
        status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL))
    }

    /// Sends `signal`; a process that already ended is not an error.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        let rc = match &self.pidfd {
            // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number
            // and a null siginfo pointer, which the kernel accepts.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            None => unsafe { libc::kill(self.pid, signal) as libc::c_long },
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }
}

/// Opens a pidfd for a child that has not been reaped yet (kernels before
/// 5.3 have none: signals then go by pid).
pub fn open_pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // The kernel's fds are ints, widened to the syscall's long.
    #[allow(clippy::cast_possible_truncation)]
    let fd = fd as RawFd;
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
