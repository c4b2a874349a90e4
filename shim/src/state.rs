//! The state machines of the shim, as plain types: a process (a container's
//! own process or an exec) and the sandbox (the pod's VM); the VM's block
//! slots are [`crate::block_slots`]. The task service drives them; every transition it makes goes
//! through here, so that a request in the wrong state gets one clear error.

use std::time::SystemTime;

/// A request that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: cannot {action} while {state}")]
pub struct StateError {
    /// The object (`container c1`, `exec e1 of c1`, `sandbox p`).
    pub what: String,
    /// The request.
    pub action: &'static str,
    /// The state it was in.
    pub state: &'static str,
}

/// A state machine's answer to a request its state may not allow.
trait Refuses {
    /// The error for `action` in the current state.
    fn refuse(&self, action: &'static str) -> StateError;

    /// Ok where the state `allows` `action`, else [`Self::refuse`]'s error.
    fn allow(&self, allows: bool, action: &'static str) -> Result<(), StateError> {
        if allows {
            Ok(())
        } else {
            Err(self.refuse(action))
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status as containerd reports it: the code, or 128 + signal.
    pub status: u32,
    /// When the shim saw it.
    pub at: SystemTime,
}

/// The life of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Created (a container) or registered (an exec), not started.
    Created,
    /// Started; the guest pid.
    Running,
    /// The container's processes are frozen.
    Paused,
    /// Exited.
    Stopped(ExitInfo),
    /// Deleted: only the final response is left.
    Deleted(ExitInfo),
}

impl ProcessState {
    /// The name used in errors.
    pub fn name(&self) -> &'static str {
        match self {
            ProcessState::Created => "created",
            ProcessState::Running => "running",
            ProcessState::Paused => "paused",
            ProcessState::Stopped(_) => "stopped",
            ProcessState::Deleted(_) => "deleted",
        }
    }

    /// The exit, once there is one.
    pub fn exit(&self) -> Option<ExitInfo> {
        match self {
            ProcessState::Stopped(e) | ProcessState::Deleted(e) => Some(*e),
            _ => None,
        }
    }
}

/// A process and the transitions it allows.
#[derive(Debug, Clone)]
pub struct ProcessMachine {
    what: String,
    state: ProcessState,
}

impl Refuses for ProcessMachine {
    fn refuse(&self, action: &'static str) -> StateError {
        StateError {
            what: self.what.clone(),
            action,
            state: self.state.name(),
        }
    }
}

impl ProcessMachine {
    /// A new process in [`ProcessState::Created`]; `what` names it in errors.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            state: ProcessState::Created,
        }
    }

    /// The current state.
    pub fn state(&self) -> ProcessState {
        self.state
    }

    /// Moves to `to` where `check` passed.
    fn enter(&mut self, check: Result<(), StateError>, to: ProcessState) -> Result<(), StateError> {
        check?;
        self.state = to;
        Ok(())
    }

    /// Whether `start` is allowed (checked before asking the guest).
    pub fn check_start(&self) -> Result<(), StateError> {
        self.allow(matches!(self.state, ProcessState::Created), "start")
    }

    /// Created -> Running.
    pub fn started(&mut self) -> Result<(), StateError> {
        self.enter(self.check_start(), ProcessState::Running)
    }

    /// Whether a signal can be delivered: a process that is gone cannot take one
    /// (containerd treats that error as "already exited").
    pub fn check_kill(&self) -> Result<(), StateError> {
        self.allow(
            matches!(
                self.state,
                ProcessState::Created | ProcessState::Running | ProcessState::Paused
            ),
            "signal",
        )
    }

    /// Running -> Paused.
    pub fn paused(&mut self) -> Result<(), StateError> {
        self.enter(self.check_pause(), ProcessState::Paused)
    }

    /// Whether `pause` is allowed.
    pub fn check_pause(&self) -> Result<(), StateError> {
        self.allow(matches!(self.state, ProcessState::Running), "pause")
    }

    /// Whether `resume` is allowed.
    pub fn check_resume(&self) -> Result<(), StateError> {
        self.allow(matches!(self.state, ProcessState::Paused), "resume")
    }

    /// Paused -> Running.
    pub fn resumed(&mut self) -> Result<(), StateError> {
        self.enter(self.check_resume(), ProcessState::Running)
    }

    /// The process exited (from any live state; a second report is ignored).
    /// Returns whether this was the first report.
    pub fn exited(&mut self, exit: ExitInfo) -> bool {
        match self.state {
            ProcessState::Stopped(_) | ProcessState::Deleted(_) => false,
            _ => {
                self.state = ProcessState::Stopped(exit);
                true
            }
        }
    }

    /// Whether `delete` is allowed: a created or stopped process can go; a
    /// running one must be killed first.
    pub fn check_delete(&self) -> Result<(), StateError> {
        self.allow(
            matches!(self.state, ProcessState::Created | ProcessState::Stopped(_)),
            "delete",
        )
    }

    /// Created/Stopped -> Deleted; returns the exit to report (a created process
    /// that never ran reports status 0 now).
    pub fn deleted(&mut self, now: SystemTime) -> Result<ExitInfo, StateError> {
        self.check_delete()?;
        let exit = self.state.exit().unwrap_or(ExitInfo { status: 0, at: now });
        self.state = ProcessState::Deleted(exit);
        Ok(exit)
    }
}

/// The pod's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// The VM is being started and the agent connected.
    Booting,
    /// The agent answers: containers can be created.
    Ready,
    /// Being torn down.
    Stopping,
    /// Gone: the VM, its processes and its files are removed.
    Stopped,
}

impl SandboxState {
    /// The name used in errors.
    pub fn name(&self) -> &'static str {
        match self {
            SandboxState::Booting => "booting",
            SandboxState::Ready => "ready",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
        }
    }
}

/// The sandbox's transitions.
#[derive(Debug, Clone)]
pub struct SandboxMachine {
    pod: String,
    state: SandboxState,
}

impl Refuses for SandboxMachine {
    fn refuse(&self, action: &'static str) -> StateError {
        StateError {
            what: format!("sandbox {}", self.pod),
            action,
            state: self.state.name(),
        }
    }
}

impl SandboxMachine {
    /// A sandbox that starts booting.
    pub fn new(pod: impl Into<String>) -> Self {
        Self {
            pod: pod.into(),
            state: SandboxState::Booting,
        }
    }

    /// The current state.
    pub fn state(&self) -> SandboxState {
        self.state
    }

    /// Booting -> Ready.
    pub fn ready(&mut self) -> Result<(), StateError> {
        self.allow(self.state == SandboxState::Booting, "become ready")?;
        self.state = SandboxState::Ready;
        Ok(())
    }

    /// Containers can be added only to a ready sandbox.
    pub fn check_add_container(&self) -> Result<(), StateError> {
        self.allow(matches!(self.state, SandboxState::Ready), "add a container")
    }

    /// Any state but Stopped -> Stopping. Returns false when it already is
    /// stopping or stopped (the teardown runs once).
    pub fn stopping(&mut self) -> bool {
        match self.state {
            SandboxState::Stopping | SandboxState::Stopped => false,
            _ => {
                self.state = SandboxState::Stopping;
                true
            }
        }
    }

    /// Stopping -> Stopped.
    pub fn stopped(&mut self) {
        self.state = SandboxState::Stopped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: u32) -> ExitInfo {
        ExitInfo {
            status,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn process_lifecycle() {
        let mut p = ProcessMachine::new("container c1");
        assert_eq!(p.state(), ProcessState::Created);
        p.started().unwrap();
        let err = p.started().unwrap_err();
        assert_eq!(err.to_string(), "container c1: cannot start while running");
        assert!(
            p.check_delete().is_err(),
            "a running process cannot be deleted"
        );
        p.paused().unwrap();
        assert!(p.check_pause().is_err());
        p.check_kill().unwrap();
        p.resumed().unwrap();
        assert!(p.exited(exit(3)));
        assert!(!p.exited(exit(9)), "the first exit wins");
        assert_eq!(p.state().exit().unwrap().status, 3);
        assert!(p.check_kill().is_err());
        assert!(p.check_start().is_err());
        assert_eq!(p.deleted(SystemTime::now()).unwrap().status, 3);
        assert!(p.deleted(SystemTime::now()).is_err(), "deleted once");
    }

    #[test]
    fn created_process_can_be_deleted_or_killed() {
        let mut p = ProcessMachine::new("exec e of c");
        p.check_kill().unwrap();
        let e = p.deleted(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(e.status, 0);
        let mut q = ProcessMachine::new("c");
        assert!(q.exited(exit(137)));
        assert!(q.resumed().is_err());
        assert!(q.paused().is_err());
    }

    #[test]
    fn sandbox_lifecycle() {
        let mut s = SandboxMachine::new("p");
        assert!(s.check_add_container().is_err());
        s.ready().unwrap();
        s.check_add_container().unwrap();
        assert!(s.ready().is_err());
        assert!(s.stopping());
        assert!(!s.stopping(), "teardown runs once");
        let err = s.check_add_container().unwrap_err();
        assert_eq!(
            err.to_string(),
            "sandbox p: cannot add a container while stopping"
        );
        s.stopped();
        assert_eq!(s.state(), SandboxState::Stopped);
        assert!(!s.stopping());
    }

    #[test]
    fn a_boot_that_fails_can_still_be_torn_down() {
        let mut s = SandboxMachine::new("p");
        assert!(s.stopping());
        s.stopped();
    }
}
