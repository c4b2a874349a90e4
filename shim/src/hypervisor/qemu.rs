//! The `qemu` backend: `qemu-system-x86_64 -M microvm,acpi=off` with the same
//! guest image, KVM when the host has hardware virtualization and the software
//! emulator (TCG) otherwise.
//!
//! - vsock: QEMU's `vhost-user-vsock-device` served by a `vhost-device-vsock`
//!   process whose host side is a hybrid-vsock unix socket (the protocol
//!   Firecracker and pulse-vmm speak); vhost-user needs guest memory QEMU can
//!   share, so memory is a `memory-backend-memfd` with `share=on`.
//! - block slots: one `virtio-blk-device` per slot, over an empty placeholder
//!   file with the slot's serial. Attaching a disk writes the image into the
//!   placeholder and runs QMP `block_resize`, which raises virtio-blk's
//!   configuration-change interrupt in the guest.
//! - shared filesystem (`devices.shared_fs`): QEMU's `vhost-user-fs-device`
//!   served by the pod's virtiofsd ([`super::virtiofsd`]), which exports the
//!   pod's share ([`crate::shared_fs`]);
//! - the children get `PR_SET_PDEATHSIG` = SIGKILL: if the shim dies, so does
//!   the VM (the `delete` subcommand also kills them by pid); they run in the
//!   pod's cgroup with a private umask ([`super::child`]);
//! - QEMU runs under its seccomp filter (`-sandbox on`, no spawning, no
//!   privilege changes, no obsolete or resource-control system calls);
//! - the guest's serial console is QEMU's stdout and the virtio-console its
//!   descriptor 3: pipes the shim copies into capped logs, as it does the
//!   helpers' stderr ([`crate::console`]); QMP is retried until QEMU listens
//!   ([`super::qmp`]).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use tokio::process::{Child, Command};

use super::child::confine;
use super::qmp::{self, Qmp};
use super::virtiofsd;
use super::{
    base_cmdline, host_has_hw_virt, HostDevice, HostView, Hypervisor, HypervisorError,
    SandboxPaths, VmSpec,
};
use crate::cgroup::PodCgroup;
use crate::config::{Accel, QemuConfig};
use crate::console::ConsoleCapture;
use crate::network::NicDevice;

/// How long the helpers may take to create their sockets.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit after `quit`.
const QUIT_WAIT: Duration = Duration::from_secs(3);
/// QEMU's seccomp filter, all optional groups denied (QEMU 7.2 and vhost-user run under it).
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
/// The descriptor number of the virtio-console's pipe in QEMU.
const HVC_FD: i32 = 3;
/// The first descriptor number of the NICs' tap queues in QEMU (one per queue pair, in order).
const NIC_FD_BASE: i32 = 10;
/// virtio-mmio transports of QEMU's microvm machine (legacy IRQs 5..12 with the RTC off).
pub const MICROVM_TRANSPORTS: usize = 8;

/// A QEMU microVM and its vhost-user vsock backend.
pub struct Qemu {
    spec: VmSpec,
    /// QEMU's own settings: its programs, accelerator and extra arguments.
    qemu_config: QemuConfig,
    paths: SandboxPaths,
    tcg: bool,
    vhost: Option<Child>,
    virtiofsd: Option<Child>,
    qemu: Option<Child>,
    qmp: Option<Qmp>,
    exit_reason: Option<String>,
    cgroup: Option<Arc<PodCgroup>>,
    captures: Vec<ConsoleCapture>,
    /// The pod's NICs until QEMU inherits their descriptors.
    nics: Vec<NicDevice>,
    /// Their (tap, queue pairs), for the device view once QEMU holds them.
    nic_view: Vec<(String, u16)>,
}

impl Qemu {
    /// A backend for `spec` with QEMU's settings `qemu_config`, not started; its processes go
    /// into `cgroup`.
    pub fn new(
        spec: VmSpec,
        qemu_config: QemuConfig,
        paths: SandboxPaths,
        cgroup: Option<Arc<PodCgroup>>,
    ) -> Self {
        let tcg = match qemu_config.accel {
            Accel::Tcg => true,
            Accel::Kvm => false,
            Accel::Auto => !host_has_hw_virt(),
        };
        Self {
            spec,
            qemu_config,
            paths,
            tcg,
            vhost: None,
            virtiofsd: None,
            qemu: None,
            qmp: None,
            exit_reason: None,
            cgroup,
            captures: Vec::new(),
            nics: Vec::new(),
            nic_view: Vec::new(),
        }
    }

    /// A capped log at `path` and the write end of its pipe.
    fn capture(&mut self, path: PathBuf, what: &str) -> Result<OwnedFd, HypervisorError> {
        let (capture, write) = ConsoleCapture::start(&path, self.spec.log_max_bytes).map_err(
            HypervisorError::io(format!("creating {what} at {}", path.display())),
        )?;
        self.captures.push(capture);
        Ok(write)
    }

    fn qemu_log(&self) -> PathBuf {
        self.paths.dir.join("qemu.log")
    }

    fn vhost_log(&self) -> PathBuf {
        self.paths.dir.join("vhost-vsock.log")
    }

    fn virtiofsd_log(&self) -> PathBuf {
        virtiofsd::log_path(&self.paths)
    }

    /// QEMU's arguments.
    pub fn qemu_args(&self) -> Vec<String> {
        let c = &self.spec;
        let mem = c.memory_mib;
        let mut args: Vec<String> = vec![
            "-M".into(),
            "microvm,acpi=off,rtc=off,memory-backend=mem".into(),
            "-accel".into(),
            if self.tcg { "tcg" } else { "kvm" }.into(),
            "-cpu".into(),
            if self.tcg { "max" } else { "host" }.into(),
            "-m".into(),
            format!("{mem}M"),
            "-smp".into(),
            c.vcpus.to_string(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-sandbox".into(),
            SANDBOX.into(),
            // A pipe to the shim (see spawn_qemu), which caps the log.
            "-serial".into(),
            "stdio".into(),
            "-kernel".into(),
            c.kernel.display().to_string(),
            "-initrd".into(),
            c.initramfs.display().to_string(),
            "-append".into(),
            base_cmdline(c, self.tcg),
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", self.paths.vhost().display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.paths.qmp().display()),
        ];
        let queues = c.block_queues;
        for (slot, disk) in c.disks.iter().enumerate() {
            args.push("-drive".into());
            args.push(format!(
                "id=slot{slot},file={},format=raw,if=none,discard=unmap",
                disk.image.display()
            ));
            args.push("-device".into());
            args.push(format!(
                "virtio-blk-device,drive=slot{slot},serial={},num-queues={queues}",
                disk.serial
            ));
        }
        if !self.nics.is_empty() {
            // The taps live in the pod's network namespace: QEMU inherits their queues.
            let mut fd = NIC_FD_BASE;
            for (i, nic) in self.nics.iter().enumerate() {
                let fds: Vec<String> = (0..nic.fds.len())
                    .map(|_| {
                        fd += 1;
                        (fd - 1).to_string()
                    })
                    .collect();
                args.push("-netdev".into());
                args.push(format!("tap,id=net{i},fds={},vhost=off", fds.join(":")));
                args.push("-device".into());
                args.push(format!(
                    "virtio-net-device,netdev=net{i},mac={},host_mtu={}{}",
                    pulse_netlink::format_mac(&nic.mac),
                    nic.mtu,
                    if nic.fds.len() > 1 { ",mq=on" } else { "" }
                ));
            }
        } else if c.net_queues > 0 {
            // QEMU opens the tap by name and creates it when absent; a tap it
            // created is not persistent and goes when QEMU closes it.
            let pairs = c.net_queues;
            args.push("-netdev".into());
            args.push(format!(
                "tap,id=net0,ifname={},script=no,downscript=no,vhost=off,queues={pairs}",
                self.paths.tap_name()
            ));
            args.push("-device".into());
            args.push(if pairs > 1 {
                "virtio-net-device,netdev=net0,mq=on".into()
            } else {
                "virtio-net-device,netdev=net0".into()
            });
        }
        if let Some(shared) = &c.shared_dir {
            args.push("-chardev".into());
            args.push(format!(
                "socket,id=fs0,path={}",
                self.paths.virtiofs().display()
            ));
            args.push("-device".into());
            args.push(format!(
                "vhost-user-fs-device,chardev=fs0,tag={}",
                shared.tag
            ));
        }
        if c.virtio_console {
            args.push("-chardev".into());
            args.push(format!("file,id=hvc0,path=/dev/fd/{HVC_FD}"));
            args.push("-device".into());
            args.push("virtio-serial-device,max_ports=1".into());
            args.push("-device".into());
            args.push("virtconsole,chardev=hvc0".into());
        }
        args.extend(self.qemu_config.extra_args.iter().cloned());
        args
    }

    /// virtio-mmio transports the configuration needs.
    pub fn transports(&self) -> usize {
        let s = &self.spec;
        let nics = if self.nic_view.is_empty() {
            usize::from(s.net_queues > 0)
        } else {
            self.nic_view.len()
        };
        1 + s.disks.len()
            + nics
            + usize::from(s.virtio_console)
            + usize::from(s.shared_dir.is_some())
    }

    async fn spawn_vhost(&mut self) -> Result<(), HypervisorError> {
        let binary = &self.qemu_config.vhost_vsock_binary;
        let binary = binary.clone();
        let log = self.capture(self.vhost_log(), "the vhost-vsock log")?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--vm").arg(format!(
            "guest-cid=3,socket={},uds-path={}",
            self.paths.vhost().display(),
            self.paths.vsock().display()
        ));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        confine(&mut cmd, self.cgroup.as_deref(), Vec::new())?;
        let child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            program: binary.clone(),
            hint: "the qemu backend needs vhost-device-vsock: cargo install vhost-device-vsock",
            source,
        })?;
        self.vhost = Some(child);
        let socket = self.paths.vhost();
        self.wait_for(&socket, "vhost-device-vsock").await
    }

    async fn spawn_virtiofsd(&mut self) -> Result<(), HypervisorError> {
        let Some(shared) = self.spec.shared_dir.clone() else {
            return Ok(());
        };
        let log = self.capture(self.virtiofsd_log(), "the virtiofsd log")?;
        let child = virtiofsd::spawn(
            &self.spec.virtiofsd,
            &shared,
            &self.paths,
            self.cgroup.as_deref(),
            log,
        )
        .await?;
        self.virtiofsd = Some(child);
        Ok(())
    }

    async fn spawn_qemu(&mut self) -> Result<(), HypervisorError> {
        let binary = self.qemu_config.binary.clone();
        let log = self.capture(self.qemu_log(), "the qemu log")?;
        let serial = self.capture(self.paths.console(), "the console log")?;
        let mut inherited = Vec::new();
        if self.spec.virtio_console {
            let hvc = self.capture(self.paths.hvc_console(), "the virtio-console log")?;
            inherited.push((hvc, HVC_FD));
        }
        let args = self.qemu_args();
        for (fd, queue) in (NIC_FD_BASE..).zip(self.nics.drain(..).flat_map(|nic| nic.fds)) {
            inherited.push((queue, fd));
        }
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(serial)
            .stderr(log)
            .kill_on_drop(true);
        confine(&mut cmd, self.cgroup.as_deref(), inherited)?;
        tracing::debug!(?args, "starting qemu");
        let child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
            program: binary.clone(),
            hint: "the qemu backend needs qemu-system-x86_64: apt-get install qemu-system-x86",
            source,
        })?;
        // The pipes' write ends now live in QEMU only: EOF comes when it exits.
        drop(cmd);
        self.qemu = Some(child);
        let socket = self.paths.qmp();
        let deadline = self.spec.start_timeout;
        let qmp = qmp::connect_until(&socket, deadline, || self.exited()).await?;
        self.qmp = Some(qmp);
        Ok(())
    }

    /// Waits until `socket` exists, failing early when a helper exits.
    async fn wait_for(
        &mut self,
        socket: &std::path::Path,
        helper: &'static str,
    ) -> Result<(), HypervisorError> {
        let deadline = Instant::now() + SOCKET_WAIT;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(reason) = self.exited() {
                return Err(HypervisorError::StoppedWhileWaiting {
                    waiting_for: helper,
                    reason,
                });
            }
            if Instant::now() > deadline {
                return Err(HypervisorError::NoSocket {
                    helper,
                    socket: socket.to_path_buf(),
                    after: SOCKET_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The last lines of a helper's log, for error messages.
pub fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join("; ")
}

#[async_trait]
impl Hypervisor for Qemu {
    async fn boot(&mut self) -> Result<(), HypervisorError> {
        if self.transports() > MICROVM_TRANSPORTS {
            let s = &self.spec;
            return Err(HypervisorError::TooManyTransports {
                max: MICROVM_TRANSPORTS,
                needed: self.transports(),
                devices: format!(
                    "the vsock device, devices.block_slots = {}{}{}{}",
                    s.disks.len(),
                    if s.net_queues > 0 {
                        ", a network card (devices.net_queues)"
                    } else {
                        ""
                    },
                    if s.virtio_console {
                        ", a console (devices.virtio_console)"
                    } else {
                        ""
                    },
                    if s.shared_dir.is_some() {
                        ", a shared filesystem (devices.shared_fs)"
                    } else {
                        ""
                    },
                ),
            });
        }
        if self.spec.msi {
            tracing::info!("QEMU's virtio-mmio has no MSI: the guest uses legacy interrupts");
        }
        self.spawn_vhost().await?;
        self.spawn_virtiofsd().await?;
        self.spawn_qemu().await
    }

    fn agent_socket(&self) -> PathBuf {
        self.paths.vsock()
    }

    async fn resize_disk(&mut self, slot: usize, bytes: u64) -> Result<(), HypervisorError> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or(HypervisorError::NotRunning { vmm: "qemu" })?;
        // The image already has this size: QEMU re-reads it and interrupts the guest.
        qmp.execute(
            "block_resize",
            json!({"device": format!("slot{slot}"), "size": bytes}),
        )
        .await?;
        Ok(())
    }

    fn set_nics(&mut self, nics: Vec<NicDevice>) {
        self.nic_view = nics
            .iter()
            .map(|n| (n.tap.clone(), n.queue_pairs()))
            .collect();
        self.nics = nics;
    }

    fn shared_fs_tag(&self) -> Option<&'static str> {
        self.spec.shared_dir.as_ref().map(|shared| shared.tag)
    }

    fn host_view(&self) -> HostView {
        let c = &self.spec;
        let mut devices = vec![HostDevice::configured("vsock", "vsock0", 3, false)];
        for disk in &c.disks {
            devices.push(HostDevice::configured(
                "block",
                disk.serial.clone(),
                c.block_queues,
                false,
            ));
        }
        if !self.nic_view.is_empty() {
            devices.extend(
                self.nic_view.iter().map(|(tap, pairs)| {
                    HostDevice::configured("net", tap.clone(), pairs * 2, false)
                }),
            );
        } else if c.net_queues > 0 {
            devices.push(HostDevice::configured(
                "net",
                self.paths.tap_name(),
                c.net_queues * 2,
                false,
            ));
        }
        if let Some(shared) = &c.shared_dir {
            // The high-priority queue and one request queue.
            devices.push(HostDevice::configured("fs", shared.tag, 2, false));
        }
        if c.virtio_console {
            // virtio-serial with one port and the control queues (VIRTIO_CONSOLE_F_MULTIPORT).
            devices.push(HostDevice::configured("console", "hvc0", 4, false));
        }
        HostView {
            backend: "qemu".into(),
            accel: if self.tcg { "tcg" } else { "kvm" }.into(),
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
            devices,
            pids: [&self.qemu, &self.vhost, &self.virtiofsd]
                .iter()
                .filter_map(|c| c.as_ref().and_then(|c| c.id()))
                .collect(),
        }
    }

    fn exited(&mut self) -> Option<String> {
        if let Some(reason) = &self.exit_reason {
            return Some(reason.clone());
        }
        let logs = [
            ("qemu", self.qemu_log()),
            ("vhost-device-vsock", self.vhost_log()),
            ("virtiofsd", self.virtiofsd_log()),
        ];
        for (i, child) in [&mut self.qemu, &mut self.vhost, &mut self.virtiofsd]
            .into_iter()
            .enumerate()
        {
            if let Some(c) = child {
                if let Ok(Some(status)) = c.try_wait() {
                    let (name, log) = &logs[i];
                    let tail = log_tail(log);
                    let reason = if tail.is_empty() {
                        format!("{name} exited ({status})")
                    } else {
                        format!("{name} exited ({status}): {tail}")
                    };
                    self.exit_reason = Some(reason.clone());
                    return Some(reason);
                }
            }
        }
        None
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(mut qemu) = self.qemu.take() {
            if matches!(qemu.try_wait(), Ok(None)) {
                if let Some(qmp) = self.qmp.as_mut() {
                    let _ = tokio::time::timeout(QUIT_WAIT, qmp.execute("quit", json!({}))).await;
                }
                if tokio::time::timeout(QUIT_WAIT, qemu.wait()).await.is_err() {
                    tracing::warn!("qemu did not quit; killing it");
                    let _ = qemu.kill().await;
                }
            }
            let _ = qemu.wait().await;
        }
        self.qmp = None;
        // The backends end when QEMU hangs up; SIGTERM (then SIGKILL) if they did not.
        for backend in [self.vhost.take(), self.virtiofsd.take()]
            .into_iter()
            .flatten()
        {
            virtiofsd::stop(backend).await;
        }
        for path in [
            self.paths.vsock(),
            self.paths.vhost(),
            self.paths.qmp(),
            self.paths.virtiofs(),
        ] {
            let _ = std::fs::remove_file(path);
        }
        // The processes are gone: the logs are complete once the copies drained the pipes.
        crate::console::capture::finish_all(&mut self.captures);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PulseConfig;

    fn qemu(config: &PulseConfig, paths: &SandboxPaths) -> Qemu {
        let spec = VmSpec::of_config(config, paths);
        Qemu::new(spec, config.qemu.clone(), paths.clone(), None)
    }

    #[test]
    fn command_line_has_memfd_vsock_slots_and_qmp() {
        let mut config = PulseConfig::default();
        config.devices.block_slots = 2;
        config.vm.vcpus = 2;
        config.vm.memory_mib = 512;
        let paths = SandboxPaths::new(std::path::Path::new("/run/pulse"), "ns", "p").unwrap();
        let mut q = qemu(&config, &paths);
        q.tcg = true;
        let args = q.qemu_args().join(" ");
        assert!(args.contains("-M microvm,acpi=off"), "{args}");
        assert!(args.contains("-accel tcg -cpu max"), "{args}");
        assert!(args.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(args.contains("vhost-user-vsock-device,chardev=vsock0"));
        assert!(args.contains("serial=pulse-slot-1,num-queues=2"), "{args}");
        assert!(!args.contains("slot2"));
        assert!(args.contains("-qmp unix:/run/pulse/ns/p/qmp.sock,server=on,wait=off"));
        assert!(args.contains("tsc=reliable"));
        assert!(
            args.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "QEMU runs under its seccomp filter: {args}"
        );
        assert!(
            args.contains("-serial stdio") && !args.contains("console.log"),
            "QEMU writes no console file itself: {args}"
        );
        assert!(!args.contains("netdev"), "net_queues = 0: no network card");
        assert!(
            args.contains(
                "-chardev socket,id=fs0,path=/run/pulse/ns/p/fs.sock \
                 -device vhost-user-fs-device,chardev=fs0,tag=pulse-shared"
            ),
            "{args}"
        );
        assert_eq!(q.shared_fs_tag(), Some("pulse-shared"));
        q.spec.shared_dir = None;
        assert!(!q.qemu_args().join(" ").contains("vhost-user-fs"));
        assert_eq!(q.shared_fs_tag(), None);
        assert!(!args.contains("virtconsole"));
    }

    #[test]
    fn the_pods_nics_are_inherited_tap_queues_with_the_veths_mac_and_mtu() {
        let mut config = PulseConfig::default();
        config.devices.net_queues = 4;
        let paths = SandboxPaths::new(std::path::Path::new("/run/pulse"), "ns", "p").unwrap();
        let mut q = qemu(&config, &paths);
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        q.set_nics(vec![
            NicDevice {
                tap: "tap0_pulse".into(),
                fds: vec![fd(), fd()],
                mac: [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05],
                mtu: 1450,
            },
            NicDevice {
                tap: "tap1_pulse".into(),
                fds: vec![fd()],
                mac: [0x0a, 0x58, 0, 0, 0, 1],
                mtu: 1500,
            },
        ]);
        let args = q.qemu_args().join(" ");
        assert!(
            args.contains(
                "-netdev tap,id=net0,fds=10:11,vhost=off \
                 -device virtio-net-device,netdev=net0,mac=0a:58:0a:58:4d:05,host_mtu=1450,mq=on \
                 -netdev tap,id=net1,fds=12,vhost=off \
                 -device virtio-net-device,netdev=net1,mac=0a:58:00:00:00:01,host_mtu=1500 "
            ),
            "{args}"
        );
        assert!(
            !args.contains("ifname="),
            "no tap in the shim's namespace: {args}"
        );
        let nets: Vec<(String, u16)> = q
            .host_view()
            .devices
            .into_iter()
            .filter(|d| d.kind == "net")
            .map(|d| (d.id, d.queues))
            .collect();
        assert_eq!(
            nets,
            [("tap0_pulse".to_string(), 4), ("tap1_pulse".to_string(), 2)]
        );
        assert_eq!(q.transports(), 8);
    }

    #[test]
    fn net_and_console_devices_and_the_transport_limit() {
        let mut config = PulseConfig::default();
        config.devices.net_queues = 2;
        config.devices.virtio_console = true;
        let paths = SandboxPaths::new(std::path::Path::new("/run/pulse"), "ns", "p").unwrap();
        let q = qemu(&config, &paths);
        let args = q.qemu_args().join(" ");
        let tap = paths.tap_name();
        assert!(
            args.contains(&format!(
                "-netdev tap,id=net0,ifname={tap},script=no,downscript=no,vhost=off,queues=2 \
                 -device virtio-net-device,netdev=net0,mq=on"
            )),
            "{args}"
        );
        assert!(
            args.contains("-chardev file,id=hvc0,path=/dev/fd/3"),
            "a pipe: {args}"
        );
        assert!(args.contains("virtconsole,chardev=hvc0"));
        assert_eq!(q.transports(), 8);
        let kinds: Vec<String> = q
            .host_view()
            .devices
            .iter()
            .map(|d| d.kind.clone())
            .collect();
        assert_eq!(
            kinds,
            ["vsock", "block", "block", "block", "block", "net", "fs", "console"]
        );
        assert_eq!(q.host_view().devices[5].queues, 4);

        config.devices.block_slots = 6;
        let mut q = qemu(&config, &paths);
        let err = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(q.boot())
            .unwrap_err()
            .to_string();
        assert!(err.contains("this pod needs 10"), "{err}");
        assert!(
            err.contains("a shared filesystem (devices.shared_fs)"),
            "{err}"
        );
    }
}
