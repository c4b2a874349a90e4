//! The agent's Containers API as the task service uses it: one method per call, each with its
//! request built, its deadline (the agent's request timeout, or none for a wait) and its
//! failure mapped onto a ttrpc status that says what was being done ([`agent_err`]).

use pulse_protocols::containers::{self, Storage};

use super::errors::agent_err;
use crate::agent::Agent;

/// The guest's containers, through the pod's agent.
pub struct Guest<'a> {
    agent: &'a Agent,
}

/// What a finished process left: its exit status and pid.
pub struct Exited {
    /// The exit status (128 + signal for a signalled process).
    pub status: i32,
    /// The process's guest pid.
    pub pid: u32,
}

impl<'a> Guest<'a> {
    /// The containers of `agent`'s guest.
    pub fn new(agent: &'a Agent) -> Self {
        Self { agent }
    }

    /// Creates container `id` from its spec (JSON) on `storages`; its init's pid.
    pub async fn create(
        &self,
        id: &str,
        spec: Vec<u8>,
        storages: Vec<Storage>,
    ) -> ttrpc::Result<u32> {
        let req = containers::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec,
            storages,
            ..Default::default()
        };
        let c = self.agent.containers();
        c.create_container(self.agent.ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| agent_err(&format!("creating container {id} in the guest"), e))
    }

    /// Starts container `id`'s init; its pid.
    pub async fn start(&self, id: &str) -> ttrpc::Result<u32> {
        let req = containers::StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let c = self.agent.containers();
        c.start_container(self.agent.ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| agent_err(&format!("starting container {id}"), e))
    }

    /// Starts exec `exec` (its OCI process, JSON) in container `id`; its pid.
    pub async fn exec(&self, id: &str, exec: &str, process: Vec<u8>) -> ttrpc::Result<u32> {
        let req = containers::ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            oci_process_json: process,
            ..Default::default()
        };
        let c = self.agent.containers();
        c.exec_process(self.agent.ctx(), &req)
            .await
            .map(|r| r.pid)
            .map_err(|e| agent_err(&format!("exec {exec} in {id}"), e))
    }

    /// Waits, without a deadline, until process `exec` of `id` (its init when empty) exits.
    pub async fn wait(&self, id: &str, exec: &str) -> ttrpc::Result<Exited> {
        let req = containers::WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        let c = self.agent.containers();
        c.wait_process(self.agent.waiting_ctx(), &req)
            .await
            .map(|r| Exited {
                status: r.exit_status,
                pid: r.pid,
            })
            .map_err(|e| agent_err(&format!("waiting for {id} {exec}"), e))
    }

    /// Sends `signal` to process `exec` of `id` (every process of the container with `all`).
    pub async fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> ttrpc::Result<()> {
        let req = containers::SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            signal,
            all,
            ..Default::default()
        };
        let c = self.agent.containers();
        c.signal_process(self.agent.ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err(&format!("signal {signal} to {id}"), e))
    }

    /// Removes container `id` (killing what still runs) and unmounts its storages.
    pub async fn remove(&self, id: &str) -> ttrpc::Result<()> {
        let req = containers::RemoveContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        };
        let c = self.agent.containers();
        c.remove_container(self.agent.ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err(&format!("removing container {id} in the guest"), e))
    }

    /// The guest pids of container `id`'s processes.
    pub async fn pids(&self, id: &str) -> ttrpc::Result<Vec<u32>> {
        let req = containers::ListProcessesRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let c = self.agent.containers();
        c.list_processes(self.agent.ctx(), &req)
            .await
            .map(|r| r.processes.iter().map(|p| p.pid).collect())
            .map_err(|e| agent_err(&format!("listing the processes of {id}"), e))
    }

    /// Freezes container `id`.
    pub async fn pause(&self, id: &str) -> ttrpc::Result<()> {
        let req = containers::PauseContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let c = self.agent.containers();
        c.pause_container(self.agent.ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err(&format!("pausing {id}"), e))
    }

    /// Thaws container `id`.
    pub async fn resume(&self, id: &str) -> ttrpc::Result<()> {
        let req = containers::ResumeContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let c = self.agent.containers();
        c.resume_container(self.agent.ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err(&format!("resuming {id}"), e))
    }

    /// Resizes the terminal of process `exec` of `id`.
    pub async fn resize(&self, id: &str, exec: &str, rows: u32, columns: u32) -> ttrpc::Result<()> {
        let req = containers::ResizeTerminalRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            rows,
            columns,
            ..Default::default()
        };
        let c = self.agent.containers();
        c.resize_terminal(self.agent.ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err(&format!("resizing the terminal of {id}"), e))
    }

    /// Applies new resources (OCI `linux.resources`, JSON) to container `id`.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> ttrpc::Result<()> {
        let req = containers::UpdateContainerRequest {
            container_id: id.into(),
            oci_resources_json: resources,
            ..Default::default()
        };
        let c = self.agent.containers();
        c.update_container(self.agent.ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err(&format!("updating the resources of {id}"), e))
    }

    /// Container `id`'s cgroup statistics.
    pub async fn stats(&self, id: &str) -> ttrpc::Result<containers::ContainerStatsResponse> {
        let req = containers::ContainerStatsRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let c = self.agent.containers();
        c.container_stats(self.agent.ctx(), &req)
            .await
            .map_err(|e| agent_err(&format!("reading the stats of {id}"), e))
    }
}
