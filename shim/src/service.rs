//! containerd's task service (API v2) for one pod: every call maps onto the
//! guest agent's Containers API through the pod's [`Sandbox`](crate::sandbox::Sandbox).

use std::sync::{Arc, Mutex};

use crate::task::events::{ContainerdEvents, EventSink};
use crate::task::guest::Guest;
use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::mpsc;

use crate::task::registry::{Process, State};

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
    /// The guest of container `id` (which must exist).
    pub(crate) fn guest_of(&self, id: &str) -> ttrpc::Result<Guest> {
        self.guest_of_process(id, "", |_| Ok(()))
    }

    /// The guest of process `exec` of container `id` (which must exist), once `check` allows
    /// the call on it.
    pub(crate) fn guest_of_process(
        &self,
        id: &str,
        exec: &str,
        check: impl FnOnce(&Process) -> ttrpc::Result<()>,
    ) -> ttrpc::Result<Guest> {
        let mut state = self.inner.state.lock().unwrap();
        check(state.process(id, exec)?)?;
        Ok(Guest::new(state.sandbox()?.agent()))
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

/// `impl $trait for $ty`, an `async_trait` ttrpc service whose requests and replies are in
/// `$module`, from a table: each call goes to the method named beside it, which takes the
/// request (none needs the ttrpc context). The macro writes the whole impl so that
/// `async_trait` sees the methods it expands to.
macro_rules! ttrpc_service {
    (impl $trait:ident for $ty:ty, $module:ident {
        $($call:ident($req:ident) -> $resp:ident => $handler:ident;)*
    }) => {
        #[async_trait]
        impl $trait for $ty {
            $(
                async fn $call(
                    &self,
                    _ctx: &TtrpcContext,
                    req: $module::$req,
                ) -> ttrpc::Result<$module::$resp> {
                    self.$handler(req).await
                }
            )*
        }
    };
}

ttrpc_service! {
    impl Task for Service, api {
        state(StateRequest) -> StateResponse => state_task;
        create(CreateTaskRequest) -> CreateTaskResponse => create_task;
        start(StartRequest) -> StartResponse => start_task;
        delete(DeleteRequest) -> DeleteResponse => delete_task;
        pids(PidsRequest) -> PidsResponse => pids_task;
        pause(PauseRequest) -> Empty => pause_task;
        resume(ResumeRequest) -> Empty => resume_task;
        kill(KillRequest) -> Empty => kill_task;
        exec(ExecProcessRequest) -> Empty => exec_task;
        resize_pty(ResizePtyRequest) -> Empty => resize_pty_task;
        close_io(CloseIORequest) -> Empty => close_io_task;
        update(UpdateTaskRequest) -> Empty => update_task;
        wait(WaitRequest) -> WaitResponse => wait_task;
        stats(StatsRequest) -> StatsResponse => stats_task;
        connect(ConnectRequest) -> ConnectResponse => connect_task;
        shutdown(ShutdownRequest) -> Empty => shutdown_task;
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
