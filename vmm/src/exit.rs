//! Why a VM stopped, and the one place every thread reports it to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

/// The reason a VM stopped. The first reason reported wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum VmExit {
    /// The guest wrote a status to the debug-exit port.
    DebugExit(u8),
    /// The guest asked for a reset (port 0xcf9 or KVM_SYSTEM_EVENT_RESET). Pulse does not reboot
    /// microVMs: a reset stops the VM, as in Firecracker.
    Reset,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN); Linux's `reboot=t` reboots this way.
    TripleFault,
    /// The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN).
    Shutdown,
    /// The host asked the VM to stop (library call or signal).
    Requested,
    /// A vCPU hit an error the VMM cannot continue from.
    Crashed(String),
}

impl VmExit {
    /// Exit status for the `pulse-vmm` command: the debug-exit status, 0 for a guest-initiated
    /// stop or a host request, 1 for a crash.
    pub fn exit_status(&self) -> i32 {
        match self {
            VmExit::DebugExit(code) => i32::from(*code),
            VmExit::Reset | VmExit::TripleFault | VmExit::Shutdown | VmExit::Requested => 0,
            VmExit::Crashed(_) => 1,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::DebugExit(code) => write!(f, "debug exit with status {code}"),
            VmExit::Reset => write!(f, "guest reset"),
            VmExit::TripleFault => write!(f, "guest triple fault (reboot)"),
            VmExit::Shutdown => write!(f, "guest shutdown"),
            VmExit::Requested => write!(f, "stopped on request"),
            VmExit::Crashed(why) => write!(f, "vCPU error: {why}"),
        }
    }
}

/// Collects the first exit reason and wakes whoever waits for it.
pub struct ExitController {
    reason: Mutex<Option<VmExit>>,
    cond: Condvar,
    stopping: AtomicBool,
    event: EventFd,
}

impl ExitController {
    /// A controller with nothing reported yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            cond: Condvar::new(),
            stopping: AtomicBool::new(false),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Reports `exit`; later reports are ignored.
    pub fn request(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            tracing::debug!(%exit, "VM exit requested");
            *reason = Some(exit);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // The eventfd wakes the event loop; a failed write only means it is already signalled.
        let _ = self.event.write(1);
        self.cond.notify_all();
    }

    /// Whether an exit has been reported: vCPU threads check this before entering the guest.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// An eventfd that becomes readable when an exit is reported.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Blocks until an exit is reported, or `timeout` passes.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let guard = match timeout {
            Some(t) => {
                self.cond
                    .wait_timeout_while(guard, t, |r| r.is_none())
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self
                .cond
                .wait_while(guard, |r| r.is_none())
                .unwrap_or_else(|p| p.into_inner()),
        };
        guard.clone()
    }

    /// The reported exit, if any.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_waiters() {
        let ctl = Arc::new(ExitController::new().unwrap());
        assert_eq!(ctl.wait_timeout(Some(Duration::from_millis(1))), None);
        let waiter = {
            let ctl = ctl.clone();
            std::thread::spawn(move || ctl.wait_timeout(None))
        };
        ctl.request(VmExit::DebugExit(3));
        ctl.request(VmExit::Requested);
        assert_eq!(waiter.join().unwrap(), Some(VmExit::DebugExit(3)));
        assert!(ctl.is_stopping());
        assert_eq!(ctl.event().read().unwrap(), 2);
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(VmExit::DebugExit(7).exit_status(), 7);
        assert_eq!(VmExit::TripleFault.exit_status(), 0);
        assert_eq!(VmExit::Crashed("x".into()).exit_status(), 1);
    }
}
