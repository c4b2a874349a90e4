//! The spawner: the thread that starts threads on behalf of threads under a seccomp filter.
//!
//! A new thread inherits the filters of the thread that creates it, and filters only ever add
//! up. A vCPU activating a device would hand its own filter to the device's workers, which
//! would then get the intersection of the vCPU's list and theirs; and the vCPU would need
//! `clone3` and the rest of thread creation. Instead such a thread sends the spawner a job and
//! waits for the handle. The spawner is started unconfined by [`super::prepare`] and then
//! confines itself as a [`ThreadKind::Spawner`]: no capabilities, and a filter that is the
//! union of every kind's lists plus thread creation and the calls a new thread makes to confine
//! itself. Its children thus start with that union and narrow it to their own kind's list. It
//! reads nothing from the guest: its only input is jobs from the VMM's own threads.
//!
//! There is one per process while some VM holds a [`Lease`] on it: it ends (and is joined) when
//! the last lease goes, after the VM's own threads, so that a stopped VM leaves no thread.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::thread::{Builder, JoinHandle};

use super::{ConfineError, Policy, PolicyScope, ThreadKind};

type Job = Box<dyn FnOnce() + Send>;

struct Running {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
    leases: usize,
}

static SPAWNER: Mutex<Option<Running>> = Mutex::new(None);

fn spawner() -> std::sync::MutexGuard<'static, Option<Running>> {
    SPAWNER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the spawner running; the last one dropped stops it.
#[must_use = "the spawner stops when its last lease is dropped"]
pub struct Lease(());

impl Drop for Lease {
    fn drop(&mut self) {
        let stopping = {
            let mut running = spawner();
            match running.as_mut() {
                Some(r) if r.leases > 1 => {
                    r.leases -= 1;
                    None
                }
                _ => running.take(),
            }
        };
        if let Some(Running { jobs, thread, .. }) = stopping {
            // The spawner's loop ends with its channel.
            drop(jobs);
            let _ = thread.join();
        }
    }
}

/// Starts the spawner if it is not running, and holds it. Called from a thread that is not
/// under a filter.
pub(super) fn lease() -> Result<Lease, ConfineError> {
    let mut running = spawner();
    if let Some(r) = running.as_mut() {
        r.leases += 1;
        return Ok(Lease(()));
    }
    let (jobs, rx) = mpsc::channel::<Job>();
    let _scope = PolicyScope::enter(Policy { seccomp: true });
    let thread = super::spawn(ThreadKind::Spawner, "vmm-spawner".into(), move || {
        for job in rx {
            job();
        }
    })?;
    *running = Some(Running {
        jobs,
        thread,
        leases: 1,
    });
    Ok(Lease(()))
}

/// Whether the spawner runs.
pub fn is_running() -> bool {
    spawner().is_some()
}

/// Has the spawner start `body` with `builder`; `None` when the spawner is not running.
pub(super) fn spawn<F, T>(builder: Builder, body: F) -> Option<io::Result<JoinHandle<T>>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let jobs = spawner().as_ref()?.jobs.clone();
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(builder.spawn(body));
    });
    let gone = || io::Error::other("the spawner thread is gone");
    if jobs.send(job).is_err() {
        return Some(Err(gone()));
    }
    Some(rx.recv().unwrap_or_else(|_| Err(gone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spawner_runs_while_leased() {
        // Other tests may hold leases too; that the last one stops and joins it is shown by
        // the shim's embedded test, which counts the process's threads.
        let a = lease().unwrap();
        let b = lease().unwrap();
        assert!(is_running());
        drop(a);
        assert!(is_running(), "one lease is left");
        drop(b);
    }
}
