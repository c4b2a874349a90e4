//! A private containerd 1.6 (Debian's) with its CRI plugin on, for the CRI suite.
//!
//! - Its own root, state and socket under a temporary directory, started as a service manager
//!   starts it, in a network namespace of its own (`unshare --net`, loopback up): the CNI
//!   bridge, the pods' veths and the streaming server live there, never on the host.
//! - Its configuration is a base (private directories, CNI, the streaming server, the
//!   `sandbox_image`, a `runc` handler for reference) with `configs/containerd-pulse.toml`
//!   merged in, table by table, as the README tells users to merge it. Not `imports`: containerd
//!   1.6 replaces the whole CRI plugin section of the main file with an imported file's (its
//!   `mergeConfig` replaces map values), so an import of the snippet would lose every other CRI
//!   setting (see [`imports_replace_the_cri_section`]). The handler's `ConfigPath` then points
//!   at this environment's pulse.toml, as an operator points it at theirs.
//! - CNI: Debian's containernetworking-plugins (`/usr/lib/cni`), a bridge + host-local conflist
//!   in a private conf dir (IPAM state private too); containerd adds the loopback network.
//! - Images, imported with `ctr -n k8s.io images import`: the sandbox image built here from
//!   `pulse-pause` (guest/pause, static musl, packaged by scripts/pause-oci.sh), and the busybox
//!   image of the other suites (scripts/busybox-oci.sh).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, list_dir, processes, run_with_timeout, text};

/// The namespace containerd's CRI plugin keeps its containers and images in.
pub const NS: &str = "k8s.io";
/// The sandbox image (pulse-pause).
pub const PAUSE_IMAGE: &str = "docker.io/library/pulse-pause:latest";
/// The app image (busybox).
pub const APP_IMAGE: &str = common::IMAGE;
/// Where Debian's containernetworking-plugins are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pods' subnet on the private bridge.
pub const POD_SUBNET_PREFIX: &str = "10.88.77.";
/// containerd 1.6 mounts the pods' network namespaces here (not configurable in 1.6).
pub const NETNS_DIR: &str = "/run/netns";

/// Why the CRI suite cannot run here with `handler`, if it cannot.
pub fn skip_reason(handler: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for cmd in ["containerd", "ctr", "unshare", "ip", "nsenter", "runc"] {
        if !common::have(cmd) {
            return Some(format!("{cmd} is not installed (scripts/install-deps.sh)"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
            return Some(format!(
                "the CNI plugin {CNI_BIN_DIR}/{plugin} is missing (apt-get install containernetworking-plugins; scripts/install-deps.sh)"
            ));
        }
    }
    if handler == "pulse" {
        if let Some(why) = common::skip_reason() {
            return Some(why);
        }
    }
    None
}

/// The static `pulse-pause` for the sandbox image: `make guest`'s `build/guest/pulse-pause`
/// when it is there (the nested rig's read-only root cannot build), else built (or found
/// fresh) with cargo for `x86_64-unknown-linux-musl`, the way the guest agent is built.
pub fn pause_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let made = common::repo().join("build/guest/pulse-pause");
            if made.is_file() && std::env::var_os("PULSE_CRI_BUILD_PAUSE").is_none() {
                return made;
            }
            let repo = common::repo();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(&repo).args([
                "build",
                "--release",
                "--offline",
                "--target",
                "x86_64-unknown-linux-musl",
                "-p",
                "pulse-pause",
            ]);
            let out = run_with_timeout(&mut cmd, Duration::from_secs(600));
            assert!(
                out.status.success(),
                "building pulse-pause for x86_64-unknown-linux-musl (rustup target add x86_64-unknown-linux-musl): {}",
                text(&out.stderr)
            );
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join("target"))
                .join("x86_64-unknown-linux-musl/release/pulse-pause")
        })
        .clone()
}

/// Merges `from` into `into`: tables key by key, recursively; any other value replaces.
pub fn merge_toml(into: &mut toml::Table, from: &toml::Table) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_toml(a, b),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The table at `path` (created on the way).
pub fn table_at<'a>(root: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut t = root;
    for key in path {
        t = t
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{key} is not a table"));
    }
    t
}

/// The CRI plugin's section name.
pub const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";

pub struct CriEnv {
    pub dir: tempfile::TempDir,
    containerd: Option<Child>,
    netns: Option<File>,
    netns_before: Vec<String>,
    /// The pod cgroups (kubelet's part: it creates them before RunPodSandbox).
    pod_cgroups: std::sync::Mutex<Vec<PathBuf>>,
}

impl CriEnv {
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// Pulse's state directory: `/run/<this environment's name>`, 13 characters like
    /// `/run/pulse`'s 10, because CRI's pod ids are 64 characters and the sandbox's socket
    /// paths (`<state_dir>/k8s.io/<pod id>/vhost.sock`) must fit a unix socket's 96 usable
    /// bytes: a state_dir longer than 13 characters fails every CRI pod ("socket path ... is
    /// too long for a unix socket"). Removed with the environment.
    pub fn pulse_state_dir(&self) -> PathBuf {
        Path::new("/run").join(self.name())
    }

    pub fn pulse_config(&self) -> PathBuf {
        self.dir.path().join("pulse.toml")
    }

    /// Where kubelet would keep the pods' logs.
    pub fn pod_log_root(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    /// `shim.cgroup_parent` of the pulse config: this environment's own.
    pub fn pulse_cgroup_parent(&self) -> String {
        format!("pulse-cri-{}", self.name())
    }

    /// kubelet's cgroup parent for this environment's pods (cgroupfs driver).
    pub fn kube_cgroup_parent(&self) -> String {
        format!("/pulse-cri-kubepods-{}", self.name())
    }

    fn name(&self) -> String {
        self.dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string()
    }

    /// The private bridge's name (in containerd's network namespace).
    pub fn bridge(&self) -> String {
        let name = self.name();
        format!("pcri{}", &name[name.len().saturating_sub(6)..]).to_lowercase()
    }

    /// containerd's network namespace.
    pub fn netns(&self) -> &File {
        self.netns.as_ref().expect("containerd runs")
    }

    pub fn containerd_pid(&self) -> u32 {
        self.containerd.as_ref().expect("containerd runs").id()
    }

    /// The configuration: the base with configs/containerd-pulse.toml merged in.
    pub fn containerd_config(&self) -> String {
        let d = self.dir.path();
        let mut base = toml::Table::new();
        base.insert("version".into(), 2.into());
        base.insert("root".into(), d.join("root").display().to_string().into());
        base.insert("state".into(), d.join("state").display().to_string().into());
        if std::env::var_os("PULSE_CRI_DEBUG").is_some() {
            table_at(&mut base, &["debug"]).insert("level".into(), "debug".into());
        }
        table_at(&mut base, &["grpc"])
            .insert("address".into(), self.sock().display().to_string().into());
        {
            let cri = table_at(&mut base, &["plugins", CRI_PLUGIN]);
            cri.insert("sandbox_image".into(), PAUSE_IMAGE.into());
            cri.insert("stream_server_address".into(), "127.0.0.1".into());
            cri.insert("stream_server_port".into(), "0".into());
            cri.insert("enable_tls_streaming".into(), false.into());
            cri.insert("disable_apparmor".into(), true.into());
            cri.insert("enable_selinux".into(), false.into());
            // These machines' root lacks CAP_SYS_RESOURCE (it is a container of a microVM):
            // the sandbox's oom_score_adj -998 would fail runc's create ("failed to update
            // /proc/self/oom_score_adj: Permission denied"). containerd clamps it to its own.
            cri.insert("restrict_oom_score_adj".into(), true.into());
        }
        {
            let cni = table_at(&mut base, &["plugins", CRI_PLUGIN, "cni"]);
            cni.insert("bin_dir".into(), CNI_BIN_DIR.into());
            cni.insert(
                "conf_dir".into(),
                d.join("net.d").display().to_string().into(),
            );
            cni.insert("max_conf_num".into(), 1.into());
        }
        {
            let ctd = table_at(&mut base, &["plugins", CRI_PLUGIN, "containerd"]);
            ctd.insert("snapshotter".into(), "overlayfs".into());
            ctd.insert("default_runtime_name".into(), "runc".into());
        }
        table_at(
            &mut base,
            &["plugins", CRI_PLUGIN, "containerd", "runtimes", "runc"],
        )
        .insert("runtime_type".into(), "io.containerd.runc.v2".into());
        // What users merge, as they merge it.
        let user_path = common::repo().join("configs/containerd-pulse.toml");
        let user: toml::Table = std::fs::read_to_string(&user_path)
            .unwrap_or_else(|e| panic!("{}: {e}", user_path.display()))
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", user_path.display()));
        merge_toml(&mut base, &user);
        let pulse = table_at(
            &mut base,
            &["plugins", CRI_PLUGIN, "containerd", "runtimes", "pulse"],
        );
        assert_eq!(
            pulse.get("runtime_type").and_then(|v| v.as_str()),
            Some("io.containerd.pulse.v2"),
            "configs/containerd-pulse.toml names the runtime handler pulse"
        );
        table_at(pulse, &["options"]).insert(
            "ConfigPath".into(),
            self.pulse_config().display().to_string().into(),
        );
        toml::to_string(&base).expect("containerd config")
    }

    /// The CNI network: a bridge on containerd's side, host-local addresses.
    fn cni_conflist(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "pulse-cri-test",
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge(),
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.dir.path().join("ipam").display().to_string(),
                    "ranges": [[{"subnet": format!("{POD_SUBNET_PREFIX}0/24")}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            }]
        })
        .to_string()
    }

    /// pulse.toml for the pulse handler (the backend under test and the guest image); pods
    /// get the CNI network in their VM (`devices.net_queues`).
    fn write_pulse_config(&self) {
        let Some(image) = common::guest_image() else {
            return; // runc only: the pulse tests skip without an image
        };
        let devices = "[devices]\nnet_queues = 2";
        let shim = (self.pulse_state_dir(), self.pulse_cgroup_parent());
        let text = common::pulse_toml(image, devices, "connect_timeout_ms = 60000", shim);
        std::fs::write(self.pulse_config(), text).unwrap();
    }

    /// Starts containerd in a network namespace of its own and imports both images.
    pub fn start() -> CriEnv {
        let dir = tempfile::Builder::new()
            .prefix("pc")
            .tempdir_in("/tmp")
            .unwrap();
        let mut env = CriEnv {
            dir,
            containerd: None,
            netns: None,
            netns_before: list_dir(Path::new(NETNS_DIR)),
            pod_cgroups: std::sync::Mutex::new(Vec::new()),
        };
        let d = env.dir.path().to_path_buf();
        for sub in ["net.d", "pods", "ipam"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("net.d/10-pulse-cri.conflist"), env.cni_conflist()).unwrap();
        env.write_pulse_config();
        std::fs::write(d.join("containerd.toml"), env.containerd_config()).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
            "containerd",
        ]);
        common::containerd_for_the_shim(&mut cmd, &d, &env.pulse_config()).stdin(Stdio::null());
        env.containerd = Some(cmd.spawn().expect("unshare --net containerd"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !env.sock().exists() || !env.log().contains("containerd successfully booted") {
            if let Some(status) = env.containerd.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({status}): {}", env.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                env.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        env.netns = Some(
            File::open(format!("/proc/{}/ns/net", env.containerd_pid()))
                .expect("containerd's network namespace"),
        );
        let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        let its_ns = std::fs::read_link(format!("/proc/{}/ns/net", env.containerd_pid())).unwrap();
        assert_ne!(
            host_ns, its_ns,
            "containerd must run in its own network namespace"
        );

        // The images, into the CRI plugin's namespace.
        let pause_tar = d.join("pause.tar");
        let status = Command::new(common::repo().join("scripts/pause-oci.sh"))
            .arg(&pause_tar)
            .arg(pause_binary())
            .arg(PAUSE_IMAGE)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/pause-oci.sh failed");
        let busybox_tar = d.join("busybox.tar");
        let status = Command::new(common::repo().join("scripts/busybox-oci.sh"))
            .arg(&busybox_tar)
            .arg(APP_IMAGE)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/busybox-oci.sh failed");
        for tar in [&pause_tar, &busybox_tar] {
            let out = env.ctr(&["images", "import", tar.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "ctr -n k8s.io images import {}: {}",
                tar.display(),
                text(&out.stderr)
            );
        }
        env
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The end of containerd's log, for failure messages.
    /// What a failed CRI call `what` answered, with the end of containerd's log.
    pub fn failed_call(&self, what: &str, e: &tonic::Status) -> String {
        format!(
            "{what}: {:?}: {}\n--- containerd log (end) ---\n{}",
            e.code(),
            e.message(),
            self.log_tail()
        )
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.sock())
            .args(["--namespace", NS])
            .args(args)
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, Duration::from_secs(120))
    }

    /// A command run in containerd's network namespace.
    pub fn in_netns(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{}/ns/net", self.containerd_pid()))
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// Network interfaces in containerd's network namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.in_netns(&["ip", "-o", "link", "show"]);
        assert!(out.status.success(), "ip link: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Creates the pod's cgroup as kubelet does before RunPodSandbox (cgroupfs driver, in every
    /// hierarchy: cgroup v1 has one per controller); returns the cgroup_parent to put in the
    /// pod's config. Removed again by [`CriEnv::remove_pod_cgroups`].
    pub fn create_pod_cgroup(&self, pod: &str) -> String {
        let parent = format!("{}/pod{pod}", self.kube_cgroup_parent());
        for root in cgroup_roots() {
            let path = root.join(parent.trim_start_matches('/'));
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("creating the pod cgroup {}: {e}", path.display()));
            self.pod_cgroups.lock().unwrap().push(path);
        }
        parent
    }

    /// Removes the pod cgroups (kubelet's part, after RemovePodSandbox); fails on one that
    /// still holds something.
    pub fn remove_pod_cgroups(&self) {
        let mut cgroups = self.pod_cgroups.lock().unwrap();
        for path in cgroups.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::fs::remove_dir(&path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "the pod cgroup {} cannot be removed (something is left in it): {e}: {:?}",
                            path.display(),
                            list_dir(&path)
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        for root in cgroup_roots() {
            let _ =
                std::fs::remove_dir(root.join(self.kube_cgroup_parent().trim_start_matches('/')));
        }
    }

    /// Processes started for this environment's pods: shims (runc's and Pulse's), QEMU,
    /// vhost-device-vsock; containerd itself is not one.
    pub fn pod_processes(&self) -> Vec<(u32, String)> {
        let needle = self.dir.path().to_string_lossy().to_string();
        let pulse = self.pulse_state_dir().to_string_lossy().to_string();
        let containerd = self.containerd.as_ref().map(Child::id);
        processes()
            .into_iter()
            .filter(|(pid, cmd)| {
                Some(*pid) != containerd && (cmd.contains(&needle) || cmd.contains(&pulse))
            })
            .filter(|(_, cmd)| !cmd.starts_with("ctr ") && !cmd.starts_with("nsenter "))
            .collect()
    }

    /// Pulse's shims of this environment.
    pub fn pulse_shims(&self) -> Vec<u32> {
        self.pod_processes()
            .into_iter()
            .filter(|(_, cmd)| common::is_shim(cmd))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The VM processes of this environment (QEMU; the embedded backend has none).
    pub fn vm_processes(&self) -> Vec<(u32, String)> {
        self.pod_processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .collect()
    }

    /// Mounts below this environment's directory, and pod network namespaces that were not
    /// there when it started.
    pub fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().to_string_lossy().to_string();
        let pulse = format!("{}/", self.pulse_state_dir().display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| {
                m.starts_with(&prefix)
                    || m.starts_with(&pulse)
                    || (m.starts_with(NETNS_DIR)
                        && !self
                            .netns_before
                            .iter()
                            .any(|n| *m == format!("{NETNS_DIR}/{n}")))
            })
            .collect()
    }

    /// Pod network namespaces (files in /run/netns) that appeared since the start.
    pub fn new_netns(&self) -> Vec<String> {
        list_dir(Path::new(NETNS_DIR))
            .into_iter()
            .filter(|n| !self.netns_before.contains(n))
            .collect()
    }

    /// State left for containers or sandboxes: containerd's bundles and the CRI plugin's
    /// directories in the k8s.io namespace, Pulse's sandbox directories, Pulse's pod cgroups.
    pub fn state_left(&self) -> Vec<String> {
        let d = self.dir.path();
        let mut left = Vec::new();
        for dir in [
            d.join("state/io.containerd.runtime.v2.task").join(NS),
            d.join("state/io.containerd.grpc.v1.cri/sandboxes"),
            d.join("state/io.containerd.grpc.v1.cri/containers"),
            d.join("root/io.containerd.grpc.v1.cri/sandboxes"),
            d.join("root/io.containerd.grpc.v1.cri/containers"),
            self.pulse_state_dir().join(NS),
        ] {
            for name in list_dir(&dir) {
                left.push(dir.join(name).display().to_string());
            }
        }
        if let Some(root) = cgroup2_root() {
            let ns = root.join(self.pulse_cgroup_parent()).join(NS);
            for name in list_dir(&ns) {
                if ns.join(&name).is_dir() {
                    left.push(ns.join(name).display().to_string());
                }
            }
        }
        // host-local keeps one file per allocated address (plus its lock and last_reserved_ip).
        let ipam = d.join("ipam/pulse-cri-test");
        for name in list_dir(&ipam) {
            if name.starts_with(POD_SUBNET_PREFIX) {
                left.push(format!("IP {name} still allocated"));
            }
        }
        left
    }

    /// Nothing of any pod is left: processes, mounts, pod network namespaces, shim sockets,
    /// veths or taps, state directories, cgroups, addresses.
    pub fn assert_no_leaks(&self) {
        if let Some(leaks) = self.leaks(Duration::from_secs(20)) {
            panic!("leaks: {leaks}\n{}", self.log_tail());
        }
    }

    /// Shim sockets of this environment's containers that are still there. A shim's socket is
    /// `/run/containerd/s/<sha256 of ADDRESS/NAMESPACE/ID>` (ID: the pod's, as runc's and
    /// Pulse's shims group a pod's containers); every sandbox and container id this
    /// containerd ever handled is in its log. (Other engineers' tests on the same machine make
    /// sockets there too: only ours count.)
    pub fn shim_sockets_left(&self) -> Vec<String> {
        let log = self.log();
        let mut ids: Vec<&str> = log
            .split(|c: char| !c.is_ascii_hexdigit())
            .filter(|w| w.len() == 64)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let address = self.sock().display().to_string();
        ids.into_iter()
            .map(|id| containerd_shim::socket_address(&address, NS, id))
            .map(|a| a.trim_start_matches("unix://").to_string())
            .filter(|path| Path::new(path).exists())
            .collect()
    }

    /// What is left of the pods once `patience` has passed without it all going, if anything.
    pub fn leaks(&self, patience: Duration) -> Option<String> {
        let deadline = Instant::now() + patience;
        loop {
            let procs = self.pod_processes();
            let mounts = self.mounts();
            let netns = self.new_netns();
            let sockets = self.shim_sockets_left();
            let links: Vec<String> = self
                .links()
                .into_iter()
                .filter(|l| l != "lo" && *l != self.bridge())
                .collect();
            let state = self.state_left();
            if procs.is_empty()
                && mounts.is_empty()
                && netns.is_empty()
                && sockets.is_empty()
                && links.is_empty()
                && state.is_empty()
            {
                return None;
            }
            if Instant::now() > deadline {
                return Some(format!(
                    "processes {procs:?}, mounts {mounts:?}, netns {netns:?}, shim sockets {sockets:?}, \
                     interfaces {links:?}, state {state:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        if std::env::var_os("PULSE_CRI_KEEP").is_some() {
            // To look at containerd's log and state after a failure; processes still go.
            self.dir.disable_cleanup(true);
            eprintln!("PULSE_CRI_KEEP: {} kept", self.dir.path().display());
        }
        // What a failed test left: its pods' processes, then containerd, then mounts.
        common::stop_leftovers(self.pod_processes(), self.containerd.take());
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for n in self.new_netns() {
            let _ = std::fs::remove_file(Path::new(NETNS_DIR).join(n));
        }
        if std::env::var_os("PULSE_CRI_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(self.pulse_state_dir());
        }
        if let Some(root) = cgroup2_root() {
            let pulse = root.join(self.pulse_cgroup_parent());
            let ns = pulse.join(NS);
            for name in list_dir(&ns) {
                let _ = std::fs::remove_dir(ns.join(name));
            }
            let _ = std::fs::remove_dir(ns);
            let _ = std::fs::remove_dir(pulse);
        }
        for root in cgroup_roots() {
            let kube = root.join(self.kube_cgroup_parent().trim_start_matches('/'));
            for pod in list_dir(&kube) {
                let pod = kube.join(pod);
                for c in list_dir(&pod) {
                    let _ = std::fs::remove_dir(pod.join(c));
                }
                let _ = std::fs::remove_dir(pod);
            }
            let _ = std::fs::remove_dir(kube);
        }
        for path in self.shim_sockets_left() {
            if std::os::unix::net::UnixStream::connect(&path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The cgroup v2 mount, if there is one.
pub fn cgroup2_root() -> Option<PathBuf> {
    pulse_shim::mountinfo::cgroup2_mount(&pulse_shim::mountinfo::current())
}

/// Every cgroup hierarchy's mount: the one of cgroup v2, or (v1 and hybrid hosts) one per
/// v1 controller plus the unified one.
pub fn cgroup_roots() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = *fields.get(sep + 1)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(fields[4]))
        })
        .collect()
}

/// containerd 1.6's `imports` replace the whole CRI section of the main file: shown with
/// `containerd config dump`, it is why [`CriEnv`] merges the snippet instead.
pub fn imports_replace_the_cri_section(dir: &Path) -> bool {
    let main = dir.join("imports-main.toml");
    std::fs::write(
        &main,
        format!(
            "version = 2\nimports = [{:?}]\n[plugins.{CRI_PLUGIN:?}]\n  sandbox_image = {PAUSE_IMAGE:?}\n",
            common::repo().join("configs/containerd-pulse.toml")
        ),
    )
    .unwrap();
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(&main).args(["config", "dump"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "containerd config dump: {}",
        text(&out.stderr)
    );
    let dump: toml::Table = text(&out.stdout).parse().expect("config dump is TOML");
    let cri = &dump["plugins"][CRI_PLUGIN];
    assert!(
        cri.get("containerd")
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.get("pulse"))
            .is_some(),
        "the imported pulse handler is in the dump"
    );
    cri.get("sandbox_image").and_then(|v| v.as_str()) != Some(PAUSE_IMAGE)
}
