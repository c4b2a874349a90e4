//! The task service without containerd: a recorded event sink, no VM.

use super::*;
use crate::agent::Agent;
use crate::sandbox::Sandbox;
use crate::stdio::StdioPaths;
use crate::task::errors::status;
use crate::task::events::RecordedEvents;
use crate::task::guest::{Answer, Answering, Rpc};
use crate::task::registry::map_status;
use crate::task::registry::{Container, Process};
use pulse_protocols::containers;
use pulse_protocols::containers_ttrpc::create_containers;
use pulse_protocols::protobuf::{self, MessageFull};
use std::any::Any;
use std::collections::HashMap;
use std::time::Duration;
use ttrpc::r#async::{Client, Server};
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

/// containerd's request `$req` for container `$id`, with `$field`s, the others at their defaults.
macro_rules! on {
    ($req:ident, $id:expr $(, $field:ident: $value:expr)*) => {
        api::$req {
            id: $id.into(),
            $($field: $value,)*
            ..Default::default()
        }
    };
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
        .state(&ctx(), on!(StateRequest, "c1"))
        .await
        .unwrap_err();
    assert_eq!(
        code(state),
        (Code::NOT_FOUND, "container c1 not found".into())
    );
    let kill = service
        .kill(&ctx(), on!(KillRequest, "c1", signal: 9))
        .await
        .unwrap_err();
    assert_eq!(code(kill).0, Code::NOT_FOUND);
    let delete = service
        .delete(&ctx(), on!(DeleteRequest, "c1"))
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
            on!(CreateTaskRequest, "c1", bundle: bundle.path().display().to_string()),
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
        .state(&ctx(), on!(StateRequest, "c1"))
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
        .start(&ctx(), on!(StartRequest, "c1"))
        .await
        .unwrap_err();
    assert_eq!(code(start).0, Code::FAILED_PRECONDITION);
}

/// The agent's Containers service as the tests below play it: it records each request and
/// answers with fixed pids; container `gone` is not there.
#[derive(Default)]
struct FakeContainers {
    calls: Mutex<Vec<String>>,
}

impl FakeContainers {
    /// Records `req` as its type's name and its fields (protobuf's text format).
    fn record<R: MessageFull>(&self, req: &R) {
        let text = protobuf::text_format::print_to_string(req);
        let call = format!("{} {text}", R::descriptor().name());
        self.calls.lock().unwrap().push(call);
    }

    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }

    /// The guest's start: pid 42, or NOT_FOUND for container `gone`.
    fn started(
        req: &containers::StartContainerRequest,
    ) -> ttrpc::Result<containers::StartContainerResponse> {
        if req.container_id == "gone" {
            return Err(status(Code::NOT_FOUND, "no such container"));
        }
        Ok(containers::StartContainerResponse {
            pid: 42,
            ..Default::default()
        })
    }

    /// The guest's processes: pids 42 and 7.
    fn listed() -> containers::ListProcessesResponse {
        let info = |pid| containers::ProcessInfo {
            pid,
            ..Default::default()
        };
        containers::ListProcessesResponse {
            processes: vec![info(42), info(7)],
            ..Default::default()
        }
    }
}

/// Every call recorded; a start and a listing answered as above, any other with an empty reply.
impl Answer for FakeContainers {
    fn answer<R: Rpc>(&self, req: R) -> ttrpc::Result<R::Reply> {
        self.record(&req);
        let req: &dyn Any = &req;
        let reply: Box<dyn Any> = if let Some(start) = req.downcast_ref() {
            Box::new(Self::started(start)?)
        } else if req.is::<containers::ListProcessesRequest>() {
            Box::new(Self::listed())
        } else {
            Box::new(R::Reply::default())
        };
        Ok(*reply.downcast().expect("the reply to its own request"))
    }
}

/// A service whose pod's sandbox (no VM) reaches `FakeContainers` over a unix socket, with
/// containers `c1` and `gone` created; the server and the directory live as long as the test.
struct WithGuest {
    service: Service,
    events: Arc<RecordedEvents>,
    guest: Arc<FakeContainers>,
    _server: Server,
    _dir: tempfile::TempDir,
}

async fn with_guest() -> WithGuest {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("agent.sock").display());
    let guest = Arc::new(FakeContainers::default());
    let mut server = Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_containers(Arc::new(Answering(guest.clone()))));
    server.start().await.unwrap();
    let agent = Agent::new(
        Client::connect(&addr).await.unwrap(),
        Duration::from_secs(5),
    );
    let (service, events) = service();
    let sandbox = Sandbox::without_vm(dir.path(), "pod", agent);
    service.inner.state.lock().unwrap().sandbox = Some(sandbox);
    add_container(&service, "c1");
    add_container(&service, "gone");
    WithGuest {
        service,
        events,
        guest,
        _server: server,
        _dir: dir,
    }
}

impl WithGuest {
    /// containerd's Start of container `id`'s init.
    async fn start(&self, id: &str) -> ttrpc::Result<api::StartResponse> {
        self.service.start(&ctx(), on!(StartRequest, id)).await
    }
}

/// containerd's status of container `id`'s init.
fn status_of(service: &Service, id: &str) -> api::Status {
    let mut state = service.inner.state.lock().unwrap();
    map_status(state.process(id, "").unwrap().machine.state())
}

#[tokio::test]
async fn start_runs_the_init_in_the_guest_and_publishes_its_pid() {
    let t = with_guest().await;
    let started = t.start("c1").await.unwrap();
    assert_eq!(started.pid, 42);
    assert_eq!(
        t.guest.taken(),
        [r#"StartContainerRequest container_id: "c1""#]
    );
    assert_eq!(status_of(&t.service, "c1"), api::Status::RUNNING);
    assert_eq!(
        t.events.taken(),
        [(
            topics::TASK_START_EVENT_TOPIC.to_string(),
            "containerd.events.TaskStart".to_string()
        )]
    );
    // A second start is refused before it reaches the guest.
    let again = t.start("c1").await.unwrap_err();
    assert_eq!(code(again).0, Code::FAILED_PRECONDITION);
    assert!(t.guest.taken().is_empty());
}

#[tokio::test]
async fn an_agent_error_keeps_its_code_and_says_what_was_being_done() {
    let t = with_guest().await;
    let err = t.start("gone").await.unwrap_err();
    assert_eq!(
        code(err),
        (
            Code::NOT_FOUND,
            "starting container gone: no such container".into()
        )
    );
    assert_eq!(status_of(&t.service, "gone"), api::Status::CREATED);
    assert!(t.events.taken().is_empty());
}

#[tokio::test]
async fn kill_pause_resume_and_pids_reach_the_guest() {
    let t = with_guest().await;
    t.start("c1").await.unwrap();
    t.service
        .kill(&ctx(), on!(KillRequest, "c1", signal: 15, all: true))
        .await
        .unwrap();
    t.service
        .pause(&ctx(), on!(PauseRequest, "c1"))
        .await
        .unwrap();
    assert_eq!(status_of(&t.service, "c1"), api::Status::PAUSED);
    t.service
        .resume(&ctx(), on!(ResumeRequest, "c1"))
        .await
        .unwrap();
    let pids = t
        .service
        .pids(&ctx(), on!(PidsRequest, "c1"))
        .await
        .unwrap();
    let pids: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [42, 7]);
    assert_eq!(
        t.guest.taken(),
        [
            r#"StartContainerRequest container_id: "c1""#,
            r#"SignalProcessRequest container_id: "c1" signal: 15 all: true"#,
            r#"PauseContainerRequest container_id: "c1""#,
            r#"ResumeContainerRequest container_id: "c1""#,
            r#"ListProcessesRequest container_id: "c1""#,
        ]
    );
    let topics: Vec<String> = t.events.taken().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        topics,
        [
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_PAUSED_EVENT_TOPIC,
            topics::TASK_RESUMED_EVENT_TOPIC
        ]
    );
}
