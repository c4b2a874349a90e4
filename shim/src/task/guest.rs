//! The agent's Containers API as the task service uses it: one method per call, each with its
//! request built, its deadline (the agent's request timeout, or none for a wait) and its
//! failure mapped onto a ttrpc status that says what was being done ([`agent_err`]).

use pulse_protocols::containers::{self, Storage};
use pulse_protocols::containers_ttrpc::ContainersClient;
use pulse_protocols::protobuf::MessageFull;
use ttrpc::context::Context;
use ttrpc::Code;

use super::errors::{agent_err, status};
use crate::agent::Agent;

/// The guest's containers, through the pod's agent.
pub struct Guest {
    agent: Agent,
    client: ContainersClient,
}

/// What a finished process left: its exit status and pid.
pub struct Exited {
    /// The exit status (128 + signal for a signalled process).
    pub status: i32,
    /// The process's guest pid.
    pub pid: u32,
}

/// A request of the Containers API: the client call that sends it, and its reply.
pub(crate) trait Rpc: MessageFull {
    type Reply: MessageFull;

    /// A request for container `id`, its other fields at their defaults.
    fn to(id: &str) -> Self;

    async fn send(&self, client: &ContainersClient, ctx: Context) -> ttrpc::Result<Self::Reply>;
}

/// Each request type with its reply and the client's method for it (the server's method of the
/// same name, for the tests' agent); the output reads, which the tests' agent keeps open.
macro_rules! rpcs {
    ($($req:ident -> $reply:ident: $method:ident;)* [outputs: $($read:ident),*]) => {
        $(
            impl Rpc for containers::$req {
                type Reply = containers::$reply;

                fn to(id: &str) -> Self {
                    Self {
                        container_id: id.into(),
                        ..Default::default()
                    }
                }

                async fn send(
                    &self,
                    client: &ContainersClient,
                    ctx: Context,
                ) -> ttrpc::Result<Self::Reply> {
                    client.$method(ctx, self).await
                }
            }
        )*

        #[cfg(test)]
        #[async_trait::async_trait]
        impl<A: Answer> pulse_protocols::containers_ttrpc::Containers for Answering<A> {
            $(
                async fn $method(
                    &self,
                    _ctx: &ttrpc::r#async::TtrpcContext,
                    req: containers::$req,
                ) -> ttrpc::Result<containers::$reply> {
                    self.0.answer(req).await
                }
            )*

            $(
                /// Output stays open and says nothing, as a live process's does.
                async fn $read(
                    &self,
                    _ctx: &ttrpc::r#async::TtrpcContext,
                    _req: containers::ReadOutputRequest,
                ) -> ttrpc::Result<containers::ReadOutputResponse> {
                    std::future::pending().await
                }
            )*
        }
    };
}

rpcs! {
    CreateContainerRequest -> CreateContainerResponse: create_container;
    StartContainerRequest -> StartContainerResponse: start_container;
    ExecProcessRequest -> ExecProcessResponse: exec_process;
    WaitProcessRequest -> WaitProcessResponse: wait_process;
    SignalProcessRequest -> SignalProcessResponse: signal_process;
    RemoveContainerRequest -> RemoveContainerResponse: remove_container;
    ListProcessesRequest -> ListProcessesResponse: list_processes;
    PauseContainerRequest -> PauseContainerResponse: pause_container;
    ResumeContainerRequest -> ResumeContainerResponse: resume_container;
    ResizeTerminalRequest -> ResizeTerminalResponse: resize_terminal;
    UpdateContainerRequest -> UpdateContainerResponse: update_container;
    ContainerStatsRequest -> ContainerStatsResponse: container_stats;
    [outputs: read_stdout, read_stderr]
}

/// The agent's side of the Containers API as a test plays it: one answer for every call.
#[cfg(test)]
pub(crate) trait Answer: Send + Sync + 'static {
    /// The reply to `req`, or the error the agent would give; it may take its time, as the
    /// agent's wait for a process does.
    fn answer<R: Rpc>(
        &self,
        req: R,
    ) -> impl std::future::Future<Output = ttrpc::Result<R::Reply>> + Send;
}

/// An [`Answer`] served as the agent's Containers service (the test keeps its own handle).
#[cfg(test)]
pub(crate) struct Answering<A>(pub std::sync::Arc<A>);

/// A request of the Containers API that addresses one process of a container.
trait ProcessRpc: Rpc {
    /// A request for process `exec` of container `id` (its init when empty), its other fields at
    /// their defaults.
    fn of(id: &str, exec: &str) -> Self;
}

/// Each request type that names a process by its exec id.
macro_rules! process_rpcs {
    ($($req:ident),*) => {$(
        impl ProcessRpc for containers::$req {
            fn of(id: &str, exec: &str) -> Self {
                Self {
                    exec_id: exec.into(),
                    ..Self::to(id)
                }
            }
        }
    )*};
}

process_rpcs!(
    ExecProcessRequest,
    WaitProcessRequest,
    SignalProcessRequest,
    ResizeTerminalRequest
);

impl Guest {
    /// The containers of `agent`'s guest.
    pub fn new(agent: &Agent) -> Self {
        let client = agent.containers();
        Self {
            agent: agent.clone(),
            client,
        }
    }

    /// `req` sent under the agent's request deadline, its failure saying `what` was being done.
    async fn call<R: Rpc>(&self, what: String, req: R) -> ttrpc::Result<R::Reply> {
        self.call_in(self.agent.ctx(), what, req).await
    }

    /// [`Self::call`] for a request whose reply says nothing more than that it was done.
    async fn send<R: Rpc>(&self, what: String, req: R) -> ttrpc::Result<()> {
        self.call(what, req).await.map(drop)
    }

    /// `req` sent in `ctx`, its failure saying `what` was being done; UNAVAILABLE with the
    /// reason as soon as the VM stopped (a guest that died answers nothing, not even an error).
    async fn call_in<R: Rpc>(&self, ctx: Context, what: String, req: R) -> ttrpc::Result<R::Reply> {
        tokio::select! {
            biased;
            reply = req.send(&self.client, ctx) => reply.map_err(|e| agent_err(&what, e)),
            why = self.agent.until_vm_stopped() => {
                Err(status(Code::UNAVAILABLE, format!("{what}: the VM stopped: {why}")))
            }
        }
    }

    /// Creates container `id` from its spec (JSON) on `storages`; its init's pid.
    pub async fn create(
        &self,
        id: &str,
        spec: Vec<u8>,
        storages: Vec<Storage>,
    ) -> ttrpc::Result<u32> {
        let req = containers::CreateContainerRequest {
            oci_spec_json: spec,
            storages,
            ..Rpc::to(id)
        };
        let what = format!("creating container {id} in the guest");
        Ok(self.call(what, req).await?.pid)
    }

    /// Starts container `id`'s init; its pid.
    pub async fn start(&self, id: &str) -> ttrpc::Result<u32> {
        let req = containers::StartContainerRequest::to(id);
        Ok(self
            .call(format!("starting container {id}"), req)
            .await?
            .pid)
    }

    /// Starts exec `exec` (its OCI process, JSON) in container `id`; its pid.
    pub async fn exec(&self, id: &str, exec: &str, process: Vec<u8>) -> ttrpc::Result<u32> {
        let req = containers::ExecProcessRequest {
            oci_process_json: process,
            ..ProcessRpc::of(id, exec)
        };
        Ok(self.call(format!("exec {exec} in {id}"), req).await?.pid)
    }

    /// Waits, without a deadline, until process `exec` of `id` (its init when empty) exits.
    pub async fn wait(&self, id: &str, exec: &str) -> ttrpc::Result<Exited> {
        let req = containers::WaitProcessRequest::of(id, exec);
        let what = format!("waiting for {id} {exec}");
        let r = self.call_in(self.agent.waiting_ctx(), what, req).await?;
        Ok(Exited {
            status: r.exit_status,
            pid: r.pid,
        })
    }

    /// Sends `signal` to process `exec` of `id` (every process of the container with `all`).
    pub async fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> ttrpc::Result<()> {
        let req = containers::SignalProcessRequest {
            signal,
            all,
            ..ProcessRpc::of(id, exec)
        };
        self.send(format!("signal {signal} to {id}"), req).await
    }

    /// Removes container `id` (killing what still runs) and unmounts its storages.
    pub async fn remove(&self, id: &str) -> ttrpc::Result<()> {
        let req = containers::RemoveContainerRequest {
            force: true,
            ..Rpc::to(id)
        };
        let what = format!("removing container {id} in the guest");
        self.send(what, req).await
    }

    /// The guest pids of container `id`'s processes.
    pub async fn pids(&self, id: &str) -> ttrpc::Result<Vec<u32>> {
        let req = containers::ListProcessesRequest::to(id);
        let r = self
            .call(format!("listing the processes of {id}"), req)
            .await?;
        Ok(r.processes.iter().map(|p| p.pid).collect())
    }

    /// Freezes (`pause`) or thaws container `id`.
    pub async fn freeze(&self, id: &str, pause: bool) -> ttrpc::Result<()> {
        if pause {
            let req = containers::PauseContainerRequest::to(id);
            self.send(format!("pausing {id}"), req).await
        } else {
            let req = containers::ResumeContainerRequest::to(id);
            self.send(format!("resuming {id}"), req).await
        }
    }

    /// Resizes the terminal of process `exec` of `id`.
    pub async fn resize(&self, id: &str, exec: &str, rows: u32, columns: u32) -> ttrpc::Result<()> {
        let req = containers::ResizeTerminalRequest {
            rows,
            columns,
            ..ProcessRpc::of(id, exec)
        };
        let what = format!("resizing the terminal of {id}");
        self.send(what, req).await
    }

    /// Applies new resources (OCI `linux.resources`, JSON) to container `id`.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> ttrpc::Result<()> {
        let req = containers::UpdateContainerRequest {
            oci_resources_json: resources,
            ..Rpc::to(id)
        };
        let what = format!("updating the resources of {id}");
        self.send(what, req).await
    }

    /// Container `id`'s cgroup statistics.
    pub async fn stats(&self, id: &str) -> ttrpc::Result<containers::ContainerStatsResponse> {
        let req = containers::ContainerStatsRequest::to(id);
        self.call(format!("reading the stats of {id}"), req).await
    }
}
