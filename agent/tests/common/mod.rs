//! Test harness: a pulse-agent on a unix socket with its own state
//! directory and cgroup parent, a busybox rootfs, and cleanup of
//! everything (processes, cgroups, mounts, files) even when a test fails.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, User, UserBuilder};
use pulse_protocols::containers::*;
use pulse_protocols::containers_ttrpc::ContainersClient;
use pulse_protocols::health_ttrpc::HealthClient;
use pulse_protocols::sandbox::{GuestDetails, GuestDetailsRequest};
use pulse_protocols::sandbox_ttrpc::SandboxClient;
use ttrpc::context;
use ttrpc::r#async::Client;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The rootfs of a spec whose storages mount it: the bundle's `rootfs`, relative.
pub const STORAGE_ROOTFS: &str = "rootfs";

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

pub fn ctx() -> context::Context {
    context::with_timeout(i64::try_from(Duration::from_secs(60).as_nanos()).unwrap())
}

pub struct TestAgent {
    pub containers: ContainersClient,
    pub sandbox: SandboxClient,
    pub health: HealthClient,
    pub process: AgentProcess,
}

/// The agent process and its files; cleans up when dropped.
pub struct AgentProcess {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    pub child: Option<Child>,
}

pub fn agent_binary() -> PathBuf {
    std::env::var_os("PULSE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pulse-agent")))
}

/// A unique name for this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

impl TestAgent {
    /// Starts the agent this package built, or the binary named by
    /// PULSE_AGENT_BIN (for example the static musl build).
    pub async fn start() -> TestAgent {
        let command = Command::new(agent_binary());
        Self::start_with(command, &[]).await
    }

    /// Starts `command` (the agent, possibly wrapped) with the test's flags.
    pub async fn start_with(mut command: Command, extra: &[&str]) -> TestAgent {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the container tests run as root"
        );
        let dir = tempfile::Builder::new()
            .prefix("pulse-agent-test")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let cgroup_parent = format!("/{}", unique("pulse-test"));
        let child = command
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .args(extra)
            .env("PULSE_AGENT_LOG", "warn,libcgroups=error")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting pulse-agent");
        let mut process = AgentProcess {
            dir,
            socket,
            cgroup_parent,
            child: Some(child),
        };
        let client = process.connect().await;
        TestAgent {
            containers: ContainersClient::new(client.clone()),
            sandbox: SandboxClient::new(client.clone()),
            health: HealthClient::new(client),
            process,
        }
    }

    pub async fn guest_details(&self) -> GuestDetails {
        self.sandbox
            .get_guest_details(ctx(), &GuestDetailsRequest::default())
            .await
            .expect("guest details")
    }

    pub fn dir(&self) -> &Path {
        self.process.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.process.child.as_ref().unwrap().id()
    }

    /// Waits for the agent process to end by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.process.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.process.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A busybox rootfs in the test's directory.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir().join(name);
        make_busybox_rootfs(&root);
        root
    }

    /// A spec running `args` in `rootfs`, with default namespaces and mounts.
    pub fn spec(&self, rootfs: &Path, args: &[&str]) -> Spec {
        let mut spec = Spec::default();
        spec.set_root(Some(
            RootBuilder::default()
                .path(rootfs)
                .readonly(false)
                .build()
                .unwrap(),
        ));
        let process = ProcessBuilder::default()
            .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            .env(vec![
                "PATH=/bin:/sbin:/usr/bin".to_string(),
                "TERM=xterm".to_string(),
            ])
            .cwd("/")
            .user(user(0, 0))
            .terminal(false)
            .build()
            .unwrap();
        let mut process = process;
        if let Some(default) = Spec::default().process() {
            process.set_capabilities(default.capabilities().clone());
            process.set_rlimits(default.rlimits().clone());
        }
        spec.set_process(Some(process));
        // No network namespace: nothing in these tests needs one.
        if let Some(linux) = spec.linux_mut() {
            let namespaces = linux.namespaces().clone().map(|ns| {
                ns.into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect()
            });
            linux.set_namespaces(namespaces);
        }
        spec
    }

    /// [`Self::spec`] as JSON, for the fields oci-spec has no setter for.
    pub fn spec_json(&self, rootfs: &Path, args: &[&str]) -> serde_json::Value {
        serde_json::to_value(self.spec(rootfs, args)).unwrap()
    }

    pub async fn create(&self, id: &str, spec: &impl serde::Serialize) -> ttrpc::Result<u32> {
        self.create_on(id, spec, vec![]).await
    }

    /// Creates a container whose rootfs and mounts are `storages`.
    pub async fn create_on(
        &self,
        id: &str,
        spec: &impl serde::Serialize,
        storages: Vec<Storage>,
    ) -> ttrpc::Result<u32> {
        self.create_with(id, serde_json::to_vec(spec).unwrap(), storages)
            .await
    }

    pub async fn create_with(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        storages: Vec<Storage>,
    ) -> ttrpc::Result<u32> {
        let req = CreateContainerRequest {
            container_id: id.to_string(),
            oci_spec_json: spec_json,
            storages,
            ..Default::default()
        };
        self.containers
            .create_container(ctx(), &req)
            .await
            .map(|r| r.pid)
    }

    pub async fn start_container(&self, id: &str) -> ttrpc::Result<u32> {
        let req = StartContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.containers
            .start_container(ctx(), &req)
            .await
            .map(|r| r.pid)
    }

    /// Creates and starts a container running `args`.
    pub async fn run(&self, id: &str, args: &[&str]) -> u32 {
        let rootfs = self.rootfs(&format!("rootfs-{id}"));
        let spec = self.spec(&rootfs, args);
        self.create_and_start(id, &spec).await
    }

    /// Creates and starts a container from `spec`; returns its pid.
    pub async fn create_and_start(&self, id: &str, spec: &impl serde::Serialize) -> u32 {
        self.create(id, spec).await.expect("create");
        self.start_container(id).await.expect("start")
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        terminal: bool,
    ) -> ttrpc::Result<u32> {
        let mut process = process_json(args);
        process["terminal"] = terminal.into();
        self.exec_process(id, exec_id, process).await
    }

    /// Execs the OCI process `process` (JSON) in container `id`.
    pub async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
    ) -> ttrpc::Result<u32> {
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            oci_process_json: serde_json::to_vec(&process).unwrap(),
            ..Default::default()
        };
        self.containers
            .exec_process(ctx(), &req)
            .await
            .map(|r| r.pid)
    }

    /// Reads a stream to its end.
    pub async fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> String {
        let mut out = Vec::new();
        loop {
            let req = read_request(id, exec_id);
            let resp = if stderr {
                self.containers.read_stderr(ctx(), &req).await
            } else {
                self.containers.read_stdout(ctx(), &req).await
            }
            .expect("read output");
            if resp.eof {
                break;
            }
            out.extend_from_slice(&resp.data);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads stdout until it contains `needle` (or ends).
    pub async fn read_until(&self, id: &str, exec_id: &str, needle: &str) -> String {
        let mut out = String::new();
        while !out.contains(needle) {
            let req = read_request(id, exec_id);
            let resp = self
                .containers
                .read_stdout(ctx(), &req)
                .await
                .expect("read");
            if resp.eof {
                break;
            }
            out.push_str(&String::from_utf8_lossy(&resp.data));
        }
        out
    }

    pub async fn wait_err(&self, id: &str) -> ttrpc::Error {
        self.wait_process(id, "")
            .await
            .expect_err("wait should fail")
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> WaitProcessResponse {
        self.wait_process(id, exec_id).await.expect("wait")
    }

    async fn wait_process(&self, id: &str, exec_id: &str) -> ttrpc::Result<WaitProcessResponse> {
        let req = WaitProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.containers.wait_process(ctx(), &req).await
    }

    /// The stdout of a process that must exit 0 (its output is in the failure's message).
    pub async fn output(&self, id: &str, exec_id: &str) -> String {
        let out = self.read_all(id, exec_id, false).await;
        assert_eq!(
            self.wait(id, exec_id).await.exit_status,
            0,
            "{id} {exec_id}: {out}"
        );
        out
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: i32) -> ttrpc::Result<()> {
        let req = SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal: u32::try_from(signal).expect("signal numbers are positive"),
            ..Default::default()
        };
        self.containers
            .signal_process(ctx(), &req)
            .await
            .map(|_| ())
    }

    pub async fn list(&self) -> ListContainersResponse {
        let req = ListContainersRequest::default();
        self.containers
            .list_containers(ctx(), &req)
            .await
            .expect("list")
    }

    /// Kills a running container, waits for it, and removes it (without force).
    pub async fn kill_and_remove(&self, id: &str) {
        self.signal(id, "", libc::SIGKILL).await.expect("kill");
        self.wait(id, "").await;
        self.remove(id, false).await.expect("remove");
    }

    pub async fn remove(&self, id: &str, force: bool) -> ttrpc::Result<()> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
            force,
            ..Default::default()
        };
        self.containers
            .remove_container(ctx(), &req)
            .await
            .map(|_| ())
    }

    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> ttrpc::Result<u32> {
        let req = WriteStdinRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        self.containers
            .write_stdin(ctx(), &req)
            .await
            .map(|r| r.written)
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> ttrpc::Result<()> {
        let req = CloseStdinRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.containers.close_stdin(ctx(), &req).await.map(|_| ())
    }
}

/// The container user `uid:gid`.
pub fn user(uid: u32, gid: u32) -> User {
    UserBuilder::default().uid(uid).gid(gid).build().unwrap()
}

/// An OCI process (JSON) running `args` as root in `/`.
pub fn process_json(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
    })
}

/// Adds `mount` (OCI JSON) to a spec's mounts.
pub fn add_mount(spec: &mut serde_json::Value, mount: serde_json::Value) {
    spec["mounts"].as_array_mut().unwrap().push(mount);
}

/// A seccomp profile that lets everything through but mkdir, refused with EPERM.
pub fn seccomp_refusing_mkdir() -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    })
}

fn read_request(id: &str, exec_id: &str) -> ReadOutputRequest {
    ReadOutputRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        max_bytes: 4096,
        ..Default::default()
    }
}

/// The ttrpc status code and message of an error.
pub fn status_of(err: ttrpc::Error) -> (ttrpc::Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected an rpc status, got {other:?}"),
    }
}

/// bin/busybox plus one symlink per applet, /etc/passwd and mount points.
pub fn make_busybox_rootfs(root: &Path) {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    for dir in ["proc", "sys", "dev", "tmp", "etc", "root", "home/user"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

impl AgentProcess {
    async fn connect(&mut self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pulse-agent exited early: {status}");
            }
            if self.socket.exists() {
                if let Ok(c) = Client::connect(&format!("unix://{}", self.socket.display())).await {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "pulse-agent did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the agent removes its containers, then exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        cleanup_cgroups(&self.cgroup_parent);
        unmount_below(self.dir.path());
    }
}

/// Kills whatever is left in the test's cgroups and removes them, in every
/// hierarchy (v1 controllers and the unified one).
pub fn cleanup_cgroups(parent: &str) {
    let rel = parent.trim_start_matches('/');
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        let dir = root.join(rel);
        if dir.join("cgroup.procs").exists() {
            remove_cgroup_tree(&dir);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().join("cgroup.procs").exists() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = fs::write(dir.join("freezer.state"), "THAWED");
        let _ = fs::write(dir.join("cgroup.freeze"), "0");
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts every mount at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}
