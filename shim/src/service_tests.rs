//! The task service without containerd: a recorded event sink, no VM.

use super::*;
use crate::agent::Agent;
use crate::config::PulseConfig;
use crate::persist::{BundleRecord, BUNDLE_RECORD};
use crate::pod::{CONTAINER_TYPE, SANDBOX_ID};
use crate::sandbox::{Sandbox, VmStopper};
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
use std::path::{Path, PathBuf};
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
/// answers with fixed pids; container `gone` is not there, container `refused` cannot be
/// created, and a process never exits on its own (a wait stays unanswered).
#[derive(Default)]
struct FakeContainers {
    calls: Mutex<Vec<String>>,
    created: Mutex<Vec<containers::CreateContainerRequest>>,
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

    /// The names of the calls so far, once one named `last` has come (or 5 s have passed).
    async fn names_until(&self, last: &str) -> Vec<String> {
        let names = |calls: &[String]| -> Vec<String> {
            let name = |c: &String| c.split(' ').next().unwrap_or_default().to_string();
            calls.iter().map(name).collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !names(&self.calls.lock().unwrap()).iter().any(|n| n == last)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        names(&self.taken())
    }

    /// The guest's create: pid 40 (the create's own), or RESOURCE_EXHAUSTED for container
    /// `refused`. The request is kept whole (its spec is JSON, unreadable in the text format).
    fn create(
        &self,
        req: &containers::CreateContainerRequest,
    ) -> ttrpc::Result<containers::CreateContainerResponse> {
        self.created.lock().unwrap().push(req.clone());
        if req.container_id == "refused" {
            return Err(status(
                Code::RESOURCE_EXHAUSTED,
                "the guest is out of memory",
            ));
        }
        Ok(containers::CreateContainerResponse {
            pid: 40,
            ..Default::default()
        })
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

    /// Every call but a wait, answered at once.
    fn reply<R: Rpc>(&self, req: &R) -> ttrpc::Result<R::Reply> {
        let req: &dyn Any = req;
        let reply: Box<dyn Any> = if let Some(create) = req.downcast_ref() {
            Box::new(self.create(create)?)
        } else if let Some(start) = req.downcast_ref() {
            Box::new(Self::started(start)?)
        } else if req.is::<containers::ListProcessesRequest>() {
            Box::new(Self::listed())
        } else {
            Box::new(R::Reply::default())
        };
        Ok(*reply.downcast().expect("the reply to its own request"))
    }
}

/// Every call recorded; a create, a start and a listing answered as above, a wait never, any
/// other with an empty reply.
impl Answer for FakeContainers {
    async fn answer<R: Rpc>(&self, req: R) -> ttrpc::Result<R::Reply> {
        self.record(&req);
        if (&req as &dyn Any).is::<containers::WaitProcessRequest>() {
            std::future::pending::<()>().await;
        }
        self.reply(&req)
    }
}

/// A service whose pod's sandbox (no VM) reaches `FakeContainers` over a unix socket, with
/// containers `c1` and `gone` created; the server and the directory live as long as the test.
struct WithGuest {
    service: Service,
    events: Arc<RecordedEvents>,
    guest: Arc<FakeContainers>,
    sandbox: Arc<Sandbox>,
    vm: VmStopper,
    _server: Server,
    dir: tempfile::TempDir,
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
    let mut config = PulseConfig::default();
    config.shim.state_dir = dir.path().join("state");
    // The rootfs disk's size and place are what the create path decides; what mkfs writes
    // in it is the rootfs module's tests'.
    config.rootfs.mkfs = "true".into();
    let (sandbox, vm) = Sandbox::without_vm(config, "pod", agent);
    service.inner.state.lock().unwrap().sandbox = Some(sandbox.clone());
    add_container(&service, "c1");
    add_container(&service, "gone");
    WithGuest {
        service,
        events,
        guest,
        sandbox,
        vm,
        _server: server,
        dir,
    }
}

impl WithGuest {
    /// containerd's Start of container `id`'s init.
    async fn start(&self, id: &str) -> ttrpc::Result<api::StartResponse> {
        self.service.start(&ctx(), on!(StartRequest, id)).await
    }

    /// containerd's Create of container `id` of the pod from the bundle `bundle` (no rootfs
    /// mounts: the spec's root is the tree), its stdio files in the test's directory.
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        terminal: bool,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let req = on!(CreateTaskRequest, id,
            bundle: bundle.display().to_string(),
            stdout: self.stdio(id, "out"),
            stderr: self.stdio(id, "err"),
            terminal: terminal);
        self.service.create(&ctx(), req).await
    }

    /// Where [`Self::create`] has container `id`'s `stream` (`out`, `err`) written.
    fn stdio(&self, id: &str, stream: &str) -> String {
        let path = self.dir.path().join(format!("{id}.{stream}"));
        path.display().to_string()
    }

    /// [`Self::create`] of container `id` of the pod from bundle `id`, whose spec is
    /// [`cri_spec`]'s; the bundle too.
    async fn create_cri(
        &self,
        id: &str,
        terminal: bool,
    ) -> (PathBuf, ttrpc::Result<api::CreateTaskResponse>) {
        let bundle = self.bundle(id, &cri_spec("pod").to_string());
        let created = self.create(id, &bundle, terminal).await;
        (bundle, created)
    }

    /// containerd's state of container `id`'s init, which must exist.
    async fn state(&self, id: &str) -> api::StateResponse {
        self.service
            .state(&ctx(), on!(StateRequest, id))
            .await
            .unwrap()
    }

    /// Bundle `name` in the test's directory: `config` as its config.json, a small tree at
    /// `rootfs`.
    fn bundle(&self, name: &str, config: &str) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(name);
        std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
        std::fs::write(bundle.join("rootfs/etc/hostname"), "pod\n").unwrap();
        std::fs::write(bundle.join("config.json"), config).unwrap();
        bundle
    }

    /// Whether no trace of container `id`'s create is left: no record of it, no block slot
    /// taken, no disk in one, no bundle record.
    fn assert_nothing_left_of(&self, id: &str, bundle: &Path) {
        let state = self.service.inner.state.lock().unwrap();
        assert!(!state.containers.contains_key(id), "{id} is registered");
        assert_eq!(self.sandbox.slots_in_use(), 0);
        for slot in 0..self.sandbox.config().devices.block_slots {
            let image = self.sandbox.paths.slot_image(slot);
            assert_eq!(std::fs::metadata(&image).unwrap().len(), 0, "{image:?}");
        }
        assert!(!bundle.join(BUNDLE_RECORD).exists());
    }
}

/// The OCI spec of a container of pod `pod` as containerd's CRI writes it, with what the guest
/// cannot use: hooks, a host cgroup path, the pod's network namespace on the host, and the pod's
/// `/dev/shm` on the host.
fn cri_spec(pod: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["sh", "-c", "sleep 1"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": format!("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/{pod}/shm"),
                "options": ["rbind", "ro"]
            }
        ],
        "annotations": {
            CONTAINER_TYPE: "container",
            SANDBOX_ID: pod
        },
        "linux": {
            "cgroupsPath": "/kubepods/c2",
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1"}
            ]
        }
    })
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

#[tokio::test]
async fn create_sends_the_guest_its_spec_and_rootfs_disk_and_registers_the_container() {
    let t = with_guest().await;
    let (bundle, created) = t.create_cri("c2", false).await;
    let created = created.unwrap();
    assert_eq!(created.pid, 40);
    let sent = t.guest.created.lock().unwrap().clone();
    let [sent] = &sent[..] else {
        panic!("{} creates", sent.len())
    };
    assert_eq!(sent.container_id, "c2");
    // The rootfs: a disk in the first free slot, which the agent mounts at `rootfs`.
    let storages: Vec<_> = sent
        .storages
        .iter()
        .map(|s| (s.source.enum_value(), &*s.locator, &*s.fs_type, &*s.target))
        .collect();
    let block = Ok(containers::StorageSource::STORAGE_SOURCE_BLOCK_SERIAL);
    assert_eq!(storages, [(block, "pulse-slot-0", "ext4", "rootfs")]);
    assert_eq!(t.sandbox.slots_in_use(), 1);
    let disk = std::fs::metadata(t.sandbox.paths.slot_image(0)).unwrap();
    assert!(disk.len() > 0, "the slot's image is sized for the tree");
    // The spec, made fit for the guest: its root is the disk, the host's paths are gone, the
    // pod's /dev/shm is the guest's.
    let spec: serde_json::Value = serde_json::from_slice(&sent.oci_spec_json).unwrap();
    let host = cri_spec("pod");
    assert_eq!(spec["root"], serde_json::json!({"path": "rootfs"}));
    assert!(spec.get("hooks").is_none());
    assert!(spec["linux"].get("cgroupsPath").is_none());
    assert_eq!(
        spec["linux"]["namespaces"],
        serde_json::json!([{"type": "pid"}])
    );
    assert_eq!(spec["mounts"][0], host["mounts"][0]);
    assert_eq!(spec["mounts"][1]["source"], crate::spec::GUEST_SANDBOX_SHM);
    assert_eq!(
        spec["process"], host["process"],
        "no terminal was asked for"
    );
    // containerd sees it created with its stdio; the shim waits for its init at once.
    let state = t.state("c2").await;
    assert_eq!(state.status.enum_value(), Ok(api::Status::CREATED));
    assert_eq!(
        (state.pid, &*state.bundle),
        (40, &*bundle.display().to_string())
    );
    let stdio = (t.stdio("c2", "out"), t.stdio("c2", "err"));
    assert_eq!((state.stdout, state.stderr), stdio);
    assert!(state.stdin.is_empty() && !state.terminal);
    assert_eq!(
        t.events.taken(),
        [(
            topics::TASK_CREATE_EVENT_TOPIC.to_string(),
            "containerd.events.TaskCreate".to_string()
        )]
    );
    assert_eq!(
        t.guest.names_until("WaitProcessRequest").await,
        ["CreateContainerRequest", "WaitProcessRequest"]
    );
    // The bundle says which sandbox holds it, for a cleanup after the shim died.
    let record = std::fs::read(bundle.join(BUNDLE_RECORD)).unwrap();
    let record: BundleRecord = serde_json::from_slice(&record).unwrap();
    assert_eq!(
        (&*record.pod, &record.sandbox_dir),
        ("pod", &t.sandbox.paths.dir)
    );
}

#[tokio::test]
async fn a_terminal_is_asked_of_the_guest_in_the_spec() {
    let t = with_guest().await;
    t.create_cri("c2", true).await.1.unwrap();
    let sent = t.guest.created.lock().unwrap().clone();
    let spec: serde_json::Value = serde_json::from_slice(&sent[0].oci_spec_json).unwrap();
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["process"]["args"], cri_spec("pod")["process"]["args"]);
    let state = t.state("c2").await;
    assert!(state.terminal);
}

#[tokio::test]
async fn a_create_the_agent_refuses_keeps_its_code_and_leaves_nothing_behind() {
    let t = with_guest().await;
    let (bundle, created) = t.create_cri("refused", false).await;
    let err = created.unwrap_err();
    assert_eq!(
        code(err),
        (
            Code::RESOURCE_EXHAUSTED,
            "creating container refused in the guest: the guest is out of memory".into()
        )
    );
    t.assert_nothing_left_of("refused", &bundle);
    assert_eq!(t.guest.taken().len(), 1, "the create, no wait");
    assert!(t.events.taken().is_empty());
    // The sandbox is the pod's still: the next container is created.
    t.create_cri("c2", false).await.1.unwrap();
    assert_eq!(t.sandbox.slots_in_use(), 1);
}

#[tokio::test]
async fn a_create_the_guest_cannot_have_fails_by_name_before_the_agent_hears_of_it() {
    let t = with_guest().await;
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut spec = cri_spec("pod");
        change(&mut spec);
        spec.to_string()
    };
    let host_bind = with(&|s| {
        let data = serde_json::json!({"destination": "/data", "type": "bind", "source": "/srv"});
        s["mounts"].as_array_mut().unwrap().push(data);
    });
    let other_pod = with(&|s| s["annotations"][SANDBOX_ID] = "other".into());
    let no_tree = with(&|s| s["root"]["path"] = "missing".into());
    let fine = cri_spec("pod").to_string();
    let shared = "the host path /srv cannot reach the VM: this pod's VM has no shared filesystem";
    let invalid = [
        ("c2", "{\"ociVersion\":", "config.json: EOF"),
        ("c2", &*host_bind, shared),
        ("c2", &*other_pod, "serves pod pod, not other"),
        ("bad/id", &*fine, "invalid container id \"bad/id\""),
    ];
    let unmade = (
        "c2",
        &*no_tree,
        "container c2: preparing its rootfs: measuring",
    );
    let cases = invalid
        .map(|case| (case, Code::INVALID_ARGUMENT))
        .into_iter()
        .chain([(unmade, Code::INTERNAL)]);
    for (i, ((id, config, text), want)) in cases.enumerate() {
        let bundle = t.bundle(&format!("case-{i}"), config);
        let err = t.create(id, &bundle, false).await.unwrap_err();
        let (code, message) = code(err);
        assert_eq!(code, want, "{message}");
        assert!(message.contains(text), "{message:?} does not say {text:?}");
        t.assert_nothing_left_of(id, &bundle);
    }
    assert!(t.guest.taken().is_empty());
    assert!(t.events.taken().is_empty());
}

#[tokio::test]
async fn a_second_create_of_a_container_is_refused_and_keeps_the_first() {
    let t = with_guest().await;
    let err = t.create_cri("c1", false).await.1.unwrap_err();
    assert_eq!(
        code(err),
        (Code::ALREADY_EXISTS, "container c1 exists".into())
    );
    let state = t.state("c1").await;
    assert_eq!(state.bundle, "/nonexistent/bundle");
    assert_eq!(t.sandbox.slots_in_use(), 0);
    assert!(t.guest.taken().is_empty());
}

/// A VM that stops under a running container (a guest kernel panic: the agent answers
/// nothing, not even an error): the wait on its init ends at once and is published as an exit
/// of 255, and a later call on the guest is UNAVAILABLE, naming why, instead of waiting out
/// the agent's deadline.
#[tokio::test]
async fn a_vm_that_stops_under_its_pod_ends_the_waits_and_calls_on_its_guest() {
    let t = with_guest().await;
    t.create_cri("c2", false).await.1.unwrap();
    assert_eq!(
        t.guest.names_until("WaitProcessRequest").await,
        ["CreateContainerRequest", "WaitProcessRequest"]
    );
    t.vm.stop("guest triple fault (reboot)");
    // The output reads (open in the fake guest) end too: the exit does not wait out the time
    // the output may take to drain.
    let deadline = std::time::Instant::now() + crate::task::exits::DRAIN_LIMIT / 2;
    while status_of(&t.service, "c2") != api::Status::STOPPED {
        assert!(std::time::Instant::now() < deadline, "c2 still waited on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.state("c2").await.exit_status, 255);
    let topics: Vec<String> = t.events.taken().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        topics,
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC
        ]
    );
    let pids = t.service.pids(&ctx(), on!(PidsRequest, "c1")).await;
    let (code, message) = code(pids.unwrap_err());
    assert_eq!(code, Code::UNAVAILABLE);
    assert!(
        message.ends_with("the VM stopped: guest triple fault (reboot)"),
        "{message}"
    );
}
