//! The QEMU rig: a real Linux guest (the project's kernel and initramfs,
//! `pulse-agent` as PID 1) under QEMU's software emulator.
//!
//! ```text
//! vhost-device-vsock --guest-cid 3 --socket DIR/vhost.sock --uds-path DIR/vsock.sock
//! qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem -accel tcg -cpu max
//!     -object memory-backend-memfd,id=mem,size=512M,share=on
//!     -kernel vmlinux -initrd initramfs.cpio.lz4 -append "console=ttyS0 ..."
//!     -drive ... -device virtio-blk-device,drive=d0,serial=S
//!     -chardev socket,id=vsock,path=DIR/vhost.sock -device vhost-user-vsock-device,chardev=vsock
//! ```
//!
//! vhost-user needs guest memory that the backend can map: hence the shared
//! memfd backend. The host side of vsock is `DIR/vsock.sock`, the hybrid
//! vsock protocol (`CONNECT 1024\n` -> `OK <port>\n`) that pulse-ctl speaks.
//! As the shim does, the rig connects only after the agent announced itself
//! on `DIR/vsock.sock_1023` (see `pulse_protocols::ready_line`).
//! [`GuestConfig::accel`] switches to `-accel kvm -cpu host` where KVM has
//! hardware help (the nested rig's L1), for comparisons with Pulse's VMM.
//! QEMU's virtio-mmio has no MSI: this rig runs the guest driver's legacy
//! interrupt path.
//!
//! Every process, socket and file the rig creates goes away when the
//! [`Guest`] is dropped, also when a test panics (then the end of the
//! guest's console is printed, to see why). The children also get
//! `PR_SET_PDEATHSIG`, so they die with the thread that started them.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::Agent;
use crate::ready::{ready_path, ReadyListener};

/// The guest's vsock context id.
pub const GUEST_CID: u32 = 3;

/// What the kernel prints when it starts the initramfs's /init.
pub const INIT_LINE: &str = "Run /init as init process";

/// A disk attached as a virtio-blk device.
#[derive(Debug, Clone)]
pub struct Disk {
    pub image: PathBuf,
    /// The virtio-blk serial (`/sys/block/vdX/serial` in the guest).
    pub serial: String,
    pub read_only: bool,
    /// virtio-blk request queues (QEMU's num-queues).
    pub queues: u32,
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// The software emulator: runs anywhere, the rig's default.
    #[default]
    Tcg,
    /// KVM: needs /dev/kvm with VT-x/AMD-V (the nested rig's L1 has it).
    Kvm,
}

impl Accel {
    /// KVM where /dev/kvm is there and the CPU has vmx/svm, TCG elsewhere.
    pub fn detect() -> Accel {
        if crate::nested::host_has_hw_virt() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// `-accel`'s value.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// `-cpu`'s value: the emulator's full model, or the host's CPU under KVM (without
    /// IA32_ARCH_CAPABILITIES, which some nested KVMs refuse to set; see vmm/cli/benches/boot.rs).
    fn cpu(self) -> &'static str {
        match self {
            Accel::Tcg => "max",
            Accel::Kvm => "host,-arch-capabilities",
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// Appended to the rig's kernel command line.
    pub extra_cmdline: String,
    /// TCG unless a caller asks for KVM.
    pub accel: Accel,
}

impl GuestConfig {
    /// `build/guest/vmlinux` and `build/guest/initramfs.cpio.lz4` (or
    /// `$PULSE_GUEST_DIR`), TCG, one vCPU, 512 MiB, no disks, and
    /// `$PULSE_GUEST_CMDLINE` appended to the command line (for example
    /// `PULSE_AGENT_LOG=debug`: the kernel hands `KEY=value` words to init
    /// as its environment).
    pub fn from_build() -> Result<GuestConfig> {
        let (kernel, initrd) = crate::guest_images()?;
        Ok(GuestConfig {
            kernel,
            initrd,
            vcpus: 1,
            memory_mib: 512,
            disks: Vec::new(),
            extra_cmdline: std::env::var("PULSE_GUEST_CMDLINE").unwrap_or_default(),
            accel: Accel::Tcg,
        })
    }

    pub fn disk(mut self, image: &Path, serial: &str) -> GuestConfig {
        self.disks.push(Disk {
            image: image.to_path_buf(),
            serial: serial.to_string(),
            read_only: false,
            queues: 1,
        });
        self
    }

    /// The kernel command line the rig passes.
    pub fn cmdline(&self) -> String {
        // reboot=t + QEMU's -no-reboot: a guest reboot ends QEMU.
        // tsc=reliable: under TCG the TSC is otherwise distrusted with
        // several vCPUs and the clock falls back to jiffies.
        // quiet, as the shim boots its guests (every console byte is an exit;
        // the agent turns the console back to level 7 once it runs).
        let mut cmdline = format!(
            "console=ttyS0 reboot=t panic=-1 tsc=reliable quiet PULSE_AGENT_READY_PORT={}",
            pulse_protocols::DEFAULT_READY_PORT
        );
        if !self.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.extra_cmdline);
        }
        cmdline
    }
}

/// A running guest and its vsock backend.
pub struct Guest {
    dir: tempfile::TempDir,
    qemu: Option<Child>,
    backend: Option<Child>,
    vsock_uds: PathBuf,
    /// Where the agent announces itself (non-blocking).
    ready: ReadyListener,
    console: PathBuf,
    started: Instant,
}

impl Guest {
    /// Starts the vsock backend, then QEMU. Returns once QEMU runs; the
    /// agent answers later (see [`Guest::connect_agent`]).
    pub fn boot(config: &GuestConfig) -> Result<Guest> {
        let dir = tempfile::Builder::new()
            .prefix("pulse-qemu-")
            .tempdir()
            .context("creating the rig's directory")?;
        let vhost_socket = dir.path().join("vhost.sock");
        let vsock_uds = dir.path().join("vsock.sock");
        let console = dir.path().join("console.log");
        let ready = ReadyListener::bind(&vsock_uds)?;
        let mut guest = Guest {
            qemu: None,
            backend: None,
            ready,
            vsock_uds,
            console,
            started: Instant::now(),
            dir,
        };

        let backend_log = fs::File::create(guest.dir.path().join("vhost-device-vsock.log"))?;
        let mut backend = Command::new(vhost_device_vsock()?);
        backend
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost_socket)
            .arg("--uds-path")
            .arg(&guest.vsock_uds)
            .stdin(Stdio::null())
            .stdout(backend_log.try_clone()?)
            .stderr(backend_log);
        guest.backend = Some(spawn_tied(&mut backend).context("starting vhost-device-vsock")?);
        guest.wait_for_backend(&vhost_socket, Duration::from_secs(20))?;

        let mut qemu = Command::new(qemu_binary());
        qemu.args(qemu_args(config, &vhost_socket, &guest.console))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(guest.dir.path().join("qemu.stderr"))?);
        guest.started = Instant::now();
        guest.qemu = Some(spawn_tied(&mut qemu).context("starting qemu-system-x86_64")?);
        Ok(guest)
    }

    /// The agent's address for pulse-ctl and [`crate::connect`].
    pub fn agent_addr(&self) -> String {
        format!(
            "hvsock://{}:{}",
            self.vsock_uds.display(),
            pulse_protocols::DEFAULT_VSOCK_PORT
        )
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// QEMU's process id, while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(Child::id)
    }

    /// vhost-device-vsock's process id, while it runs.
    pub fn backend_pid(&self) -> Option<u32> {
        self.backend.as_ref().map(Child::id)
    }

    /// Connects to the agent, retrying until its health check answers or
    /// `timeout` passes. Returns the clients and the time from QEMU's start
    /// to that first answer.
    pub async fn connect_agent(&mut self, timeout: Duration) -> Result<(Agent, Duration)> {
        let deadline = Instant::now() + timeout;
        let addr = self.agent_addr();
        // No CONNECT before the agent's announcement: vhost-device-vsock 0.3.0
        // stops for good when one reaches it while the guest driver is still
        // setting the device up.
        self.wait_ready(deadline).await?;
        let mut last_err = None;
        loop {
            self.check_running()?;
            if self.vsock_uds.exists() {
                match Agent::connect(&addr, Duration::from_secs(2)).await {
                    Ok(agent) => match agent.check().await {
                        Ok(_) => return Ok((agent, self.started.elapsed())),
                        Err(e) => last_err = Some(e),
                    },
                    Err(e) => last_err = Some(e),
                }
            }
            if Instant::now() > deadline {
                let why = last_err.map(|e| format!("{e:#}")).unwrap_or_default();
                bail!(
                    "no answer from the agent at {addr} after {timeout:?} ({why})\n--- vhost-device-vsock ---\n{}\n--- console ---\n{}",
                    tail(&self.file_text("vhost-device-vsock.log"), 40),
                    self.console_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the agent wrote its readiness line, or fails at `deadline`.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            self.check_running()?;
            if self.ready.announced(deadline)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not announce itself on {}\n--- vhost-device-vsock ---\n{}\n--- console ---\n{}",
                    ready_path(&self.vsock_uds).display(),
                    tail(&self.file_text("vhost-device-vsock.log"), 40),
                    self.console_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fails if QEMU or the vsock backend has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let mut exited = None;
        if let Some(status) = self.qemu.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            self.qemu = None;
            exited = Some(("qemu", status));
        } else if let Some(status) = self
            .backend
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.backend = None;
            exited = Some(("vhost-device-vsock", status));
        }
        match exited {
            None => Ok(()),
            Some((name, status)) => bail!(
                "{name} exited ({status})\n--- qemu stderr ---\n{}\n--- vhost-device-vsock ---\n{}\n--- console ---\n{}",
                self.file_text("qemu.stderr"),
                self.file_text("vhost-device-vsock.log"),
                self.console_tail(40)
            ),
        }
    }

    /// Waits (at most `timeout`) for QEMU to end by itself, for example after
    /// the guest rebooted.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let qemu = self.qemu.as_mut()?;
            if let Ok(Some(status)) = qemu.try_wait() {
                self.qemu = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The guest's serial console so far.
    pub fn console(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console(), lines)
    }

    fn file_text(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn wait_for_backend(&mut self, socket: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            if let Some(status) = self
                .backend
                .as_mut()
                .and_then(|b| b.try_wait().ok().flatten())
            {
                self.backend = None;
                bail!(
                    "vhost-device-vsock exited ({status}): {}",
                    self.file_text("vhost-device-vsock.log")
                );
            }
            if Instant::now() > deadline {
                bail!("vhost-device-vsock did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- guest console (last 60 lines) ---\n{}\n--- qemu stderr ---\n{}",
                self.console_tail(60),
                self.file_text("qemu.stderr")
            );
        }
        // QEMU first (it holds the vhost-user connection), then the backend.
        for child in [self.qemu.take(), self.backend.take()]
            .into_iter()
            .flatten()
        {
            kill_and_reap(child);
        }
        // The TempDir then removes the sockets, logs and console file.
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `cmd` so that it dies with the spawning thread (PR_SET_PDEATHSIG),
/// even if this process is killed before its destructors run.
fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    // An orphan may go to a subreaper rather than pid 1: compare with our pid.
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The hybrid-vsock socket of the agent's readiness announcements.
fn qemu_args(config: &GuestConfig, vhost_socket: &Path, console: &Path) -> Vec<String> {
    let mem = config.memory_mib;
    let mut args: Vec<String> = [
        "-M",
        "microvm,acpi=off,memory-backend=mem",
        "-accel",
        config.accel.name(),
        "-cpu",
        config.accel.cpu(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-m".into(),
        format!("{mem}M"),
        "-smp".into(),
        config.vcpus.to_string(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-kernel".into(),
        config.kernel.display().to_string(),
        "-initrd".into(),
        config.initrd.display().to_string(),
        "-append".into(),
        config.cmdline(),
    ]);
    for (i, disk) in config.disks.iter().enumerate() {
        let ro = if disk.read_only { ",readonly=on" } else { "" };
        args.extend([
            "-drive".into(),
            format!(
                "id=disk{i},file={},format=raw,if=none,cache=unsafe{ro}",
                disk.image.display()
            ),
            "-device".into(),
            format!(
                "virtio-blk-device,drive=disk{i},serial={},num-queues={}",
                disk.serial, disk.queues
            ),
        ]);
    }
    args.extend([
        "-chardev".into(),
        format!("socket,id=vsock,path={}", vhost_socket.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
    ]);
    args
}

fn qemu_binary() -> PathBuf {
    std::env::var_os("PULSE_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// `$PULSE_VHOST_DEVICE_VSOCK`, else `vhost-device-vsock` in `$PATH`, else
/// in cargo's bin directory (where `cargo install` puts it).
fn vhost_device_vsock() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PULSE_VHOST_DEVICE_VSOCK") {
        return Ok(PathBuf::from(p));
    }
    let name = "vhost-device-vsock";
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found (scripts/install-deps.sh installs it with cargo install)")
        })
}
