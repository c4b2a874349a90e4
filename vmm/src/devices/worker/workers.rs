//! A device's worker threads while it is active, and the eventfd that tells them all to stop.

use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::confine::{self, ThreadKind};
use crate::devices::virtio::ActivateError;

pub(crate) struct Workers {
    kill: EventFd,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub(crate) fn new() -> Result<Self, ActivateError> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        Ok(Self {
            kill,
            threads: Vec::new(),
        })
    }

    /// The stop eventfd, for one worker to watch.
    pub(crate) fn stop_request(&self) -> Result<EventFd, ActivateError> {
        Ok(self.kill.try_clone()?)
    }

    /// Starts one confined worker thread. When it cannot start, the workers already running
    /// are stopped: a device is active with all its workers or none.
    pub(crate) fn spawn(
        mut self,
        kind: ThreadKind,
        name: String,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<Self, ActivateError> {
        match confine::spawn(kind, name, body) {
            Ok(t) => {
                self.threads.push(t);
                Ok(self)
            }
            Err(e) => {
                self.stop();
                Err(e.into())
            }
        }
    }

    /// Tells every worker to stop and waits for each.
    pub(crate) fn stop(self) {
        let _ = self.kill.write(1);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
