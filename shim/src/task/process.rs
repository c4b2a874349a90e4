//! A task's processes: start (a container's init or an exec), exec's registration, delete, and
//! the container's statistics as containerd's cgroup v2 metrics.

use std::path::Path;
use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::cgroups_v2::metrics as cg2;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::topics;
use ttrpc::Code;

use super::errors::{state_err, status, timestamp};
use super::guest::Guest;
use super::registry::Process;
use crate::persist::BUNDLE_RECORD;
use crate::service::Service;
use crate::state::{ExitInfo, ProcessState};
use crate::stdio::{Pumps, StdioPaths};

impl Service {
    pub(crate) async fn start_task(
        &self,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let (sandbox, spec, stdio) = {
            let mut state = self.inner.state.lock().unwrap();
            let sandbox = state.sandbox()?;
            let p = state.process(&req.id, &req.exec_id)?;
            p.machine.check_start().map_err(state_err)?;
            (sandbox, p.spec.clone(), p.stdio.clone())
        };
        let agent = sandbox.agent();
        if req.exec_id.is_empty() && req.id == sandbox.pod {
            sandbox
                .connect_late_network()
                .await
                .map_err(|e| status(Code::INTERNAL, format!("pod {}: {e:#}", sandbox.pod)))?;
        }
        let pid = if req.exec_id.is_empty() {
            Guest::new(agent).start(&req.id).await?
        } else {
            Guest::new(agent).exec(&req.id, &req.exec_id, spec).await?
        };
        let pid = {
            let mut state = self.inner.state.lock().unwrap();
            let p = state.process(&req.id, &req.exec_id)?;
            p.machine.started().map_err(state_err)?;
            p.set_guest_pid(pid)
        };
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                ev::TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                },
            )
            .await;
        } else {
            let pumps = Pumps::start(agent, &req.id, &req.exec_id, &stdio);
            self.spawn_waiter(sandbox.clone(), req.id.clone(), req.exec_id.clone(), pumps);
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                ev::TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                },
            )
            .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    pub(crate) async fn delete_task(
        &self,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut state = self.inner.state.lock().unwrap();
            let p = state.process(&req.id, &req.exec_id)?;
            let exit = p.machine.deleted(SystemTime::now()).map_err(state_err)?;
            let pid = p.pid;
            state.container(&req.id)?.execs.remove(&req.exec_id);
            return Ok(deleted(pid, exit));
        }
        let _serial = self.inner.lifecycle.lock().await;
        let (sandbox, pid) = {
            let mut state = self.inner.state.lock().unwrap();
            // An unknown task is NOT_FOUND (containerd takes that as deleted already), also
            // in a shim whose VM never booted.
            let p = state.process(&req.id, "")?;
            p.machine.check_delete().map_err(state_err)?;
            let pid = p.pid;
            (state.sandbox()?, pid)
        };
        let agent = sandbox.agent();
        if let Err(e) = Guest::new(agent).remove(&req.id).await {
            // The guest may be gone already; the slot and the state still go.
            tracing::warn!(container = %req.id, "removing the container in the guest: {e}");
        }
        sandbox.detach_rootfs(&req.id).await;
        sandbox.unshare_mounts(&req.id);
        let exit = {
            let mut state = self.inner.state.lock().unwrap();
            let c = state.container(&req.id)?;
            let exit = c
                .init
                .machine
                .deleted(SystemTime::now())
                .map_err(state_err)?;
            let bundle = c.bundle.clone();
            state.containers.remove(&req.id);
            let _ = std::fs::remove_file(Path::new(&bundle).join(BUNDLE_RECORD));
            exit
        };
        let response = deleted(pid, exit);
        let event = ev::TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid,
            exit_status: response.exit_status,
            exited_at: response.exited_at.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, event).await;
        Ok(response)
    }

    pub(crate) async fn exec_task(
        &self,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        {
            let mut state = self.inner.state.lock().unwrap();
            let c = state.container(&req.id)?;
            if !matches!(c.init.machine.state(), ProcessState::Running) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {} is {}, not running",
                        req.id,
                        c.init.machine.state().name()
                    ),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let spec = req
                .spec
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default();
            if spec.is_empty() {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    "exec without a process spec",
                ));
            }
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let mut spec = spec;
            if req.terminal {
                if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&spec) {
                    v["terminal"] = serde_json::Value::Bool(true);
                    spec = serde_json::to_vec(&v).unwrap_or(spec);
                }
            }
            c.execs.insert(
                req.exec_id.clone(),
                Process::new(format!("exec {} of {}", req.exec_id, req.id), stdio, spec),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(api::Empty::new())
    }

    pub(crate) async fn stats_task(
        &self,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let s = self.guest_of(&req.id)?.stats(&req.id).await?;
        let metrics = cg2::Metrics {
            pids: MessageField::some(cg2::PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
                ..Default::default()
            }),
            cpu: MessageField::some(cg2::CPUStat {
                usage_usec: s.cpu_usage_ns / 1000,
                user_usec: s.cpu_user_ns / 1000,
                system_usec: s.cpu_system_ns / 1000,
                ..Default::default()
            }),
            memory: MessageField::some(cg2::MemoryStat {
                usage: s.memory_usage_bytes,
                usage_limit: s.memory_limit_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    pub(crate) async fn pause_task(&self, req: api::PauseRequest) -> ttrpc::Result<api::Empty> {
        self.freeze_task(&req.id, true).await
    }

    pub(crate) async fn resume_task(&self, req: api::ResumeRequest) -> ttrpc::Result<api::Empty> {
        self.freeze_task(&req.id, false).await
    }

    /// Pauses (freezes) or resumes container `id`, and publishes `/tasks/paused` or
    /// `/tasks/resumed`.
    async fn freeze_task(&self, id: &str, pause: bool) -> ttrpc::Result<api::Empty> {
        let guest = self.guest_of_process(id, "", |p| {
            let allowed = if pause {
                p.machine.check_pause()
            } else {
                p.machine.check_resume()
            };
            allowed.map_err(state_err)
        })?;
        guest.freeze(id, pause).await?;
        {
            let mut state = self.inner.state.lock().unwrap();
            let machine = &mut state.process(id, "")?.machine;
            if pause {
                machine.paused()
            } else {
                machine.resumed()
            }
            .map_err(state_err)?;
        }
        let container_id = id.to_string();
        if pause {
            let event = ev::TaskPaused {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, event).await;
        } else {
            let event = ev::TaskResumed {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, event).await;
        }
        Ok(api::Empty::new())
    }
}

/// containerd's answer to the delete of a process that had `pid` and ended with `exit`.
fn deleted(pid: u32, exit: ExitInfo) -> api::DeleteResponse {
    api::DeleteResponse {
        pid,
        exit_status: exit.status,
        exited_at: MessageField::some(timestamp(exit.at)),
        ..Default::default()
    }
}
