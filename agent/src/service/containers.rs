//! `Containers`: lifecycle, processes and stdio of containers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pulse_protocols::containers::*;
use pulse_protocols::containers_ttrpc::Containers;
use ttrpc::Code;

use super::{status, Agent};
use crate::container::{Manager, Stream};

pub struct ContainersService(pub Arc<Agent>);

impl ContainersService {
    fn manager(&self) -> &Manager {
        &self.0.manager
    }

    async fn read(
        &self,
        req: ReadOutputRequest,
        stream: Stream,
    ) -> ttrpc::Result<ReadOutputResponse> {
        let data = self
            .manager()
            .read(&req.container_id, &req.exec_id, stream, req.max_bytes)
            .await?;
        Ok(ReadOutputResponse {
            eof: data.is_empty(),
            data,
            ..Default::default()
        })
    }
}

handlers! {
    impl Containers for ContainersService {
        async fn create_container(&self, req: CreateContainerRequest) -> CreateContainerResponse {
            if self.0.stopping.load(Ordering::SeqCst) {
                return Err(status(Code::UNAVAILABLE, "the sandbox is being destroyed"));
            }
            let manager = self.manager();
            let pid = manager.create(&req.container_id, &req.oci_spec_json, &req.storages).await?;
            Ok(CreateContainerResponse { pid, ..Default::default() })
        }

        async fn start_container(&self, req: StartContainerRequest) -> StartContainerResponse {
            let pid = self.manager().start(&req.container_id).await?;
            Ok(StartContainerResponse { pid, ..Default::default() })
        }

        async fn exec_process(&self, req: ExecProcessRequest) -> ExecProcessResponse {
            let process = &req.oci_process_json;
            let pid = self.manager().exec(&req.container_id, &req.exec_id, process).await?;
            Ok(ExecProcessResponse { pid, ..Default::default() })
        }

        async fn signal_process(&self, req: SignalProcessRequest) -> SignalProcessResponse {
            let (id, exec_id) = (&req.container_id, &req.exec_id);
            self.manager().signal(id, exec_id, req.signal, req.all).await?;
            Ok(SignalProcessResponse::default())
        }

        async fn wait_process(&self, req: WaitProcessRequest) -> WaitProcessResponse {
            let (status, pid) = self.manager().wait(&req.container_id, &req.exec_id).await?;
            Ok(WaitProcessResponse {
                exit_status: status.code(),
                signal: status.signal().cast_unsigned(),
                pid,
                ..Default::default()
            })
        }

        async fn remove_container(&self, req: RemoveContainerRequest) -> RemoveContainerResponse {
            self.manager().remove(&req.container_id, req.force).await?;
            Ok(RemoveContainerResponse::default())
        }

        async fn read_stdout(&self, req: ReadOutputRequest) -> ReadOutputResponse {
            self.read(req, Stream::Stdout).await
        }

        async fn read_stderr(&self, req: ReadOutputRequest) -> ReadOutputResponse {
            self.read(req, Stream::Stderr).await
        }

        async fn write_stdin(&self, req: WriteStdinRequest) -> WriteStdinResponse {
            let (id, exec_id) = (&req.container_id, &req.exec_id);
            let written = self.manager().write_stdin(id, exec_id, &req.data).await?;
            Ok(WriteStdinResponse {
                written: u32::try_from(written).unwrap_or(u32::MAX),
                ..Default::default()
            })
        }

        async fn close_stdin(&self, req: CloseStdinRequest) -> CloseStdinResponse {
            self.manager().close_stdin(&req.container_id, &req.exec_id).await?;
            Ok(CloseStdinResponse::default())
        }

        async fn resize_terminal(&self, req: ResizeTerminalRequest) -> ResizeTerminalResponse {
            let (id, exec_id) = (&req.container_id, &req.exec_id);
            self.manager().resize(id, exec_id, req.rows, req.columns).await?;
            Ok(ResizeTerminalResponse::default())
        }

        async fn container_stats(&self, req: ContainerStatsRequest) -> ContainerStatsResponse {
            let stats = self.manager().stats(&req.container_id).await?;
            // libcgroups keeps cgroup v2's cpu.stat in microseconds (v1's cpuacct is in ns).
            let to_ns = if crate::container::cgroup_v2() { 1000 } else { 1 };
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

        async fn list_processes(&self, req: ListProcessesRequest) -> ListProcessesResponse {
            let processes = self.manager().processes(&req.container_id).await?;
            Ok(ListProcessesResponse {
                processes: processes
                    .into_iter()
                    .map(|(pid, command)| ProcessInfo { pid, command, ..Default::default() })
                    .collect(),
                ..Default::default()
            })
        }

        async fn pause_container(&self, req: PauseContainerRequest) -> PauseContainerResponse {
            self.manager().pause(&req.container_id, true).await?;
            Ok(PauseContainerResponse::default())
        }

        async fn resume_container(&self, req: ResumeContainerRequest) -> ResumeContainerResponse {
            self.manager().pause(&req.container_id, false).await?;
            Ok(ResumeContainerResponse::default())
        }

        async fn update_container(&self, req: UpdateContainerRequest) -> UpdateContainerResponse {
            self.manager().update(&req.container_id, &req.oci_resources_json).await?;
            Ok(UpdateContainerResponse::default())
        }

        async fn list_containers(&self, _: ListContainersRequest) -> ListContainersResponse {
            let mut containers = Vec::new();
            for c in self.manager().list().await {
                containers.push(ContainerInfo {
                    container_id: c.id.clone(),
                    status: c.status().await.to_string(),
                    pid: c.init().pid.cast_unsigned(),
                    exec_ids: c.exec_ids().await,
                    ..Default::default()
                });
            }
            Ok(ListContainersResponse { containers, ..Default::default() })
        }
    }
}
