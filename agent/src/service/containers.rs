//! `Containers`: lifecycle, processes and stdio of containers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pulse_protocols::containers::*;
use pulse_protocols::containers_ttrpc::Containers;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use super::{rpc_error, Agent};
use crate::container::Stream;

pub struct ContainersService(pub Arc<Agent>);

impl ContainersService {
    async fn read(
        &self,
        req: ReadOutputRequest,
        stream: Stream,
    ) -> ttrpc::Result<ReadOutputResponse> {
        let data = self
            .0
            .manager
            .read(&req.container_id, &req.exec_id, stream, req.max_bytes)
            .await
            .map_err(rpc_error)?;
        Ok(ReadOutputResponse {
            eof: data.is_empty(),
            data,
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl Containers for ContainersService {
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        if self.0.stopping.load(Ordering::SeqCst) {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::UNAVAILABLE,
                "the sandbox is being destroyed",
            )));
        }
        let pid = self
            .0
            .manager
            .create(&req.container_id, &req.oci_spec_json, &req.storages)
            .await
            .map_err(rpc_error)?;
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let pid = self
            .0
            .manager
            .start(&req.container_id)
            .await
            .map_err(rpc_error)?;
        Ok(StartContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let pid = self
            .0
            .manager
            .exec(&req.container_id, &req.exec_id, &req.oci_process_json)
            .await
            .map_err(rpc_error)?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<SignalProcessResponse> {
        self.0
            .manager
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(rpc_error)?;
        Ok(SignalProcessResponse::default())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let (status, pid) = self
            .0
            .manager
            .wait(&req.container_id, &req.exec_id)
            .await
            .map_err(rpc_error)?;
        Ok(WaitProcessResponse {
            exit_status: status.code(),
            signal: status.signal() as u32,
            pid,
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.0
            .manager
            .remove(&req.container_id, req.force)
            .await
            .map_err(rpc_error)?;
        Ok(RemoveContainerResponse::default())
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadOutputRequest,
    ) -> ttrpc::Result<ReadOutputResponse> {
        self.read(req, Stream::Stdout).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadOutputRequest,
    ) -> ttrpc::Result<ReadOutputResponse> {
        self.read(req, Stream::Stderr).await
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStdinRequest,
    ) -> ttrpc::Result<WriteStdinResponse> {
        let written = self
            .0
            .manager
            .write_stdin(&req.container_id, &req.exec_id, &req.data)
            .await
            .map_err(rpc_error)?;
        Ok(WriteStdinResponse {
            written: u32::try_from(written).unwrap_or(u32::MAX),
            ..Default::default()
        })
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<CloseStdinResponse> {
        self.0
            .manager
            .close_stdin(&req.container_id, &req.exec_id)
            .await
            .map_err(rpc_error)?;
        Ok(CloseStdinResponse::default())
    }

    async fn resize_terminal(
        &self,
        _ctx: &TtrpcContext,
        req: ResizeTerminalRequest,
    ) -> ttrpc::Result<ResizeTerminalResponse> {
        self.0
            .manager
            .resize(&req.container_id, &req.exec_id, req.rows, req.columns)
            .await
            .map_err(rpc_error)?;
        Ok(ResizeTerminalResponse::default())
    }

    async fn container_stats(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerStatsRequest,
    ) -> ttrpc::Result<ContainerStatsResponse> {
        let stats = self
            .0
            .manager
            .stats(&req.container_id)
            .await
            .map_err(rpc_error)?;
        // libcgroups keeps cgroup v2's cpu.stat in microseconds (v1's cpuacct is in ns).
        let to_ns = if crate::container::cgroup_v2() {
            1000
        } else {
            1
        };
        Ok(ContainerStatsResponse {
            cpu_usage_ns: stats.cpu.usage.usage_total.saturating_mul(to_ns),
            cpu_user_ns: stats.cpu.usage.usage_user.saturating_mul(to_ns),
            cpu_system_ns: stats.cpu.usage.usage_kernel.saturating_mul(to_ns),
            memory_usage_bytes: stats.memory.memory.usage,
            memory_limit_bytes: stats.memory.memory.limit,
            pids_current: stats.pids.current,
            pids_limit: stats.pids.limit,
            ..Default::default()
        })
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let processes = self
            .0
            .manager
            .processes(&req.container_id)
            .await
            .map_err(rpc_error)?;
        Ok(ListProcessesResponse {
            processes: processes
                .into_iter()
                .map(|(pid, command)| ProcessInfo {
                    pid,
                    command,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<PauseContainerResponse> {
        self.0
            .manager
            .pause(&req.container_id, true)
            .await
            .map_err(rpc_error)?;
        Ok(PauseContainerResponse::default())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<ResumeContainerResponse> {
        self.0
            .manager
            .pause(&req.container_id, false)
            .await
            .map_err(rpc_error)?;
        Ok(ResumeContainerResponse::default())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        self.0
            .manager
            .update(&req.container_id, &req.oci_resources_json)
            .await
            .map_err(rpc_error)?;
        Ok(UpdateContainerResponse::default())
    }

    async fn list_containers(
        &self,
        _ctx: &TtrpcContext,
        _: ListContainersRequest,
    ) -> ttrpc::Result<ListContainersResponse> {
        let mut containers = Vec::new();
        for c in self.0.manager.list().await {
            containers.push(ContainerInfo {
                container_id: c.id.clone(),
                status: c.status().await.to_string(),
                pid: c.init().pid as u32,
                exec_ids: c.exec_ids().await,
                ..Default::default()
            });
        }
        Ok(ListContainersResponse {
            containers,
            ..Default::default()
        })
    }
}
