//! containerd's task service (API v2) for one pod: every call maps onto the
//! guest agent's Containers API through the pod's [`Sandbox`].

use std::sync::{Arc, Mutex};

use crate::task::events::{ContainerdEvents, EventSink};
use crate::task::guest::Guest;
use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::mpsc;
use ttrpc::Code;

use crate::sandbox::Sandbox;
use crate::task::errors::{status, timestamp};
use crate::task::registry::{map_status, State};

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
        self.start_task(req).await
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        self.delete_task(req).await
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
        self.freeze_task(&req.id, true).await
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.freeze_task(&req.id, false).await
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
        self.exec_task(req).await
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
        self.stats_task(req).await
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
#[path = "service_tests.rs"]
mod tests;
