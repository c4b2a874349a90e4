//! containerd's task service (API v2) for one pod: every call maps onto the
//! guest agent's Containers API through the pod's [`Sandbox`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::task::events::{ContainerdEvents, EventSink};
use crate::task::guest::Guest;
use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::cgroups_v2::metrics as cg2;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::mpsc;
use ttrpc::Code;

use crate::persist::BUNDLE_RECORD;
use crate::sandbox::Sandbox;
use crate::state::ProcessState;
use crate::stdio::{Pumps, StdioPaths};
use crate::task::errors::{state_err, status, timestamp};
use crate::task::registry::{map_status, Process, State};

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

/// The service's shared state (the task modules reach it as `self.inner`).
pub(crate) struct Inner {
    pub(crate) namespace: String,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) state: Mutex<State>,
    /// Serializes create, delete and shutdown (they boot and tear down the VM).
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    pub(crate) oom_tx: mpsc::UnboundedSender<String>,
}

impl Service {
    /// The sandbox of container `id` (which must exist).
    pub(crate) fn sandbox_of(&self, id: &str) -> ttrpc::Result<Arc<Sandbox>> {
        let mut state = self.inner.state.lock().unwrap();
        state.container(id)?;
        state.sandbox()
    }
    /// A service publishing to containerd's `publisher` in `namespace`; `exit` is signalled
    /// once the pod is gone.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let events = Arc::new(ContainerdEvents::new(publisher, namespace));
        Self::with_events(namespace, events, exit)
    }

    /// A service of containerd namespace `namespace` publishing to `events`.
    pub fn with_events(namespace: &str, events: Arc<dyn EventSink>, exit: Arc<ExitSignal>) -> Self {
        let (oom_tx, mut oom_rx) = mpsc::unbounded_channel::<String>();
        let service = Service {
            inner: Arc::new(Inner {
                namespace: namespace.into(),
                events,
                exit,
                state: Mutex::new(State::default()),
                lifecycle: tokio::sync::Mutex::new(()),
                oom_tx,
            }),
        };
        let weak = Arc::downgrade(&service.inner);
        tokio::spawn(async move {
            while let Some(id) = oom_rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                Service { inner }.publish_oom(id).await;
            }
        });
        service
    }

    /// `/tasks/oom` for container `id`, if this shim runs it.
    pub(crate) async fn publish_oom(&self, id: String) {
        let known = self
            .inner
            .state
            .lock()
            .unwrap()
            .containers
            .contains_key(&id);
        if known {
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                ev::TaskOOM {
                    container_id: id,
                    ..Default::default()
                },
            )
            .await;
        }
    }

    pub(crate) async fn publish<M: MessageDyn>(&self, topic: &str, event: M) {
        self.inner.events.publish(topic, Box::new(event)).await;
    }
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let mut state = self.inner.state.lock().unwrap();
        let bundle = state.container(&req.id)?.bundle.clone();
        let p = state.process(&req.id, &req.exec_id)?;
        let s = p.machine.state();
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: map_status(s).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        if let Some(e) = s.exit() {
            resp.exit_status = e.status;
            resp.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(resp)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let _serial = self.inner.lifecycle.lock().await;
        tracing::info!(id = %req.id, bundle = %req.bundle, "create");
        let pid = self.create_container(&req).await.inspect_err(|e| {
            tracing::error!(id = %req.id, "create failed: {e}");
        })?;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
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
        let pid = if req.exec_id.is_empty() {
            Guest::new(agent).start(&req.id).await?
        } else {
            Guest::new(agent).exec(&req.id, &req.exec_id, spec).await?
        };
        {
            let mut state = self.inner.state.lock().unwrap();
            let p = state.process(&req.id, &req.exec_id)?;
            p.pid = pid;
            p.machine.started().map_err(state_err)?;
        }
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

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut state = self.inner.state.lock().unwrap();
            let c = state.container(&req.id)?;
            let p = c.execs.get_mut(&req.exec_id).ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("exec {} of {} not found", req.exec_id, req.id),
                )
            })?;
            let exit = p.machine.deleted(SystemTime::now()).map_err(state_err)?;
            let pid = p.pid;
            c.execs.remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            });
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
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            ev::TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        )
        .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let sandbox = self.sandbox_of(&req.id)?;
        let agent = sandbox.agent();
        let pids = Guest::new(agent).pids(&req.id).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            state
                .process(&req.id, "")?
                .machine
                .check_pause()
                .map_err(state_err)?;
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent).pause(&req.id).await?;
        self.inner
            .state
            .lock()
            .unwrap()
            .process(&req.id, "")?
            .machine
            .paused()
            .map_err(state_err)?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            ev::TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            state
                .process(&req.id, "")?
                .machine
                .check_resume()
                .map_err(state_err)?;
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent).resume(&req.id).await?;
        self.inner
            .state
            .lock()
            .unwrap()
            .process(&req.id, "")?
            .machine
            .resumed()
            .map_err(state_err)?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            ev::TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            let p = state.process(&req.id, &req.exec_id)?;
            if p.machine.check_kill().is_err() {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent)
            .signal(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
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

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            state.process(&req.id, &req.exec_id)?;
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent)
            .resize(&req.id, &req.exec_id, req.height, req.width)
            .await?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        if !req.stdin {
            return Ok(api::Empty::new());
        }
        let (sandbox, pump) = {
            let mut state = self.inner.state.lock().unwrap();
            let sandbox = state.sandbox()?;
            (sandbox, state.process(&req.id, &req.exec_id)?.stdin.take())
        };
        if let Some(mut pump) = pump {
            // The shim lets go of the FIFO and answers at once, as containerd's runc shim does:
            // the pump forwards what is left and ends stdin in the guest when the last writer is
            // gone, however long the process takes to read it. (ctr calls CloseIO from inside
            // its read of the EOF and closes its own writer only once CloseIO has returned:
            // waiting here for that writer cost every ctr 2 s and then cut off what the pump
            // had not forwarded yet.)
            drop(pump.hold.take());
            return Ok(api::Empty::new());
        }
        crate::stdio::close_stdin(sandbox.agent(), &req.id, &req.exec_id).await;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = self.sandbox_of(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update without resources"))?;
        let agent = sandbox.agent();
        Guest::new(agent).update(&req.id, resources).await?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let mut rx = {
            let mut state = self.inner.state.lock().unwrap();
            state.process(&req.id, &req.exec_id)?.exit.subscribe()
        };
        let exit = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(status(Code::NOT_FOUND, "the process went away"));
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let sandbox = self.sandbox_of(&req.id)?;
        let agent = sandbox.agent();
        let s = Guest::new(agent).stats(&req.id).await?;
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

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut state = self.inner.state.lock().unwrap();
        let task_pid = state.container(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _serial = self.inner.lifecycle.lock().await;
        let remaining = self.inner.state.lock().unwrap().containers.len();
        if remaining > 0 && !req.now {
            tracing::debug!(remaining, "shutdown: other containers of the pod remain");
            return Ok(api::Empty::new());
        }
        tracing::info!("shutdown: stopping the pod");
        // containerd gives Shutdown a few seconds; the teardown finishes in the
        // background and the shim exits when it is done.
        let service = self.clone();
        tokio::spawn(async move {
            service.teardown().await;
            service.inner.exit.signal();
        });
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::StdioPaths;
    use crate::task::events::RecordedEvents;
    use crate::task::registry::{Container, Process};
    use std::collections::HashMap;
    use std::time::Duration;

    fn service() -> (Service, Arc<RecordedEvents>) {
        let events = Arc::new(RecordedEvents::default());
        let service = Service::with_events("ns", events.clone(), Arc::new(ExitSignal::default()));
        (service, events)
    }

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        }
    }

    fn code(e: ttrpc::Error) -> (Code, String) {
        match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other}"),
        }
    }

    fn add_container(service: &Service, id: &str) {
        service.inner.state.lock().unwrap().containers.insert(
            id.into(),
            Container {
                bundle: "/nonexistent/bundle".into(),
                init: Process::new(format!("container {id}"), StdioPaths::default(), Vec::new()),
                execs: HashMap::new(),
            },
        );
    }

    #[tokio::test]
    async fn calls_on_unknown_containers_are_not_found_and_publish_nothing() {
        let (service, events) = service();
        let state = service
            .state(
                &ctx(),
                api::StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code(state),
            (Code::NOT_FOUND, "container c1 not found".into())
        );
        let kill = service
            .kill(
                &ctx(),
                api::KillRequest {
                    id: "c1".into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(kill).0, Code::NOT_FOUND);
        let delete = service
            .delete(
                &ctx(),
                api::DeleteRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(delete).0, Code::NOT_FOUND);
        assert!(events.taken().is_empty(), "{:?}", events.taken());
    }

    #[tokio::test]
    async fn a_bundle_without_a_spec_is_refused_by_name() {
        let (service, events) = service();
        let bundle = tempfile::tempdir().unwrap();
        let err = service
            .create(
                &ctx(),
                api::CreateTaskRequest {
                    id: "c1".into(),
                    bundle: bundle.path().display().to_string(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        let (code, message) = code(err);
        assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
        assert!(message.contains("config.json"), "{message}");
        assert!(events.taken().is_empty());
        assert!(service.inner.state.lock().unwrap().containers.is_empty());
    }

    #[tokio::test]
    async fn the_state_of_a_created_container_and_its_oom_event() {
        let (service, events) = service();
        add_container(&service, "c1");
        let state = service
            .state(
                &ctx(),
                api::StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(state.status.enum_value(), Ok(api::Status::CREATED));
        assert_eq!(state.bundle, "/nonexistent/bundle");
        // An OOM kill the guest reports for a container of this shim is a /tasks/oom event; one
        // for a container it does not know is dropped.
        service.inner.oom_tx.send("c1".into()).unwrap();
        service.inner.oom_tx.send("other".into()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while events.taken().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            events.taken(),
            [(
                topics::TASK_OOM_EVENT_TOPIC.to_string(),
                "containerd.events.TaskOOM".to_string()
            )]
        );
        // A start before the sandbox booted is a precondition failure, not a crash.
        let start = service
            .start(
                &ctx(),
                api::StartRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(start).0, Code::FAILED_PRECONDITION);
    }
}
