//! Where the task service's events go: containerd's event service in the shim, a recorder in
//! tests. The service only sees [`EventSink`].

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;

/// How long one event may take to reach containerd.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the task events (`/tasks/create`, `/tasks/exit`, `/tasks/oom`, ...).
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Publishes `event` on `topic`; a failure is the sink's to report, never the caller's.
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// containerd's event service, in the shim's namespace.
pub struct ContainerdEvents {
    publisher: RemotePublisher,
    namespace: String,
}

impl ContainerdEvents {
    /// Events to `publisher` in `namespace`.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.into(),
        }
    }
}

#[async_trait]
impl EventSink for ContainerdEvents {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let nanos = i64::try_from(PUBLISH_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
        let ctx = ttrpc::context::with_timeout(nanos);
        if let Err(e) = self
            .publisher
            .publish(ctx, topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, "publishing an event: {e}");
        }
    }
}

/// Keeps what is published (topic and the event's message type), for tests of the service.
#[derive(Default)]
pub struct RecordedEvents {
    events: std::sync::Mutex<Vec<(String, String)>>,
}

impl RecordedEvents {
    /// (topic, message type) of every event so far, in order.
    pub fn taken(&self) -> Vec<(String, String)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl EventSink for RecordedEvents {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let name = event.descriptor_dyn().full_name().to_string();
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.into(), name));
    }
}
