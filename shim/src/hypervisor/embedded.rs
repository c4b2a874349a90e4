//! The `embedded` backend: `pulse-vmm` in the shim's own process.
//!
//! The VM is built with [`pulse_vmm::Vm::start`] from the pod's kernel,
//! initramfs, vCPUs and memory, with:
//! - its empty block slots: virtio-blk over placeholder files, with the slot
//!   serials and queue counts; attaching a disk rewrites the slot's file and
//!   calls [`BlockHandle::reload`](pulse_vmm::devices::block::BlockHandle::reload)
//!   (new capacity, config generation, configuration-change interrupt);
//! - a hybrid-vsock device whose host side is the sandbox's `vm.vsock` socket
//!   (`CONNECT <port>\n` -> `OK <port>\n`; before the guest driver is ready the
//!   socket answers `ERR ...` and closes, and the agent client retries);
//! - per-queue MSI offered or not (`devices.msi`);
//! - every VMM thread confined: no capabilities, and the seccomp filter of its
//!   kind unless `hypervisor.seccomp = false` (`docs/confinement.md`); the
//!   shim's own threads are left as they are;
//! - a multi-queue virtio-net on the pod's tap (`devices.net_queues` > 0): the
//!   device creates the tap and removes it when the VM goes (a non-persistent
//!   tap also vanishes with the process if the shim is killed);
//! - the serial console, and optionally a virtio-console
//!   (`devices.virtio_console`), written by the VMM into pipes it opens by
//!   their `/proc/self/fd` paths; shim threads copy them into the capped
//!   `console.log` and `hvc0.log` ([`crate::console`]);
//! - the shim process itself moved into the pod's cgroup before the VM
//!   starts (the VM is this process's threads);
//! - a virtio-fs device (`devices.shared_fs`) whose queues the pod's virtiofsd
//!   serves ([`super::virtiofsd`], started before the VM, in the pod's cgroup,
//!   recorded for `delete`): guest memory is then one memfd the backend maps,
//!   and with MSI the backend's interrupts go to the queues' irqfds directly.
//!
//! The device view comes from [`pulse_vmm::Vm::device_stats`] (queues, MSI
//! state, per-vector interrupt counts), matched to the configured devices by
//! their kind and id (a slot's serial, a NIC's tap, the share's tag); [`pulse_vmm::Vm::exit_reason`] says
//! whether the VM stopped; stop joins every VM thread.
//!
//! Linux boots under this backend only on a host with VT-x/AMD-V: without it
//! KVM runs the guest through its instruction emulator (no SSE/xsave, ~1000x
//! slower), the guest never gets to its agent, and the sandbox fails at the
//! agent deadline with everything removed again.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pulse_vmm::devices::block::{BlockConfig, DEFAULT_QUEUE_SIZE};
use pulse_vmm::devices::console::{ConsoleConfig, ConsoleSink};
use pulse_vmm::devices::fs::FsConfig;
use pulse_vmm::devices::net::{MacAddr, NetConfig, TapSource};
use pulse_vmm::devices::vsock::VsockConfig;
use pulse_vmm::mmio::TransportStats;
use pulse_vmm::{KernelSource, SerialOutput, Vm, VmConfig};

use super::virtiofsd;
use super::{
    base_cmdline, HostDevice, HostVector, HostView, Hypervisor, HypervisorError, SandboxPaths,
    VmSpec,
};
use crate::cgroup::PodCgroup;
use crate::console::{capture::fd_path, ConsoleCapture};
use crate::network::NicDevice;

/// The write ends of the console pipes, open until the VMM opened its own.
#[derive(Default)]
struct ConsolePipes {
    serial: Option<OwnedFd>,
    hvc: Option<OwnedFd>,
}

/// The guest's vsock context id (the VM is alone on its hybrid-vsock socket).
pub const GUEST_CID: u64 = 3;

/// pulse-vmm in-process.
pub struct Embedded {
    spec: VmSpec,
    paths: SandboxPaths,
    vm: Option<Vm>,
    exit_reason: Option<String>,
    cgroup: Option<Arc<PodCgroup>>,
    pipes: ConsolePipes,
    captures: Vec<ConsoleCapture>,
    virtiofsd: Option<tokio::process::Child>,
    /// The pod's NICs: their taps' queue descriptors, which the VMM duplicates.
    nics: Vec<NicDevice>,
}

impl Embedded {
    /// A backend for `spec`, not started; the shim joins `cgroup` at boot.
    pub fn new(spec: VmSpec, paths: SandboxPaths, cgroup: Option<Arc<PodCgroup>>) -> Self {
        Self {
            spec,
            paths,
            vm: None,
            exit_reason: None,
            cgroup,
            pipes: ConsolePipes::default(),
            captures: Vec::new(),
            virtiofsd: None,
            nics: Vec::new(),
        }
    }

    /// Starts the copies of the consoles into their capped logs; the VMM
    /// config then names the pipes.
    fn start_captures(&mut self) -> Result<(), HypervisorError> {
        let cap = self.spec.log_max_bytes;
        let start = |path: PathBuf| {
            ConsoleCapture::start(&path, cap)
                .map_err(HypervisorError::io(format!("creating {}", path.display())))
        };
        let (serial, write) = start(self.paths.console())?;
        self.captures.push(serial);
        self.pipes.serial = Some(write);
        if self.spec.virtio_console {
            let (hvc, write) = start(self.paths.hvc_console())?;
            self.captures.push(hvc);
            self.pipes.hvc = Some(write);
        }
        Ok(())
    }

    /// The VMM's configuration for this pod.
    pub fn vm_config(&self) -> VmConfig {
        let c = &self.spec;
        let mut vm = VmConfig::new(KernelSource::Path(c.kernel.clone()));
        vm.initrd = Some(c.initramfs.clone());
        vm.cmdline = base_cmdline(c, false);
        vm.vcpus = c.vcpus;
        vm.memory_mib = c.memory_mib;
        // The pipe to the shim's capped log when it is set up; the file itself otherwise.
        vm.serial = SerialOutput::File(
            self.pipes
                .serial
                .as_ref()
                .map_or_else(|| self.paths.console(), fd_path),
        );
        vm.block = c
            .disks
            .iter()
            .map(|disk| BlockConfig {
                path: disk.image.clone(),
                read_only: false,
                queues: c.block_queues,
                queue_size: DEFAULT_QUEUE_SIZE,
                serial: Some(disk.serial.clone()),
            })
            .collect();
        vm.vsock = Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: self.paths.vsock(),
        });
        vm.msi = c.msi;
        vm.seccomp = c.seccomp;
        if let Some(shared) = &c.shared_dir {
            vm.fs = Some(FsConfig::new(self.paths.virtiofs(), shared.tag));
        }
        if !self.nics.is_empty() {
            vm.net = self
                .nics
                .iter()
                .map(|nic| {
                    let mut net = NetConfig::new(&nic.tap);
                    net.tap = TapSource::Fds(nic.fds.iter().map(AsRawFd::as_raw_fd).collect());
                    net.queue_pairs = nic.queue_pairs();
                    net.mac = Some(MacAddr(nic.mac));
                    net.mtu = Some(nic.mtu);
                    // The shim set the tap up, with the veth's MTU, in the pod's namespace.
                    net.link_up = false;
                    net
                })
                .collect();
        } else if c.net_queues > 0 {
            let mut net = NetConfig::new(&self.paths.tap_name());
            net.queue_pairs = c.net_queues;
            vm.net = vec![net];
        }
        if c.virtio_console {
            vm.console = Some(ConsoleConfig {
                sink: ConsoleSink::File(
                    self.pipes
                        .hvc
                        .as_ref()
                        .map_or_else(|| self.paths.hvc_console(), fd_path),
                ),
            });
        }
        vm
    }

    /// The VM's devices in the VMM's slot order (disks, network card, vsock,
    /// console), without counters: what the configuration asks for.
    fn configured_devices(&self) -> Vec<HostDevice> {
        let c = &self.spec;
        let mut devices: Vec<HostDevice> = c
            .disks
            .iter()
            .map(|disk| HostDevice::configured("block", disk.serial.clone(), c.block_queues, c.msi))
            .collect();
        if !self.nics.is_empty() {
            devices.extend(self.nics.iter().map(|nic| {
                HostDevice::configured("net", nic.tap.clone(), nic.queue_pairs() * 2, c.msi)
            }));
        } else if c.net_queues > 0 {
            devices.push(HostDevice::configured(
                "net",
                self.paths.tap_name(),
                c.net_queues * 2,
                c.msi,
            ));
        }
        devices.push(HostDevice::configured("vsock", "vsock0", 3, c.msi));
        if c.virtio_console {
            devices.push(HostDevice::configured("console", "hvc0", 2, c.msi));
        }
        if let Some(shared) = &c.shared_dir {
            // The high-priority queue and one request queue.
            devices.push(HostDevice::configured("fs", shared.tag, 2, c.msi));
        }
        devices
    }

    fn reload(&self, slot: usize) -> Result<u64, HypervisorError> {
        let vm = self
            .vm
            .as_ref()
            .ok_or(HypervisorError::NotRunning { vmm: "the VM" })?;
        let block = vm.blocks().get(slot).ok_or(HypervisorError::NoSlot(slot))?;
        block
            .reload(None)
            .map_err(|source| HypervisorError::Reload { slot, source })
    }
}

/// Puts the VMM's view of each device (MSI state, queues, interrupt counts) into the
/// configured `devices`, matched by kind and id: the VMM names a disk by its serial, a
/// network card by its tap and the share by its tag, as [`Embedded::configured_devices`] does.
fn add_counters(devices: &mut [HostDevice], stats: &[TransportStats]) {
    for device in devices {
        let Some(s) = stats
            .iter()
            .find(|s| s.device_type == device.kind && s.id == device.id)
        else {
            continue;
        };
        device.msi = s.msi_enabled;
        if device.kind != "net" {
            device.queues = s.queues;
        }
        device.interrupts = s
            .vectors
            .iter()
            .map(|v| HostVector {
                name: if v.index == 0 {
                    "config".into()
                } else {
                    format!("queue{}", v.index - 1)
                },
                sent: v.sent,
            })
            .collect();
        device.interrupts.push(HostVector {
            name: "legacy".into(),
            sent: s.legacy_sent,
        });
    }
}

#[async_trait]
impl Hypervisor for Embedded {
    async fn boot(&mut self) -> Result<(), HypervisorError> {
        if let Some(cgroup) = &self.cgroup {
            // The VM's threads are this process's: from now on the shim is charged to the pod.
            cgroup.add_self().map_err(HypervisorError::Cgroup)?;
        }
        self.start_captures()?;
        if let Some(shared) = &self.spec.shared_dir {
            let log = virtiofsd::log_path(&self.paths);
            let (capture, write) = ConsoleCapture::start(&log, self.spec.log_max_bytes)
                .map_err(HypervisorError::io(format!("creating {}", log.display())))?;
            self.captures.push(capture);
            let child = virtiofsd::spawn(
                &self.spec.virtiofsd,
                shared,
                &self.paths,
                self.cgroup.as_deref(),
                write,
            )
            .await?;
            self.virtiofsd = Some(child);
        }
        let config = self.vm_config();
        let started = tokio::task::spawn_blocking(move || Vm::start(&config)).await;
        // The VMM opened the pipes by path (or failed): only its ends stay open.
        self.pipes = ConsolePipes::default();
        let vm = started
            .map_err(|source| HypervisorError::Thread {
                what: "the VM failed to start",
                source,
            })?
            .map_err(HypervisorError::Start)?;
        tracing::info!(cmdline = vm.cmdline(), "embedded VM started");
        self.vm = Some(vm);
        // The VMM binds it with the process umask; the 0700 directory guards it meanwhile.
        if let Err(e) = crate::private_fs::restrict(&self.paths.vsock()) {
            tracing::warn!("restricting {}: {e}", self.paths.vsock().display());
        }
        Ok(())
    }

    fn agent_socket(&self) -> PathBuf {
        self.paths.vsock()
    }

    async fn resize_disk(&mut self, slot: usize, bytes: u64) -> Result<(), HypervisorError> {
        let capacity = self.reload(slot)?;
        if capacity != bytes {
            return Err(HypervisorError::CapacityMismatch {
                slot,
                vmm: capacity,
                image: bytes,
            });
        }
        Ok(())
    }

    fn host_view(&self) -> HostView {
        let c = &self.spec;
        let mut devices = self.configured_devices();
        if let Some(vm) = &self.vm {
            add_counters(&mut devices, &vm.device_stats());
        }
        HostView {
            backend: "embedded".into(),
            accel: "kvm".into(),
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
            devices,
            pids: std::iter::once(std::process::id())
                .chain(self.virtiofsd.as_ref().and_then(|c| c.id()))
                .collect(),
        }
    }

    fn set_nics(&mut self, nics: Vec<NicDevice>) {
        self.nics = nics;
    }

    fn shared_fs_tag(&self) -> Option<&'static str> {
        self.spec.shared_dir.as_ref().map(|shared| shared.tag)
    }

    fn exited(&mut self) -> Option<String> {
        if self.exit_reason.is_none() {
            if let Some(Ok(Some(status))) = self.virtiofsd.as_mut().map(|c| c.try_wait()) {
                let tail = super::qemu::log_tail(&virtiofsd::log_path(&self.paths));
                self.exit_reason = Some(format!("virtiofsd exited ({status}): {tail}"));
                return self.exit_reason.clone();
            }
            self.exit_reason = self
                .vm
                .as_ref()
                .and_then(Vm::exit_reason)
                .map(|e| e.to_string());
        }
        self.exit_reason.clone()
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(mut vm) = self.vm.take() {
            vm.handle().request_stop();
            let exit = tokio::task::spawn_blocking(move || {
                let exit = vm.stop();
                // Dropping the VM joins its device workers and closes the tap.
                drop(vm);
                exit
            })
            .await
            .map_err(|source| HypervisorError::Thread {
                what: "the thread stopping the VM",
                source,
            })?;
            tracing::info!(%exit, "embedded VM stopped");
            self.exit_reason.get_or_insert_with(|| exit.to_string());
        }
        // The VMM's copies are closed: with ours the taps go.
        self.nics.clear();
        // The VM is gone, and with it the virtio-fs device's connection: virtiofsd ends.
        if let Some(child) = self.virtiofsd.take() {
            virtiofsd::stop(child).await;
        }
        let _ = std::fs::remove_file(self.paths.vsock());
        let _ = std::fs::remove_file(self.paths.virtiofs());
        self.pipes = ConsolePipes::default();
        crate::console::capture::finish_all(&mut self.captures);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PulseConfig;
    use pulse_vmm::devices::net::TapSource;

    fn backend(edit: impl FnOnce(&mut PulseConfig)) -> (Embedded, SandboxPaths) {
        let mut config = PulseConfig::default();
        edit(&mut config);
        let paths = SandboxPaths::new(std::path::Path::new("/run/pulse"), "ns", "p").unwrap();
        let spec = VmSpec::of_config(&config, &paths);
        (Embedded::new(spec, paths.clone(), None), paths)
    }

    #[test]
    fn vm_config_has_the_slots_vsock_and_the_console() {
        let (e, paths) = backend(|c| {
            c.vm.vcpus = 2;
            c.vm.memory_mib = 512;
            c.vm.kernel_params = "loglevel=7".into();
            c.devices.block_slots = 3;
        });
        let vm = e.vm_config();
        assert!(matches!(vm.kernel, KernelSource::Path(ref p) if *p == e.spec.kernel));
        assert_eq!(vm.initrd.as_ref(), Some(&e.spec.initramfs));
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 512));
        assert_eq!(vm.block.len(), 3);
        assert_eq!(vm.block[1].serial.as_deref(), Some("pulse-slot-1"));
        assert_eq!(vm.block[1].path, paths.slot_image(1));
        assert_eq!(vm.block[1].queues, 2, "0 block queues: one per vCPU");
        assert!(!vm.block[0].read_only);
        assert!(matches!(vm.serial, SerialOutput::File(ref p) if *p == paths.console()));
        assert!(vm.cmdline.starts_with("console=ttyS0"));
        assert!(vm.cmdline.ends_with(" loglevel=7"), "{}", vm.cmdline);
        assert!(!vm.cmdline.contains("tsc=reliable"));
        let vsock = vm.vsock.as_ref().expect("a vsock device");
        assert_eq!(vsock.guest_cid, GUEST_CID);
        assert_eq!(vsock.uds_path, paths.vsock());
        assert!(vm.msi);
        assert!(
            vm.seccomp,
            "the VMM's threads run under their filters by default"
        );
        assert!(vm.net.is_empty(), "net_queues = 0: no network card");
        assert!(vm.console.is_none());
        let fs = vm
            .fs
            .as_ref()
            .expect("devices.shared_fs: a virtio-fs device");
        assert_eq!(fs.socket, paths.virtiofs());
        assert_eq!(fs.tag, "pulse-shared");
        assert_eq!(e.shared_fs_tag(), Some("pulse-shared"));
        let (e, _) = backend(|c| c.devices.shared_fs = false);
        assert!(e.vm_config().fs.is_none());
        assert_eq!(e.shared_fs_tag(), None);
    }

    #[test]
    fn msi_net_and_console_follow_the_config() {
        let (e, paths) = backend(|c| {
            c.hypervisor.seccomp = false;
            c.devices.msi = false;
            c.devices.net_queues = 4;
            c.devices.block_queues = 3;
            c.devices.virtio_console = true;
        });
        let vm = e.vm_config();
        assert!(!vm.msi);
        assert!(!vm.seccomp);
        assert_eq!(vm.block[0].queues, 3);
        assert_eq!(vm.net.len(), 1);
        assert_eq!(vm.net[0].queue_pairs, 4);
        assert_eq!(vm.net[0].tap, TapSource::Name(paths.tap_name()));
        assert!(vm.net[0].link_up);
        assert_eq!(
            vm.console.as_ref().map(|c| &c.sink),
            Some(&ConsoleSink::File(paths.hvc_console()))
        );
        let view = e.host_view();
        let kinds: Vec<(&str, u16, bool)> = view
            .devices
            .iter()
            .map(|d| (d.kind.as_str(), d.queues, d.msi))
            .collect();
        assert_eq!(
            kinds,
            [
                ("block", 3, false),
                ("block", 3, false),
                ("block", 3, false),
                ("block", 3, false),
                ("net", 8, false),
                ("vsock", 3, false),
                ("console", 2, false),
                ("fs", 2, false),
            ]
        );
        assert_eq!(view.devices[4].id, paths.tap_name());
    }

    #[test]
    fn the_pods_nics_are_inherited_tap_queues_with_the_veths_mac_and_mtu() {
        let (mut e, _) = backend(|c| c.devices.net_queues = 4);
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let fds = vec![fd(), fd()];
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        e.set_nics(vec![NicDevice {
            tap: "tap0_pulse".into(),
            fds,
            mac: [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05],
            mtu: 1450,
        }]);
        let vm = e.vm_config();
        assert_eq!(vm.net.len(), 1);
        let net = &vm.net[0];
        assert_eq!(net.tap, TapSource::Fds(raw));
        assert_eq!(net.queue_pairs, 2);
        assert_eq!(net.mac, Some(MacAddr([0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05])));
        assert_eq!(net.mtu, Some(1450));
        assert!(!net.link_up, "the tap is the shim's to bring up");
        let view = e.host_view();
        let net = view.devices.iter().find(|d| d.kind == "net").unwrap();
        assert_eq!((net.id.as_str(), net.queues), ("tap0_pulse", 4));
    }

    #[test]
    fn the_vmms_counters_go_to_the_device_of_the_same_kind_and_id() {
        let (e, _) = backend(|c| {
            c.devices.block_slots = 2;
            c.devices.shared_fs = false;
        });
        let stats = |device_type, id: &str, legacy_sent| TransportStats {
            device_type,
            id: id.into(),
            base: 0,
            queues: 1,
            msi_enabled: false,
            legacy_gsi: 5,
            legacy_sent,
            vectors: Vec::new(),
            requests_completed: Vec::new(),
            errors: Default::default(),
            faults: Default::default(),
            status: 0,
            rings: Vec::new(),
        };
        // Not in the configured order, and one device the shim did not configure.
        let vmm = [
            stats("vsock", "vsock0", 30),
            stats("block", "pulse-slot-1", 11),
            stats("block", "other", 99),
            stats("block", "pulse-slot-0", 10),
        ];
        let mut devices = e.configured_devices();
        add_counters(&mut devices, &vmm);
        let legacy: Vec<(&str, u64)> = devices
            .iter()
            .map(|d| (d.id.as_str(), d.interrupts.last().map_or(0, |v| v.sent)))
            .collect();
        assert_eq!(
            legacy,
            [("pulse-slot-0", 10), ("pulse-slot-1", 11), ("vsock0", 30)]
        );
    }

    #[tokio::test]
    async fn a_vm_that_cannot_start_is_a_clear_error_and_stop_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "ns", "p").unwrap();
        std::fs::create_dir_all(&paths.dir).unwrap();
        let mut config = PulseConfig::default();
        config.vm.kernel = dir.path().join("no-such-vmlinux");
        config.devices.shared_fs = false;
        let mut e = Embedded::new(VmSpec::of_config(&config, &paths), paths.clone(), None);
        e.vm_config().vsock.unwrap().validate().unwrap();
        let err = e.boot().await.unwrap_err().to_string();
        assert!(err.contains("the VM failed to start"), "{err}");
        assert!(e.exited().is_none());
        e.stop().await.unwrap();
        e.stop().await.unwrap();
        assert!(!paths.vsock().exists());
        assert_eq!(e.host_view().devices.len(), 5);
        assert!(e.resize_disk(0, 0).await.is_err());
        assert_eq!(
            crate::private_fs::mode_of(&paths.console()).unwrap(),
            0o600,
            "the console log is the shim's, private"
        );
    }
}
