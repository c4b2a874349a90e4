//! The task service without containerd: a recorded event sink, no VM.

use super::*;
use crate::stdio::StdioPaths;
use crate::task::events::RecordedEvents;
use crate::task::registry::{Container, Process};
use std::collections::HashMap;
use std::time::Duration;
use ttrpc::Code;

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
