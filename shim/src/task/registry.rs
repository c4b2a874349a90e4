//! The shim's record of its pod: containers, their init process and execs, each with its
//! state machine, stdio, exit notification, and the pod's sandbox.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim_protos::api;
use tokio::sync::watch;
use ttrpc::Code;

use super::errors::status;
use crate::sandbox::Sandbox;
use crate::state::{ExitInfo, ProcessMachine, ProcessState};
use crate::stdio::StdioPaths;

/// One process (a container's own, or an exec).
pub struct Process {
    pub machine: ProcessMachine,
    /// The pid containerd sees: the guest's, or `host_pid`.
    pub pid: u32,
    /// A host process that stands for this one toward containerd: the holder of the pod's
    /// own network namespace, in which `ctr run --cni` runs CNI at `/proc/<pid>/ns/net`.
    pub host_pid: Option<u32>,
    pub stdio: StdioPaths,
    pub exit: watch::Sender<Option<ExitInfo>>,
    /// An exec's OCI process JSON, until it starts.
    pub spec: Vec<u8>,
    /// The stdin pump and the shim's hold on the FIFO, for CloseIO.
    pub stdin: Option<crate::stdio::StdinPump>,
}

impl Process {
    pub fn new(what: String, stdio: StdioPaths, spec: Vec<u8>) -> Self {
        Self {
            machine: ProcessMachine::new(what),
            pid: 0,
            host_pid: None,
            stdio,
            exit: watch::channel(None).0,
            spec,
            stdin: None,
        }
    }

    /// Records the guest's pid; returns the one containerd sees.
    pub fn set_guest_pid(&mut self, pid: u32) -> u32 {
        self.pid = self.host_pid.unwrap_or(pid);
        self.pid
    }
}

/// A container: its bundle, its init process, its execs.
pub struct Container {
    pub bundle: String,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

/// Every container of the pod, and the pod's sandbox once it booted.
#[derive(Default)]
pub struct State {
    pub containers: HashMap<String, Container>,
    pub sandbox: Option<Arc<Sandbox>>,
}

impl State {
    /// Container `id`, or NOT_FOUND.
    pub fn container(&mut self, id: &str) -> ttrpc::Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} not found")))
    }

    /// Process `exec` of container `id` (its init process when `exec` is empty), or NOT_FOUND.
    pub fn process(&mut self, id: &str, exec: &str) -> ttrpc::Result<&mut Process> {
        let c = self.container(id)?;
        if exec.is_empty() {
            Ok(&mut c.init)
        } else {
            c.execs
                .get_mut(exec)
                .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec} of {id} not found")))
        }
    }

    /// The pod's sandbox, or FAILED_PRECONDITION before it booted.
    pub fn sandbox(&self) -> ttrpc::Result<Arc<Sandbox>> {
        self.sandbox
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "this shim has no sandbox yet"))
    }
}

/// containerd's status of a process state.
pub fn map_status(state: ProcessState) -> api::Status {
    match state {
        ProcessState::Created => api::Status::CREATED,
        ProcessState::Running => api::Status::RUNNING,
        ProcessState::Paused => api::Status::PAUSED,
        ProcessState::Stopped(_) | ProcessState::Deleted(_) => api::Status::STOPPED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn statuses_map_onto_containerds() {
        let exit = ExitInfo {
            status: 1,
            at: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(map_status(ProcessState::Created), api::Status::CREATED);
        assert_eq!(map_status(ProcessState::Paused), api::Status::PAUSED);
        assert_eq!(
            map_status(ProcessState::Stopped(exit)),
            api::Status::STOPPED
        );
        assert_eq!(
            map_status(ProcessState::Deleted(exit)),
            api::Status::STOPPED
        );
    }

    #[test]
    fn processes_are_found_by_container_and_exec() {
        let mut state = State::default();
        let stdio = StdioPaths::default();
        let mut execs = HashMap::new();
        execs.insert(
            "e1".to_string(),
            Process::new("exec e1".into(), stdio.clone(), b"{}".to_vec()),
        );
        state.containers.insert(
            "c1".into(),
            Container {
                bundle: "/b".into(),
                init: Process::new("container c1".into(), stdio, Vec::new()),
                execs,
            },
        );
        assert_eq!(state.process("c1", "e1").unwrap().spec, b"{}");
        assert!(state.process("c1", "").unwrap().spec.is_empty());
        let missing = |e: ttrpc::Error| match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other}"),
        };
        assert_eq!(
            missing(state.process("c1", "e2").err().unwrap()),
            (Code::NOT_FOUND, "exec e2 of c1 not found".into())
        );
        assert_eq!(
            missing(state.container("c2").err().unwrap()).0,
            Code::NOT_FOUND
        );
        assert_eq!(
            missing(state.sandbox().err().unwrap()).0,
            Code::FAILED_PRECONDITION
        );
    }
}
