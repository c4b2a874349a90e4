//! The spawner: one thread per process that starts threads on behalf of threads under a
//! seccomp filter.
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

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::{Builder, JoinHandle};

use super::{ConfineError, Policy, PolicyScope, ThreadKind};

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Sender<Job>> = OnceLock::new();

/// Starts the spawner if it is not running. Called from a thread that is not under a filter.
pub(super) fn ensure_running() -> Result<(), ConfineError> {
    static STARTING: Mutex<()> = Mutex::new(());
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    let _scope = PolicyScope::enter(Policy { seccomp: true });
    // Detached: it lives as long as the process.
    super::spawn(ThreadKind::Spawner, "vmm-spawner".into(), move || {
        for job in rx {
            job();
        }
    })?;
    let _ = SPAWNER.set(tx);
    Ok(())
}

/// Whether the spawner runs.
pub fn is_running() -> bool {
    SPAWNER.get().is_some()
}

/// Has the spawner start `body` with `builder`; `None` when the spawner is not running.
pub(super) fn spawn<F, T>(builder: Builder, body: F) -> Option<io::Result<JoinHandle<T>>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let sender = SPAWNER.get()?;
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(builder.spawn(body));
    });
    let gone = || io::Error::other("the spawner thread is gone");
    if sender.send(job).is_err() {
        return Some(Err(gone()));
    }
    Some(rx.recv().unwrap_or_else(|_| Err(gone())))
}
