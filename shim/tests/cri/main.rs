//! The CRI suite: this test acts as kubelet (CRI v1 over gRPC, `kubelet.rs`) against the CRI
//! plugin of a private containerd 1.6 (`harness.rs`), once with the `runc` handler (which
//! proves the harness) and once with `pulse` (configs/containerd-pulse.toml). Exec and attach
//! go through containerd's streaming server (`stream.rs`). Every test ends by checking that
//! nothing of its pod is left.
//!
//! `cargo test -p pulse-shim --test cri` (as root); `-- runc_` or `-- pulse_` picks a handler.
//! A test that lacks something on this machine prints `SKIPPED: <why>` and passes.
//! `PULSE_CRI_DEBUG=1` runs containerd at debug level; `PULSE_CRI_KEEP=1` keeps each test's
//! directory (containerd's log, root and state) after it.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod kubelet;
mod network;
mod stream;
mod volumes;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{CriEnv, APP_IMAGE, PAUSE_IMAGE, POD_SUBNET_PREFIX};
use kubelet::{
    container_config, pod_config, resources, ContainerSpec, ContainerState, Kubelet,
    PodSandboxConfig, PodSandboxState,
};
use tonic::Status;

/// A test of `scenario` per runtime handler, each skipped where its handler is missing and with
/// the machine to itself.
macro_rules! on_handlers {
    ($scenario:ident: $($test:ident($handler:literal),)*) => {$(
        #[test]
        fn $test() {
            require_cri!($handler);
            let _one = common::serial();
            $scenario($handler);
        }
    )*};
}

macro_rules! require_cri {
    ($handler:expr) => {
        if let Some(why) = harness::skip_reason($handler) {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// A test's containerd and its kubelet.
struct Node {
    env: CriEnv,
    kubelet: Kubelet,
}

impl Node {
    fn start() -> Node {
        let env = CriEnv::start();
        let kubelet = Kubelet::connect(&env.sock()).unwrap_or_else(|e| panic!("{e:#}"));
        Node { env, kubelet }
    }

    /// The answer, or a panic naming the call, the status and the end of containerd's log.
    fn ok<T>(&self, what: &str, r: Result<T, Status>) -> T {
        r.unwrap_or_else(|e| panic!("{}", self.env.failed_call(what, &e)))
    }

    /// A pod as kubelet starts it: its cgroup and log directory first, then RunPodSandbox.
    fn run_pod(
        &self,
        handler: &str,
        name: &str,
        resources: Option<kubelet::LinuxContainerResources>,
    ) -> Pod {
        let uid = format!("{name}-uid");
        let cgroup_parent = self.env.create_pod_cgroup(&uid);
        let log_dir = self
            .env
            .pod_log_root()
            .join(format!("pulse-cri-test_{name}_{uid}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        let config = pod_config(name, &uid, &log_dir, &cgroup_parent, resources);
        let started = Instant::now();
        let id = match self.kubelet.run_pod(&config, handler) {
            Ok(id) => id,
            Err(e) => {
                // A refused pod must leave nothing behind either (kubelet retries it).
                self.env.remove_pod_cgroups();
                let left = self
                    .env
                    .leaks(Duration::from_secs(20))
                    .unwrap_or_else(|| "nothing".into());
                panic!(
                    "RunPodSandbox {name} ({handler}): {:?}: {}\nleft after the failure: {left}\n\
                     --- containerd log (end) ---\n{}",
                    e.code(),
                    e.message(),
                    self.env.log_tail()
                );
            }
        };
        eprintln!("RunPodSandbox {name} ({handler}): {:?}", started.elapsed());
        Pod {
            id,
            config,
            log_dir,
        }
    }

    /// The pod's status, checked to be ready with an address on the CNI bridge.
    fn ready_pod_status(&self, pod: &Pod, handler: &str) -> serde_json::Value {
        let status = self.ok("PodSandboxStatus", self.kubelet.pod_status(&pod.id));
        let s = status.status.as_ref().expect("a status");
        assert_eq!(s.id, pod.id);
        assert_eq!(s.state, PodSandboxState::SandboxReady as i32, "{s:?}");
        assert_eq!(
            s.metadata.as_ref().map(|m| m.name.as_str()),
            pod.config.metadata.as_ref().map(|m| m.name.as_str())
        );
        assert_eq!(s.runtime_handler, handler);
        let ip = s.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
        assert!(
            ip.starts_with(POD_SUBNET_PREFIX),
            "the pod's address {ip:?} is not from the CNI bridge's range {POD_SUBNET_PREFIX}0/24"
        );
        let info: serde_json::Value =
            serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))
                .expect("the verbose info is JSON");
        info
    }

    /// Stops and removes the pod as kubelet does, then its cgroup; checks that nothing is left.
    fn remove_pod(&self, pod: &Pod) {
        self.stop_and_remove_pod(pod);
        self.env.assert_no_leaks();
    }

    /// Stops and removes the pod as kubelet does, then its cgroup (no leak check: the caller
    /// takes its volumes down first).
    fn stop_and_remove_pod(&self, pod: &Pod) {
        self.ok("StopPodSandbox", self.kubelet.stop_pod(&pod.id));
        let status = self.ok(
            "PodSandboxStatus after stop",
            self.kubelet.pod_status(&pod.id),
        );
        assert_eq!(
            status.status.map(|s| s.state),
            Some(PodSandboxState::SandboxNotready as i32)
        );
        self.ok("RemovePodSandbox", self.kubelet.remove_pod(&pod.id));
        let gone = self.kubelet.pod_status(&pod.id).unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
        assert!(
            self.ok("ListPodSandbox", self.kubelet.list_pods())
                .iter()
                .all(|p| p.id != pod.id),
            "the removed pod is still listed"
        );
        self.env.remove_pod_cgroups();
    }

    /// ExecSync of `sh -c script` in container `id`: (exit code, stdout, stderr).
    fn sh(&self, id: &str, script: &str) -> (i32, String, String) {
        let r = self.ok(
            &format!("ExecSync {script:?}"),
            self.kubelet.exec_sync(id, &["sh", "-c", script], 60),
        );
        (
            r.exit_code,
            common::text(&r.stdout),
            common::text(&r.stderr),
        )
    }

    /// The stdout of `sh -c script` in container `id`, which must succeed.
    fn sh_ok(&self, id: &str, script: &str) -> String {
        let (code, out, err) = self.sh(id, script);
        assert_eq!(code, 0, "{script:?} failed in {id}: {out}{err}");
        out
    }

    /// Runs `sh -c script` in container `id` until its stdout is `want` (60 s at most: no
    /// timing is asserted); returns how long it took. `what` and `debug` (a script whose output
    /// the failure shows) explain a failure.
    fn wait_sh(&self, id: &str, script: &str, want: &str, what: &str, debug: &str) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            let (code, out, err) = self.sh(id, script);
            if code == 0 && out == want {
                return started.elapsed();
            }
            if Instant::now() > deadline {
                let (_, seen, seen_err) = self.sh(id, debug);
                panic!(
                    "{what}: after 60 s {script:?} still gives {out:?} (exit {code}, stderr {err:?}), \
                     not {want:?}; {debug:?}: {seen}{seen_err}"
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits (60 s at most) until container `id` has exited; its status.
    fn wait_exited(&self, id: &str) -> k8s_cri::v1::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.ok("ContainerStatus", self.kubelet.container_status(id));
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} has not exited after 60 s: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates and starts a container of `pod`; its id.
    fn start_container(
        &self,
        pod: &Pod,
        config: &kubelet::ContainerConfig,
        handler: &str,
    ) -> String {
        let name = config.metadata.as_ref().map_or("?", |m| m.name.as_str());
        let id = self.ok(
            &format!("CreateContainer {name} ({handler})"),
            self.kubelet.create_container(&pod.id, config, &pod.config),
        );
        self.ok(
            &format!("StartContainer {name} ({handler})"),
            self.kubelet.start_container(&id),
        );
        id
    }

    /// The log file's lines, each checked to be in CRI's format; returns (stream, tag, text).
    fn cri_log(&self, path: &Path) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let (ts, stream, tag, rest) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                assert!(
                    is_rfc3339_nano(ts),
                    "{}: {line:?} does not start with an RFC 3339 timestamp",
                    path.display()
                );
                assert!(
                    stream == "stdout" || stream == "stderr",
                    "{}: {line:?}: stream {stream:?}",
                    path.display()
                );
                assert!(
                    tag == "F" || tag == "P",
                    "{}: {line:?}: tag {tag:?}",
                    path.display()
                );
                (stream.to_string(), tag.to_string(), rest.to_string())
            })
            .collect()
    }

    /// Waits until the log at `path` has a full stdout line `line`.
    fn wait_log_line(&self, path: &Path, line: &str) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = self.cri_log(path);
            if lines
                .iter()
                .any(|(s, t, text)| s == "stdout" && t == "F" && text == line)
            {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} never had the line {line:?}: {lines:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

struct Pod {
    id: String,
    config: PodSandboxConfig,
    log_dir: PathBuf,
}

/// A busybox container of the tests: `command` with `mounts` (host path, container path,
/// read-only), its log at `<name>/0.log`.
fn app_container(
    name: &str,
    command: &[&str],
    mounts: &[(&Path, &str, bool)],
) -> kubelet::ContainerConfig {
    container_config(&ContainerSpec {
        name,
        image: APP_IMAGE,
        command,
        log_path: format!("{name}/0.log"),
        mounts: mounts
            .iter()
            .map(|(host, container, ro)| (host.display().to_string(), container.to_string(), *ro))
            .collect(),
        envs: &[],
        resources: None,
        stdin: false,
    })
}

/// `2026-12-04T23:10:00.123456789Z` or with a `+01:00` offset (Go's RFC3339Nano).
fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let head = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let mut rest = &ts[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    let zone = rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':');
    head && zone
}

#[test]
fn rfc3339_nano_timestamps_are_recognised() {
    assert!(is_rfc3339_nano("2026-12-04T23:10:00.123456789Z"));
    assert!(is_rfc3339_nano("2026-12-04T23:10:00Z"));
    assert!(is_rfc3339_nano("2026-12-04T23:10:00.5+01:00"));
    assert!(!is_rfc3339_nano("2026-12-04 23:10:00Z"));
    assert!(!is_rfc3339_nano("2026-12-04T23:10:00.Z"));
    assert!(!is_rfc3339_nano("stdout"));
}

/// containerd 1.6's `imports` would lose the main file's CRI settings: the harness merges
/// configs/containerd-pulse.toml instead, and the snippet says so.
#[test]
fn importing_the_snippet_replaces_the_cri_section_so_it_is_merged() {
    if let Some(why) = harness::skip_reason("runc") {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(
        harness::imports_replace_the_cri_section(dir.path()),
        "containerd now merges an imported CRI section: the harness could import \
         configs/containerd-pulse.toml as it is"
    );
    let snippet =
        std::fs::read_to_string(common::repo().join("configs/containerd-pulse.toml")).unwrap();
    assert!(
        snippet.contains("imports"),
        "configs/containerd-pulse.toml must warn against `imports`"
    );
}

#[test]
fn the_harness_merges_the_users_snippet_into_its_own_cri_settings() {
    let mut base: toml::Table = "[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"p\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"r\"\n"
        .parse()
        .unwrap();
    let user: toml::Table =
        std::fs::read_to_string(common::repo().join("configs/containerd-pulse.toml"))
            .unwrap()
            .parse()
            .unwrap();
    harness::merge_toml(&mut base, &user);
    let cri = &base["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["sandbox_image"].as_str(), Some("p"));
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
        Some("r")
    );
    assert_eq!(
        cri["containerd"]["runtimes"]["pulse"]["runtime_type"].as_str(),
        Some("io.containerd.pulse.v2")
    );
    assert_eq!(
        cri["containerd"]["runtimes"]["pulse"]["pod_annotations"][0].as_str(),
        Some("io.kubernetes.cri.*")
    );
}

/// RunPodSandbox in a real CNI network namespace, PodSandboxStatus, ListPodSandbox,
/// PodSandboxStats, StopPodSandbox, RemovePodSandbox, and nothing left. With pulse, the pod's
/// CPU and memory (LinuxPodSandboxConfig.resources, which containerd passes on as the
/// io.kubernetes.cri.sandbox-* annotations) size the VM.
fn pod_sandbox_lifecycle(handler: &str) {
    let node = Node::start();
    let k = &node.kubelet;
    let version = node.ok("Version", k.version());
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
    for image in [PAUSE_IMAGE, APP_IMAGE] {
        assert!(
            node.ok("ImageStatus", k.image_status(image)).is_some(),
            "the CRI plugin does not see the imported image {image}"
        );
    }

    // 1.5 CPUs and 128 MiB for the pod's containers.
    let pod = node.run_pod(handler, "sandbox", Some(resources(1500, 128 << 20)));
    let info = node.ready_pod_status(&pod, handler);
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .unwrap_or_default()
        .to_string();
    // containerd names it under /var/run, a link to /run.
    assert!(
        netns
            .replacen("/var/run/", "/run/", 1)
            .starts_with(harness::NETNS_DIR)
            && Path::new(&netns).exists(),
        "the pod's network namespace {netns:?} (from the verbose status: {info})"
    );
    // The address is really on eth0 in the pod's namespace (CNI's bridge and host-local ran).
    let status = node.ok("PodSandboxStatus", k.pod_status(&pod.id));
    let ip = status.status.unwrap().network.unwrap().ip;
    let addrs = node.env.in_netns(&[
        "nsenter",
        &format!("--net={netns}"),
        "ip",
        "-o",
        "-4",
        "addr",
    ]);
    assert!(
        common::text(&addrs.stdout)
            .lines()
            .any(|l| l.contains(" eth0 ") && l.contains(&format!(" inet {ip}/24 "))),
        "{ip} is not on the pod's eth0: {}{}",
        common::text(&addrs.stdout),
        common::text(&addrs.stderr)
    );
    // The CNI bridge and the pod's veth are in containerd's network namespace, not the host's.
    let bridge = node.env.bridge();
    let links = node.env.links();
    assert!(
        links.contains(&bridge),
        "no bridge {bridge} beside containerd: {links:?}"
    );
    assert!(
        links.iter().any(|l| l.starts_with("veth")),
        "no veth: {links:?}"
    );
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "the CNI bridge {bridge} is on the host's network"
    );
    assert_eq!(
        info["runtimeType"].as_str(),
        Some(if handler == "pulse" {
            "io.containerd.pulse.v2"
        } else {
            "io.containerd.runc.v2"
        }),
        "{info}"
    );
    let listed = node.ok("ListPodSandbox", k.list_pods());
    assert!(
        listed.iter().any(|p| p.id == pod.id
            && p.state == PodSandboxState::SandboxReady as i32
            && p.runtime_handler == handler),
        "{listed:?}"
    );

    // The leak check finds the pod's shim by its socket (so it can see one left behind).
    assert_eq!(
        node.env.shim_sockets_left().len(),
        1,
        "one shim socket for the pod"
    );

    let stats = node.ok("PodSandboxStats", k.pod_stats(&pod.id));
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(pod.id.as_str())
    );
    let linux = stats.linux.as_ref().expect("Linux pod stats");
    assert!(linux.cpu.is_some() && linux.memory.is_some(), "{stats:?}");

    if handler == "pulse" {
        assert_eq!(node.env.pulse_shims().len(), 1, "one shim for the pod");
        if !common::embedded() {
            let vms = node.env.vm_processes();
            assert_eq!(vms.len(), 1, "one VM for the pod: {vms:?}");
            // The configured 1 vCPU and 256 MiB plus the pod's 1.5 CPUs (2 vCPUs, at most
            // the host's CPUs) and 128 MiB.
            let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let vcpus = 3.min(host_cpus.max(1));
            let cmd = &vms[0].1;
            assert!(
                cmd.contains(&format!(" -smp {vcpus} ")) && cmd.contains(" -m 384M "),
                "the VM is not sized for the pod ({vcpus} vCPUs, 384 MiB): {cmd}"
            );
        }
    } else {
        assert!(node.env.pulse_shims().is_empty());
    }
    node.remove_pod(&pod);
}

on_handlers! {
    pod_sandbox_lifecycle:
    runc_pod_sandbox_lifecycle_and_cleanup("runc"),
    pulse_pod_sandbox_lifecycle_and_cleanup("pulse"),
}

/// Two app containers in one pod, kubelet's way: CreateContainer (image, command, log path,
/// a host mount, environment, resources), StartContainer, ContainerStatus, ListContainers,
/// ExecSync, Exec and Attach through the streaming server, the CRI log format,
/// ReopenContainerLog, ContainerStats and PodSandboxStats, UpdateContainerResources,
/// StopContainer, RemoveContainer, then the pod goes and nothing is left. With pulse both
/// containers run in the pod's one VM, served by one shim.
fn two_containers_in_one_pod(handler: &str) {
    let node = Node::start();
    let k = &node.kubelet;
    let pod = node.run_pod(handler, "apps", None);
    node.ready_pod_status(&pod, handler);

    // What kubelet mounts from the host (an emptyDir, a projected file).
    let host_dir = node.env.dir.path().join("volume");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello"), "hello-from-host\n").unwrap();
    let ticker = container_config(&ContainerSpec {
        name: "ticker",
        image: APP_IMAGE,
        command: &[
            "sh",
            "-c",
            "echo started $GREETING; cat /data/hello; echo to-stderr >&2; \
             i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done",
        ],
        log_path: "ticker/0.log".into(),
        mounts: vec![(host_dir.display().to_string(), "/data".into(), true)],
        envs: &[("GREETING", "hi-from-cri")],
        resources: Some(resources(500, 64 << 20)),
        stdin: false,
    });
    let echo = container_config(&ContainerSpec {
        name: "echo",
        image: APP_IMAGE,
        command: &[
            "sh",
            "-c",
            "echo ready; while read line; do echo got:$line; done",
        ],
        log_path: "echo/0.log".into(),
        mounts: Vec::new(),
        envs: &[],
        resources: None,
        stdin: true,
    });
    let ticker_id = node.ok(
        &format!("CreateContainer ticker ({handler})"),
        k.create_container(&pod.id, &ticker, &pod.config),
    );
    let echo_id = node.ok(
        &format!("CreateContainer echo ({handler})"),
        k.create_container(&pod.id, &echo, &pod.config),
    );
    for id in [&ticker_id, &echo_id] {
        node.ok("StartContainer", k.start_container(id));
    }

    // ContainerStatus, ListContainers.
    let status = node.ok("ContainerStatus", k.container_status(&ticker_id));
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    assert!(status.started_at > 0);
    assert_eq!(
        Path::new(&status.log_path),
        pod.log_dir.join("ticker/0.log")
    );
    assert!(
        status.mounts.iter().any(|m| m.container_path == "/data"),
        "{:?}",
        status.mounts
    );
    let listed = node.ok("ListContainers", k.list_containers(&pod.id));
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .all(|c| c.state == ContainerState::ContainerRunning as i32));

    // The log, in CRI's format: `<rfc3339nano> <stream> F <line>`.
    let ticker_log = pod.log_dir.join("ticker/0.log");
    let lines = node.wait_log_line(&ticker_log, "tick 2");
    for expected in [
        ("stdout", "started hi-from-cri"),
        ("stdout", "hello-from-host"),
        ("stderr", "to-stderr"),
    ] {
        assert!(
            lines
                .iter()
                .any(|(s, t, text)| s == expected.0 && t == "F" && text == expected.1),
            "{} lacks {expected:?}: {lines:?}",
            ticker_log.display()
        );
    }

    // ExecSync: output, exit code, the pod's hostname and network, the limits.
    let r = node.ok(
        "ExecSync",
        k.exec_sync(
            &ticker_id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            30,
        ),
    );
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );
    let r = node.ok(
        "ExecSync hostname",
        k.exec_sync(&ticker_id, &["hostname"], 30),
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "apps");
    let net_ns = |id: &str| {
        let r = node.ok(
            "ExecSync readlink",
            k.exec_sync(id, &["readlink", "/proc/self/ns/net"], 30),
        );
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    };
    let ns = net_ns(&ticker_id);
    assert!(ns.starts_with("net:["), "{ns:?}");
    assert_eq!(
        ns,
        net_ns(&echo_id),
        "the pod's containers share one network"
    );
    // The container's memory limit, CFS quota and period: cgroup v2 (the guest; a v2 host)
    // or v1 (runc on a v1 host), with or without a cgroup namespace.
    let limits = |id: &str| {
        let script = "c=$(grep '^0::' /proc/self/cgroup | cut -d: -f3); d=/sys/fs/cgroup$c; \
             if [ -f $d/memory.max ]; then echo $(cat $d/memory.max) $(cat $d/cpu.max); \
             else echo $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) \
               $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi";
        let r = node.ok(
            "ExecSync limits",
            k.exec_sync(id, &["sh", "-c", script], 30),
        );
        assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    };
    assert_eq!(limits(&ticker_id), format!("{} 50000 100000", 64u64 << 20));

    // Exec through the streaming server: stdin, stdout, stderr and the exit code.
    let url = node.ok(
        "Exec",
        k.exec(k8s_cri::v1::ExecRequest {
            container_id: ticker_id.clone(),
            cmd: [
                "sh",
                "-c",
                "read l; echo exec-got:$l; echo exec-err >&2; exit 5",
            ]
            .map(String::from)
            .to_vec(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        }),
    );
    let mut session = stream::Session::open(node.env.netns(), &url)
        .unwrap_or_else(|e| panic!("exec stream: {e:#}"));
    session.send_stdin(b"ping\n").unwrap();
    session
        .wait_end(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("exec stream: {e:#}"));
    let got = &session.received;
    assert_eq!(got.stdout(), "exec-got:ping\n", "{got:?}");
    assert_eq!(got.stderr(), "exec-err\n", "{got:?}");
    assert_eq!(got.exit_code(), Some(5), "{got:?}");

    // Attach to the running echo container: its stdin in, its stdout out.
    let url = node.ok(
        "Attach",
        k.attach(k8s_cri::v1::AttachRequest {
            container_id: echo_id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        }),
    );
    let mut session = stream::Session::open(node.env.netns(), &url)
        .unwrap_or_else(|e| panic!("attach stream: {e:#}"));
    session.send_stdin(b"hello\n").unwrap();
    session
        .read_until(Duration::from_secs(60), |r| {
            r.stdout().contains("got:hello\n")
        })
        .unwrap_or_else(|e| panic!("attach stream: {e:#}"));
    session.close();
    node.wait_log_line(&pod.log_dir.join("echo/0.log"), "got:hello");

    // ReopenContainerLog: kubelet renames the file, then asks for a new one.
    let rotated = pod.log_dir.join("ticker/0.log.20261204-000000");
    std::fs::rename(&ticker_log, &rotated).unwrap();
    node.ok("ReopenContainerLog", k.reopen_log(&ticker_id));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node
        .cri_log(&ticker_log)
        .iter()
        .any(|(_, _, t)| t.starts_with("tick "))
    {
        assert!(
            Instant::now() < deadline,
            "no new lines in the reopened {}",
            ticker_log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // ContainerStats and PodSandboxStats.
    let stats = node.ok("ContainerStats", k.container_stats(&ticker_id));
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(ticker_id.as_str())
    );
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref());
    assert!(cpu.is_some_and(|v| v.value > 0), "{stats:?}");
    let mem = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref());
    assert!(mem.is_some_and(|v| v.value > 0), "{stats:?}");
    let pod_stats = node.ok("PodSandboxStats", k.pod_stats(&pod.id));
    let containers = pod_stats
        .linux
        .as_ref()
        .map(|l| {
            l.containers
                .iter()
                .map(|c| c.attributes.clone().unwrap_or_default().id)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for id in [&ticker_id, &echo_id] {
        assert!(
            containers.contains(id),
            "PodSandboxStats lacks {id}: {pod_stats:?}"
        );
    }

    // UpdateContainerResources reaches the container's cgroup.
    node.ok(
        "UpdateContainerResources",
        k.update_resources(&ticker_id, resources(250, 96 << 20)),
    );
    assert_eq!(limits(&ticker_id), format!("{} 25000 100000", 96u64 << 20));

    if handler == "pulse" {
        assert_eq!(
            node.env.pulse_shims().len(),
            1,
            "one shim for the pod's three containers"
        );
        if !common::embedded() {
            assert_eq!(node.env.vm_processes().len(), 1, "one VM for the pod");
        }
    }

    // StopContainer (the shell ignores SIGTERM as its PID 1: killed after the timeout),
    // RemoveContainer.
    node.ok("StopContainer", k.stop_container(&ticker_id, 2));
    let status = node.ok("ContainerStatus", k.container_status(&ticker_id));
    assert_eq!(
        status.state,
        ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    assert!(status.finished_at > 0);
    assert_eq!(status.exit_code, 137, "{status:?}");
    node.ok("RemoveContainer", k.remove_container(&ticker_id));
    let gone = k.container_status(&ticker_id).unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    let listed = node.ok("ListContainers", k.list_containers(&pod.id));
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [echo_id.as_str()]
    );

    // The pod goes with the echo container still running, as kubelet removes a pod.
    node.remove_pod(&pod);
}

on_handlers! {
    two_containers_in_one_pod:
    runc_two_containers_in_one_pod_exec_attach_logs_stats_update_and_cleanup("runc"),
    pulse_two_containers_in_one_pod_exec_attach_logs_stats_update_and_cleanup("pulse"),
}

/// The host side of what containerd's CRI plugin gives every app container of a pod that has
/// no mount of its own there: `<root>/io.containerd.grpc.v1.cri/sandboxes/<pod>/<file>`.
fn cri_sandbox_file(node: &Node, pod: &Pod, file: &str) -> String {
    let path = node
        .env
        .dir
        .path()
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod.id)
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("containerd's {file} for the pod, {}: {e}", path.display()))
}

/// What a write into a read-only mount must fail with, as busybox's shell reports it.
const EROFS_TEXT: &str = "Read-only file system";

/// Each kind of mount kubelet sends, with host sources made as kubelet makes them, in one pod
/// of three containers:
/// - `app`: containerd's own `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` (the pod's,
///   from its sandbox); a ConfigMap (read-only) updated on the host while it runs; a Secret on a
///   host tmpfs (read-only); a read-only hostPath; an emptyDir it writes to;
/// - `sidecar`: kubelet's managed `/etc/hosts` as a mount of its own; the same emptyDir, read
///   and written from the other side;
/// - `job`: writes its `/dev/termination-log` and exits; the host reads the file afterwards.
///
/// Read-only mounts fail writes with EROFS and nothing reaches the host; the host sources are
/// intact after the pod is gone.
fn kubelet_mounts(handler: &str) {
    let node = Node::start();
    let pod = node.run_pod(handler, "volumes", None);
    node.ready_pod_status(&pod, handler);
    let status = node.ok("PodSandboxStatus", node.kubelet.pod_status(&pod.id));
    let pod_ip = status.status.unwrap().network.unwrap().ip;
    let uid = pod.config.metadata.as_ref().unwrap().uid.clone();

    // The host sources, kubelet's way.
    let kdir = volumes::PodDir::create(&node.env.dir.path().join("kubelet"), &uid).unwrap();
    let config = kdir.volume("configmap", "config").unwrap();
    let first = volumes::atomic_write(&config, &[("greeting", "hello v1\n")]).unwrap();
    let secret = kdir.secret_volume("token").unwrap();
    volumes::atomic_write(&secret, &[("token", "s3cr3t\n")]).unwrap();
    let shared = kdir.volume("empty-dir", "shared").unwrap();
    let host_ro = node.env.dir.path().join("host/srv-data");
    std::fs::create_dir_all(&host_ro).unwrap();
    std::fs::write(host_ro.join("motd"), "from the host\n").unwrap();
    let (etc_hosts, etc_hosts_text) = kdir.etc_hosts(&pod_ip, "volumes").unwrap();
    let termination_log = kdir.termination_log("job").unwrap();

    let forever = "while true; do sleep 1; done";
    let app = node.start_container(
        &pod,
        &app_container(
            "app",
            &[
                "sh",
                "-c",
                &format!("echo app-was-here > /shared/from-app; {forever}"),
            ],
            &[
                (&config, "/etc/config", true),
                (&secret, "/etc/secret", true),
                (&host_ro, "/srv/data", true),
                (&shared, "/shared", false),
            ],
        ),
        handler,
    );
    let sidecar = node.start_container(
        &pod,
        &app_container(
            "sidecar",
            &["sh", "-c", forever],
            &[
                (&shared, "/shared", false),
                (&etc_hosts, "/etc/hosts", false),
            ],
        ),
        handler,
    );

    // /etc/hosts, /etc/hostname, /etc/resolv.conf: containerd's files for the pod.
    let hostname = cri_sandbox_file(&node, &pod, "hostname");
    assert_eq!(hostname, "volumes\n", "containerd's hostname file");
    let resolv = cri_sandbox_file(&node, &pod, "resolv.conf");
    for line in [
        "nameserver 10.96.0.10",
        "search pulse-cri-test.svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(
            resolv.lines().any(|l| l == line),
            "containerd's resolv.conf lacks {line:?} of the pod's DNS config: {resolv:?}"
        );
    }
    let hosts = cri_sandbox_file(&node, &pod, "hosts");
    assert!(
        hosts.contains("localhost"),
        "containerd's hosts file: {hosts:?}"
    );
    for (file, host_text) in [
        ("/etc/hostname", &hostname),
        ("/etc/resolv.conf", &resolv),
        ("/etc/hosts", &hosts),
    ] {
        assert_eq!(
            &node.sh_ok(&app, &format!("cat {file}")),
            host_text,
            "{file} in the container is not containerd's file for the pod"
        );
    }
    assert_eq!(node.sh_ok(&app, "hostname"), "volumes\n");
    // kubelet's own /etc/hosts, a mount of the container's.
    assert_eq!(
        node.sh_ok(&sidecar, "cat /etc/hosts"),
        etc_hosts_text,
        "the sidecar's /etc/hosts is not kubelet's etc-hosts"
    );

    // The ConfigMap: its layout as kubelet wrote it, then an update on the host.
    assert_eq!(node.sh_ok(&app, "cat /etc/config/greeting"), "hello v1\n");
    assert_eq!(
        node.sh_ok(
            &app,
            "readlink /etc/config/..data; readlink /etc/config/greeting"
        ),
        format!("{first}\n..data/greeting\n")
    );
    let second = volumes::atomic_write(
        &config,
        &[("greeting", "hello v2\n"), ("added", "a new key\n")],
    )
    .unwrap();
    let took = node.wait_sh(
        &app,
        "cat /etc/config/greeting /etc/config/added",
        "hello v2\na new key\n",
        "the ConfigMap's update",
        "ls -la /etc/config/ /etc/config/..data/",
    );
    eprintln!("the ConfigMap's update was seen after {took:?} ({handler})");
    assert_eq!(
        node.sh_ok(&app, "readlink /etc/config/..data"),
        format!("{second}\n")
    );
    assert_eq!(
        node.sh(&app, &format!("ls /etc/config/{first}")).0,
        1,
        "the old payload directory {first} is still visible"
    );

    // The Secret and the hostPath: readable; no mount of the three takes a write.
    assert_eq!(node.sh_ok(&app, "cat /etc/secret/token"), "s3cr3t\n");
    assert_eq!(node.sh_ok(&app, "cat /srv/data/motd"), "from the host\n");
    for (dir, host, existing) in [
        ("/etc/config", &config, "..data"),
        ("/etc/secret", &secret, "..data"),
        ("/srv/data", &host_ro, "motd"),
    ] {
        for script in [
            format!("echo x > {dir}/written"),
            format!("mkdir {dir}/made"),
            format!("rm -f {dir}/{existing}"),
        ] {
            let (code, out, err) = node.sh(&app, &script);
            assert!(
                code != 0 && err.contains(EROFS_TEXT),
                "{script:?} in the read-only mount {dir}: exit {code}, {out}{err}"
            );
        }
        for name in ["written", "made"] {
            assert!(
                !host.join(name).exists(),
                "a write into the read-only {dir} reached the host"
            );
        }
        assert!(
            host.join(existing).exists(),
            "{existing} went from the read-only {dir}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(secret.join("token")).unwrap(),
        "s3cr3t\n"
    );

    // The emptyDir: each container reads what the other wrote, and so does the host.
    node.wait_sh(
        &sidecar,
        "cat /shared/from-app",
        "app-was-here\n",
        "the app's file in the emptyDir, seen by the sidecar",
        "ls -la /shared",
    );
    node.sh_ok(&sidecar, "echo sidecar-was-here > /shared/from-sidecar");
    node.wait_sh(
        &app,
        "cat /shared/from-sidecar",
        "sidecar-was-here\n",
        "the sidecar's file in the emptyDir, seen by the app",
        "ls -la /shared",
    );
    for (file, text) in [
        ("from-app", "app-was-here\n"),
        ("from-sidecar", "sidecar-was-here\n"),
    ] {
        assert_eq!(
            std::fs::read_to_string(shared.join(file)).ok().as_deref(),
            Some(text),
            "the emptyDir's {file} on the host"
        );
    }

    // /dev/termination-log: written by the job before it exits, read on the host after.
    let job = node.start_container(
        &pod,
        &app_container(
            "job",
            &[
                "sh",
                "-c",
                "echo \"job done on $(hostname)\" > /dev/termination-log; exit 3",
            ],
            &[(&termination_log, "/dev/termination-log", false)],
        ),
        handler,
    );
    let status = node.wait_exited(&job);
    assert_eq!(status.exit_code, 3, "{status:?}");
    assert_eq!(
        std::fs::read_to_string(&termination_log).unwrap(),
        "job done on volumes\n",
        "the job's termination message on the host ({})",
        termination_log.display()
    );
    node.ok("RemoveContainer job", node.kubelet.remove_container(&job));

    if handler == "pulse" {
        assert_eq!(node.env.pulse_shims().len(), 1, "one shim for the pod");
        if !common::embedded() {
            assert_eq!(node.env.vm_processes().len(), 1, "one VM for the pod");
        }
    }

    // The pod goes; then kubelet takes its volumes down. The host sources are intact.
    node.stop_and_remove_pod(&pod);
    volumes::unmount(&secret).unwrap();
    assert_eq!(
        std::fs::read_to_string(config.join("greeting")).unwrap(),
        "hello v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(host_ro.join("motd")).unwrap(),
        "from the host\n"
    );
    assert!(shared.join("from-app").exists() && shared.join("from-sidecar").exists());
    assert!(etc_hosts.exists());
    node.env.assert_no_leaks();
}

on_handlers! {
    kubelet_mounts:
    runc_kubelet_mounts_etc_files_configmap_update_secret_emptydir_hostpath_termination_log("runc"),
    pulse_kubelet_mounts_etc_files_configmap_update_secret_emptydir_hostpath_termination_log("pulse"),
}

/// Mounts whose host source is neither a directory nor a regular file: a unix socket (with a
/// directory mount before it in the same container) and a device node (hostPath volumes of
/// type Socket and CharDevice). runc binds them. Pulse cannot carry them into the VM: the
/// container does not start, the error names the mount, the host path and why, and nothing of
/// it is left (no task, no bundle, no bind in the pod's share); the pod and its VM go on and
/// take the next container. containerd 1.6's CRI CreateContainer only records the container:
/// the runtime (the shim's task Create) is first called by StartContainer, so that is the call
/// that fails.
fn host_sockets_and_device_nodes(handler: &str) {
    let node = Node::start();
    let pod = node.run_pod(handler, "refused", None);
    node.ready_pod_status(&pod, handler);
    let host = node.env.dir.path().join("host");
    std::fs::create_dir_all(host.join("data")).unwrap();
    std::fs::write(host.join("data/file"), "data\n").unwrap();
    let socket = host.join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let device = Path::new("/dev/null");
    let forever = ["sh", "-c", "while true; do sleep 1; done"];
    let cases = [
        (
            app_container(
                "socket",
                &forever,
                &[
                    (&host.join("data"), "/data", true),
                    (&socket, "/run/agent.sock", false),
                ],
            ),
            "/run/agent.sock",
            socket.clone(),
            "it is a socket",
            "test -S /run/agent.sock && cat /data/file",
        ),
        (
            app_container("device", &forever, &[(device, "/dev/host-null", false)]),
            "/dev/host-null",
            device.to_path_buf(),
            "it is a character device",
            "test -c /dev/host-null && echo data",
        ),
    ];
    for (config, destination, source, why, check) in &cases {
        let name = &config.metadata.as_ref().unwrap().name;
        if handler == "runc" {
            let id = node.start_container(&pod, config, handler);
            assert_eq!(node.sh_ok(&id, check), "data\n", "{name} under runc");
            continue;
        }
        let id = node.ok(
            &format!("CreateContainer {name}: containerd 1.6 does not call the runtime yet"),
            node.kubelet.create_container(&pod.id, config, &pod.config),
        );
        let err = node
            .kubelet
            .start_container(&id)
            .expect_err("StartContainer of a container Pulse cannot give its mount");
        eprintln!("StartContainer {name} ({handler}): {}", err.message());
        let expected = format!(
            "mount {destination}: the host path {} cannot reach the VM: {why}",
            source.display()
        );
        assert!(
            err.message().contains(&expected),
            "StartContainer {name}: {:?} does not say {expected:?}",
            err.message()
        );
        let status = node.ok("ContainerStatus", node.kubelet.container_status(&id));
        assert_eq!(
            (status.state, status.reason.as_str()),
            (ContainerState::ContainerExited as i32, "StartError"),
            "{status:?}"
        );
        assert!(status.message.contains(&expected), "{status:?}");
        // Nothing of it is left: no task, no bundle, no bind in the share, no mount.
        let tasks = node.env.ctr(&["tasks", "ls", "-q"]);
        assert!(
            !common::text(&tasks.stdout).lines().any(|t| t == id),
            "a task is left for {name}: {}",
            common::text(&tasks.stdout)
        );
        let bundle = node
            .env
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(harness::NS)
            .join(&id);
        assert!(!bundle.exists(), "{} is left", bundle.display());
        let share = node
            .env
            .pulse_state_dir()
            .join(harness::NS)
            .join(&pod.id)
            .join("mounts")
            .join(&id);
        assert!(!share.exists(), "{} is left", share.display());
        let mounts: Vec<String> = node
            .env
            .mounts()
            .into_iter()
            .filter(|m| m.contains(&id))
            .collect();
        assert!(mounts.is_empty(), "mounts left for {name}: {mounts:?}");
        node.ok("RemoveContainer", node.kubelet.remove_container(&id));
        assert_eq!(
            node.kubelet.container_status(&id).unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    if handler == "pulse" {
        // The pod goes on: its VM takes the next container, with a mount it can carry.
        let after = node.start_container(
            &pod,
            &app_container("after", &forever, &[(&host.join("data"), "/data", true)]),
            handler,
        );
        assert_eq!(node.sh_ok(&after, "cat /data/file"), "data\n");
        assert_eq!(node.env.pulse_shims().len(), 1, "one shim for the pod");
        if !common::embedded() {
            assert_eq!(node.env.vm_processes().len(), 1, "one VM for the pod");
        }
    }
    node.remove_pod(&pod);
}

on_handlers! {
    host_sockets_and_device_nodes:
    runc_host_sockets_and_device_nodes_as_mounts("runc"),
    pulse_host_sockets_and_device_nodes_as_mounts_fail_by_name_and_leave_nothing("pulse"),
}

#[test]
fn pulse_pod_on_the_bridge_network_reaches_the_host_side_and_is_reached_at_its_ip() {
    require_cri!("pulse");
    network::pulse_pod_on_the_bridge_network();
}

#[test]
fn pulse_pods_and_a_runc_pod_on_one_bridge_reach_each_other() {
    require_cri!("pulse");
    network::pulse_and_runc_pods_reach_each_other();
}

#[test]
fn pulse_host_network_pod_is_refused_by_name_and_leaves_nothing() {
    require_cri!("pulse");
    network::pulse_host_network_pod_is_refused();
}

#[test]
fn pulse_pod_network_after_kill_9_of_the_shim_leaves_nothing() {
    require_cri!("pulse");
    network::pulse_pod_network_after_kill_9_of_the_shim();
}
