//! A private containerd (Debian's 1.6, as root, under a temporary root, state
//! and address), the offline busybox image, and leak checks, for the shim's
//! end-to-end tests. The guest image comes from `make guest`
//! (build/guest/vmlinux, build/guest/initramfs.cpio.lz4) or from
//! `PULSE_TEST_KERNEL` / `PULSE_TEST_INITRAMFS`; without one the tests say so
//! and pass as skipped. They run through the `qemu` backend, or through the
//! `embedded` one with `PULSE_TEST_BACKEND=embedded`, which needs VT-x/AMD-V
//! (`make test` runs them that way inside the nested rig, scripts/nested.sh).

#![allow(dead_code)]

pub mod net;

use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One VM at a time: the machines have two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The machine to this test alone while the guard lives (a test that failed before does not
/// hold it up).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub const IMAGE: &str = "docker.io/library/pulse-busybox:latest";
pub const NS: &str = "pulse-test";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-pulse-v2"))
}

/// The guest kernel and initramfs, when there are some.
pub fn guest_image() -> Option<(PathBuf, PathBuf)> {
    let kernel = std::env::var_os("PULSE_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/guest/vmlinux"));
    let initramfs = std::env::var_os("PULSE_TEST_INITRAMFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/guest/initramfs.cpio.lz4"));
    (kernel.is_file() && initramfs.is_file()).then_some((kernel, initramfs))
}

/// The backend under test: `PULSE_TEST_BACKEND` (`qemu`, the default, or `embedded`).
pub fn backend() -> &'static str {
    match std::env::var("PULSE_TEST_BACKEND").as_deref() {
        Ok("embedded") => "embedded",
        _ => "qemu",
    }
}

/// pulse.toml for the backend under test and the guest image `(kernel, initramfs)`: `vm_extra`
/// ends the `[vm]` table (more tables may follow it), `agent` is the `[agent]` table, and the
/// shim keeps its state in `shim.0` and its pods' cgroups under `shim.1`.
pub fn pulse_toml(
    (kernel, initramfs): (PathBuf, PathBuf),
    vm_extra: &str,
    agent: &str,
    (state_dir, cgroup_parent): (PathBuf, String),
) -> String {
    format!(
        "[hypervisor]\nbackend = {:?}\n[vm]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\nmemory_mib = 256\n{vm_extra}\n\
         [agent]\n{agent}\n[shim]\nstate_dir = {state_dir:?}\nlog_level = \"debug\"\ncgroup_parent = {cgroup_parent:?}\n",
        backend(),
    )
}

/// Whether the pods of these tests run in the shim's own process (no QEMU).
pub fn embedded() -> bool {
    backend() == "embedded"
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the end-to-end tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    let vm_tools: &[&str] = if embedded() {
        &[]
    } else {
        &["qemu-system-x86_64", "vhost-device-vsock"]
    };
    // virtiofsd: every pod's shared filesystem (devices.shared_fs), with either backend.
    for cmd in ["containerd", "ctr", "mkfs.ext4", "virtiofsd"]
        .iter()
        .chain(vm_tools)
    {
        if !have(cmd) {
            return Some(format!("{cmd} is not installed (scripts/install-deps.sh)"));
        }
    }
    if embedded() && !pulse_shim::hypervisor::host_has_hw_virt() {
        return Some(
            "the embedded backend needs VT-x/AMD-V and /dev/kvm (make test runs this suite in the nested rig)".into(),
        );
    }
    if guest_image().is_none() {
        return Some(
            "no guest image (make guest, or PULSE_TEST_KERNEL/PULSE_TEST_INITRAMFS)".into(),
        );
    }
    None
}

/// Skips the calling test (returns from it) when the environment lacks something.
#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// `(the machine's turn, a started Env)` for an end-to-end test; skips the calling test (returns
/// from it) as [`require_env!`] does.
#[macro_export]
macro_rules! start_env {
    () => {{
        $crate::require_env!();
        (common::serial(), common::Env::start())
    }};
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub containerd: Option<Child>,
    pub sockets_before: Vec<String>,
}

impl Env {
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("ps")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pulse.toml")
    }

    /// `shim.cgroup_parent` of this environment: its own, so leaks are its own.
    pub fn cgroup_parent(&self) -> String {
        format!(
            "pulse-test-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )
    }

    /// Where this environment's pod cgroups go (`None` without cgroup v2).
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        let root = pulse_shim::mountinfo::cgroup2_mount(&pulse_shim::mountinfo::current())?;
        Some(root.join(self.cgroup_parent()))
    }

    /// Pod cgroups left in this environment's namespace (its subdirectories).
    pub fn pod_cgroups(&self) -> Vec<String> {
        let Some(ns) = self.cgroup_dir().map(|d| d.join(NS)) else {
            return Vec::new();
        };
        list_dir(&ns)
            .into_iter()
            .filter(|name| ns.join(name).is_dir())
            .collect()
    }

    /// Everything in a running pod's sandbox directory is root's alone: the
    /// directories 0700, files 0600, sockets without group or other bits. What is mounted in
    /// the pod's share (a container's image, its bind mounts) is the user's, and not looked into.
    pub fn assert_private(&self, pod: &str) {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = self.state_dir().join(NS).join(pod);
        let own = ["mounts", "shared", "staging"].map(|d| dir.join(d));
        let shared: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(&dir) && !own.contains(m))
            .collect();
        let mut stack = vec![dir.clone()];
        let mut seen = 0;
        while let Some(d) = stack.pop() {
            let meta = std::fs::symlink_metadata(&d).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{}", d.display());
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let meta = entry.metadata().unwrap();
                let mode = meta.permissions().mode() & 0o777;
                let path = entry.path();
                seen += 1;
                if shared.contains(&path) {
                    continue;
                }
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.file_type().is_socket() {
                    assert_eq!(mode & 0o077, 0, "socket {} is {mode:o}", path.display());
                } else {
                    assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
                }
            }
        }
        assert!(seen >= 5, "{}: only {seen} entries", dir.display());
    }

    /// Writes pulse.toml: the backend under test with the guest image, plus `extra` TOML lines
    /// (which may replace whole sections).
    pub fn write_config(&self, vm_extra: &str, agent_extra: &str) {
        let image = guest_image().expect("guest image");
        let agent = if agent_extra.contains("connect_timeout_ms") {
            agent_extra.to_string()
        } else {
            format!("connect_timeout_ms = 60000\n{agent_extra}")
        };
        let shim = (self.state_dir(), self.cgroup_parent());
        std::fs::write(
            self.config_path(),
            pulse_toml(image, vm_extra, &agent, shim),
        )
        .unwrap();
    }

    /// Starts containerd and imports the busybox image.
    pub fn start() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pt")
            .tempdir_in("/tmp")
            .unwrap();
        let sockets_before = shim_sockets();
        let mut env = Env {
            dir,
            containerd: None,
            sockets_before,
        };
        env.write_config("", "");
        let d = env.dir.path().to_path_buf();
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n",
                d.join("root"),
                d.join("state"),
                env.sock()
            ),
        )
        .unwrap();
        let mut containerd = Command::new("containerd");
        let child = containerd_for_the_shim(&mut containerd, &d, &env.config_path())
            .spawn()
            .expect("containerd");
        env.containerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !env.sock().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                env.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        env.import_busybox(&d.join("busybox.tar"), &[]);
        env
    }

    /// Builds busybox's OCI image into `tar` (scripts/busybox-oci.sh, given `args` after the
    /// tar: another name and its extra layers) and imports it.
    pub fn import_busybox(&self, tar: &Path, args: &[&std::ffi::OsStr]) {
        let status = Command::new(repo().join("scripts/busybox-oci.sh"))
            .arg(tar)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
        self.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.sock())
            .args(["--namespace", NS])
            .args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = self.ctr_cmd(args);
        run_with_timeout(&mut cmd, Duration::from_secs(180))
    }

    /// `ctr run --rm` of busybox with the Pulse shim (by path), `extra` options before the image.
    pub fn run_rm(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        self.run("--rm", id, extra, cmd)
    }

    /// `ctr run -d` of busybox with the Pulse shim (by path), `extra` options before the image;
    /// returns once the task is RUNNING.
    pub fn run_detached(&self, id: &str, extra: &[&str], cmd: &[&str]) {
        let out = self.run("-d", id, extra, cmd);
        self.assert_exit(&out, 0);
        self.wait_status(id, "RUNNING");
    }

    /// [`Self::run_detached`] of `sleep 1000`.
    pub fn run_sleeping(&self, id: &str) {
        self.run_detached(id, &[], &["sleep", "1000"]);
    }

    /// `ctr run` in `mode` (`--rm`, `-d`) of busybox with the Pulse shim (by path).
    fn run(&self, mode: &str, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let shim = shim_binary();
        let mut args = vec!["run", mode, "--runtime", shim.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Waits until `ctr tasks ls` shows `id` with `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ctr(&["tasks", "ls"]);
            let listing = text(&out.stdout);
            if listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {status}: {listing}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `id` no longer runs: stopped, or gone from the task list.
    pub fn wait_not_running(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listing = text(&self.ctr(&["tasks", "ls"]).stdout);
            let running = listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"));
            if !running {
                return;
            }
            assert!(Instant::now() < deadline, "{id} still runs: {listing}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ctr args`, which must succeed.
    pub fn ctr_ok(&self, args: &[&str]) -> Output {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", text(&out.stderr));
        out
    }

    /// SIGKILLs task `id`, waits until it stopped, and deletes it and its container.
    pub fn kill_and_delete(&self, id: &str) {
        self.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", id]);
        self.wait_status(id, "STOPPED");
        self.ctr_ok(&["tasks", "delete", id]);
        self.ctr_ok(&["containers", "delete", id]);
    }

    /// Deletes `id` once its shim is gone: it no longer runs, its task is deleted (containerd
    /// may have done that already) and its container must go.
    pub fn delete_after_its_shim(&self, id: &str) {
        self.wait_not_running(id);
        let _ = self.ctr(&["tasks", "delete", id]);
        self.ctr_ok(&["containers", "delete", id]);
    }

    /// The pid of the one Pulse shim of this environment.
    pub fn the_shim(&self) -> u32 {
        let shims: Vec<u32> = self
            .pod_processes()
            .into_iter()
            .filter(|(_, c)| is_shim(c))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(shims.len(), 1, "{shims:?}");
        shims[0]
    }

    /// SIGKILLs the one Pulse shim of this environment.
    pub fn kill_9_the_shim(&self) {
        send_signal(self.the_shim(), Signal::SIGKILL).unwrap();
    }

    /// Processes that belong to this environment's pods (shims, qemu, vhost-device-vsock,
    /// virtiofsd).
    pub fn pod_processes(&self) -> Vec<(u32, String)> {
        let needle = self.dir.path().to_string_lossy().to_string();
        processes()
            .into_iter()
            .filter(|(_, cmd)| {
                cmd.contains(&needle)
                    && (cmd.contains("containerd-shim-pulse-v2")
                        || cmd.contains("qemu-system")
                        || cmd.contains("vhost-device-vsock")
                        || cmd.contains("virtiofsd"))
            })
            .collect()
    }

    /// Asserts that the command of `out` exited with `code`, else says what it printed and
    /// containerd's log.
    pub fn assert_exit(&self, out: &Output, code: i32) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "stdout {} stderr {}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
    }

    /// Nothing of a pod is left: processes, sandbox directories (sockets, disk
    /// images), mounts below the environment, shim sockets.
    pub fn assert_no_leaks(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let procs = self.pod_processes();
            let sandboxes = list_dir(&self.state_dir().join(NS));
            let mounts = self.mounts();
            let sockets: Vec<String> = shim_sockets()
                .into_iter()
                .filter(|s| !self.sockets_before.contains(s))
                .collect();
            let cgroups = self.pod_cgroups();
            if procs.is_empty()
                && sandboxes.is_empty()
                && mounts.is_empty()
                && sockets.is_empty()
                && cgroups.is_empty()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "leaks: processes {procs:?}, sandbox dirs {sandboxes:?}, mounts {mounts:?}, shim sockets {sockets:?}, pod cgroups {cgroups:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Mounts below the state dir or a bundle's rootfs (containerd's own snapshot mounts excluded).
    pub fn mounts(&self) -> Vec<String> {
        let pulse = self.state_dir().to_string_lossy().to_string();
        let bundles = self.dir.path().join("state").to_string_lossy().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&pulse) || m.starts_with(&bundles))
            .collect()
    }
}

/// Sends `signal` to the process `pid` (a pid as `std::process` and /proc give it).
pub fn send_signal(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).expect("a pid fits in a pid_t");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// `cmd` (containerd, or what ends in it) made to run containerd as the tests do: with `dir`'s
/// containerd.toml, Pulse's config at `pulse_config`, the shim's directory first on its PATH,
/// and its output in `dir`'s containerd.log.
pub fn containerd_for_the_shim<'c>(
    cmd: &'c mut Command,
    dir: &Path,
    pulse_config: &Path,
) -> &'c mut Command {
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let path = format!(
        "{}:{}",
        shim_binary().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    default_signals(cmd);
    cmd.arg("--config")
        .arg(dir.join("containerd.toml"))
        .env("PULSE_CONFIG", pulse_config)
        .env("PATH", path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
}

/// What a failed test left: its pods' processes (SIGKILL), then containerd (SIGTERM, up to 10 s
/// to exit, then SIGKILL).
pub fn stop_leftovers(pod_processes: Vec<(u32, String)>, containerd: Option<Child>) {
    for (pid, _) in pod_processes {
        let _ = send_signal(pid, Signal::SIGKILL);
    }
    if let Some(mut c) = containerd {
        let _ = send_signal(c.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop what a failed test left, then containerd, then unmount and remove.
        stop_leftovers(self.pod_processes(), self.containerd.take());
        let prefix = self.dir.path().to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(cgroups) = self.cgroup_dir() {
            for pod in self.pod_cgroups() {
                let _ = std::fs::remove_dir(cgroups.join(NS).join(pod));
            }
            let _ = std::fs::remove_dir(cgroups.join(NS));
            let _ = std::fs::remove_dir(cgroups);
        }
        for s in shim_sockets() {
            if !self.sockets_before.contains(&s) {
                let path = Path::new("/run/containerd/s").join(&s);
                if std::os::unix::net::UnixStream::connect(&path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// `cmd` starts with every signal at its default action and none blocked, as a service
/// manager starts containerd. runc passes ignored signals on to the container's process (a
/// test runner may ignore some: signal 32 was), Pulse's guest does not.
pub fn default_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only raw rt_sigaction and sigprocmask system calls run
    // (async-signal-safe); glibc's sigaction would refuse its own signals 32 and 33.
    unsafe {
        cmd.pre_exec(|| {
            // The kernel's struct sigaction: handler (SIG_DFL), flags, restorer, mask.
            let default = [0u64; 4];
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        default.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    );
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Whether a process's command line is a Pulse shim (not the holder of a pod's own network
/// namespace, which runs the shim's binary too).
pub fn is_shim(cmd: &str) -> bool {
    cmd.contains("containerd-shim-pulse-v2") && !cmd.contains(NETNS_HOLDER)
}

/// The argument that makes the shim's binary a pod's network namespace holder.
pub const NETNS_HOLDER: &str = "pulse-netns-holder";

/// The `ctr run` options that make a container one of pod `pod` as containerd's CRI plugin
/// annotates it: `kind` `sandbox` for the pod's first container (which starts its VM),
/// `container` for another.
pub fn pod_options(kind: &str, pod: &str) -> [String; 4] {
    [
        "--annotation".into(),
        format!("io.kubernetes.cri.container-type={kind}"),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={pod}"),
    ]
}

/// Asserts that a command's output `printed` holds `needle`, else shows the output.
pub fn assert_contains(printed: &[u8], needle: &str) {
    let printed = text(printed);
    assert!(printed.contains(needle), "no {needle:?} in {printed}");
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

pub fn list_dir(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn shim_sockets() -> Vec<String> {
    list_dir(Path::new("/run/containerd/s"))
}

pub fn processes() -> Vec<(u32, String)> {
    list_dir(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            (!cmd.is_empty()).then_some((pid, cmd))
        })
        .collect()
}

pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    wait_with_timeout(child, limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"))
}

/// `child`'s output, or `None` (and the child killed) when it runs past `limit`.
pub fn wait_with_timeout(child: Child, limit: Duration) -> Option<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.unwrap()),
        Err(_) => {
            let _ = send_signal(pid, Signal::SIGKILL);
            None
        }
    }
}

/// A positive count from environment variable `name` (the benches' `BENCH_RUNS` and the like),
/// `default` when it is unset.
pub fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    use anyhow::Context;
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name}={v:?} is not a positive count")),
        Err(_) => Ok(default),
    }
}
