//! The VMM behind a sandbox: one trait, two backends.
//!
//! - [`embedded`]: `pulse-vmm` in the shim's process (the default);
//! - [`qemu`]: QEMU's `microvm` machine in a child process, for hosts (and
//!   tests) where the embedded VMM cannot boot Linux.
//!
//! A backend boots the VM with the pod's empty block slots (their files are
//! [`crate::block_slots`]'), hands out the hybrid-vsock socket the agent is
//! reached through, makes a disk image written into a slot visible to the guest
//! (a capacity change the guest is told about), describes what it configured,
//! and stops the VM.

pub mod child;
pub mod embedded;
mod error;
pub mod qemu;
pub mod qmp;
mod spec;
pub mod virtiofsd;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::cgroup::PodCgroup;
use crate::config::{Backend, QemuConfig};
use crate::ids::{self, IdError, IdKind};
use crate::network::NicDevice;

pub use error::HypervisorError;
pub use spec::{SharedDir, VmSpec};

/// A device as the VMM configured it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostDevice {
    /// `block`, `vsock`, `net`, `console`.
    pub kind: String,
    /// The slot serial of a block device; the device's name otherwise.
    pub id: String,
    /// Queues the device offers (data queues; for net: queue pairs x 2).
    pub queues: u16,
    /// Whether the VMM offers per-queue MSI on it.
    pub msi: bool,
    /// Interrupts the VMM raised, per vector, when it counts them.
    pub interrupts: Vec<HostVector>,
}

impl HostDevice {
    /// A device of `kind` as the configuration asks for it, its interrupts not counted.
    pub fn configured(kind: &str, id: impl Into<String>, queues: u16, msi: bool) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
            queues,
            msi,
            interrupts: Vec::new(),
        }
    }
}

/// One interrupt vector's host-side count.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostVector {
    /// `config`, `queue0`, ..., or `legacy`.
    pub name: String,
    /// Interrupts raised.
    pub sent: u64,
}

/// What the VMM built.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostView {
    /// `embedded` or `qemu`.
    pub backend: String,
    /// `kvm` or `tcg` (for qemu), `kvm` (embedded).
    pub accel: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// The devices, in slot order.
    pub devices: Vec<HostDevice>,
    /// Host processes that make up the VM (the shim itself for embedded).
    pub pids: Vec<u32>,
}

/// Files of one sandbox, all under its directory.
#[derive(Clone, Debug)]
pub struct SandboxPaths {
    /// `<state_dir>/<namespace>/<pod>`.
    pub dir: PathBuf,
}

impl SandboxPaths {
    /// The directory of pod `pod` in `namespace`; both must be valid ids, so
    /// that the directory is always below `state_dir`.
    pub fn new(state_dir: &Path, namespace: &str, pod: &str) -> Result<Self, IdError> {
        ids::validate(IdKind::Namespace, namespace)?;
        ids::validate(IdKind::Pod, pod)?;
        Ok(Self {
            dir: state_dir.join(namespace).join(pod),
        })
    }

    /// The hybrid-vsock socket (host side of the guest's vsock).
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    /// Where the guest agent says it serves: the hybrid-vsock socket of
    /// host port [`pulse_protocols::DEFAULT_READY_PORT`] (`vm.vsock_1023`).
    pub fn ready(&self) -> PathBuf {
        pulse_vmm::devices::vsock::unix::forward_path(
            &self.vsock(),
            pulse_protocols::DEFAULT_READY_PORT,
        )
    }

    /// The vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vhost(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }

    /// The vhost-user socket between QEMU and virtiofsd (`devices.shared_fs`).
    pub fn virtiofs(&self) -> PathBuf {
        // Short: with CRI's 64-character pod ids every byte of a socket path counts.
        self.dir.join("fs.sock")
    }

    /// QEMU's QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The guest console.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The virtio-console's output (`devices.virtio_console`).
    pub fn hvc_console(&self) -> PathBuf {
        self.dir.join("hvc0.log")
    }

    /// The pod's tap (`devices.net_queues` > 0): `pulse` and 8 hex digits of a
    /// hash of the sandbox directory, within the 15 bytes of an interface name.
    pub fn tap_name(&self) -> String {
        // FNV-1a: stable across builds, so `pulse-ctl` and tests can compute it too.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in self.dir.as_os_str().as_encoded_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        format!("pulse{hash:08x}")
    }

    /// The management socket (`/metrics`, `/report`).
    pub fn mgmt(&self) -> PathBuf {
        self.dir.join(pulse_protocols::MANAGEMENT_SOCKET)
    }

    /// The state file the `delete` subcommand reads.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The disk image behind block slot `slot`.
    pub fn slot_image(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("slot-{slot}.img"))
    }

    /// Where a container's rootfs is mounted while its disk image is made.
    pub fn staging(&self, container: &str) -> Result<PathBuf, IdError> {
        ids::validate(IdKind::Container, container)?;
        Ok(self.dir.join("rootfs").join(container))
    }
}

/// A VM for one pod.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Starts the VM with its empty block slots; returns once the VMM runs
    /// (the guest may still be booting).
    async fn boot(&mut self) -> Result<(), HypervisorError>;

    /// The hybrid-vsock socket the agent is reached through.
    fn agent_socket(&self) -> PathBuf;

    /// The image behind block slot `slot` ([`crate::block_slots`]) now holds `bytes` bytes:
    /// a disk the shim wrote, or nothing (0) once its container is gone. Makes the guest see
    /// it: the device's capacity changes and the guest is interrupted.
    async fn resize_disk(&mut self, slot: usize, bytes: u64) -> Result<(), HypervisorError>;

    /// The pod's network cards, given before [`Hypervisor::boot`]: taps made in the pod's
    /// network namespace ([`crate::network`]), handed over as their queue descriptors. Without
    /// any, `devices.net_queues` > 0 gives one card on a tap of the shim's own namespace named
    /// [`SandboxPaths::tap_name`], connected to nothing (a pod in a new, empty namespace).
    fn set_nics(&mut self, nics: Vec<NicDevice>);

    /// The tag of the VM's virtio-fs device, which exports the pod's share
    /// ([`crate::shared_fs`], prepared before [`Hypervisor::boot`]); `None`: the VM has none.
    fn shared_fs_tag(&self) -> Option<&'static str> {
        None
    }

    /// What the VMM configured, with host-side counters where it has them.
    fn host_view(&self) -> HostView;

    /// Whether the VM stopped by itself; the reason.
    fn exited(&mut self) -> Option<String>;

    /// Stops the VM and waits for its threads or processes to end. Safe to call
    /// twice, and after a failed boot.
    async fn stop(&mut self) -> Result<(), HypervisorError>;
}

/// The command line every backend gives the guest, before its device entries.
pub fn base_cmdline(spec: &VmSpec, tcg: bool) -> String {
    // `quiet`: each byte on the emulated UART is an exit to the VMM, so a chatty boot is a slow
    // one (in the nested rig the L2 agent served 4.0-4.6 s after start with it, 18.4 s
    // without). Errors and worse still reach the console (a panic), and the agent puts the
    // console back at level 7 once it runs (the OOM killer's lines, read by the shim);
    // `loglevel=7` in `vm.kernel_params`, which comes later, shows the whole boot.
    let mut cmdline = String::from("console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nokbd quiet");
    // Unknown NAME=value parameters become init's environment: the agent's
    // port, and the host port it announces itself on once it serves.
    cmdline.push_str(&format!(
        " PULSE_AGENT_LISTEN=vsock://{} PULSE_AGENT_READY_PORT={}",
        spec.agent_port,
        pulse_protocols::DEFAULT_READY_PORT
    ));
    if tcg {
        // Under the software emulator the TSC check fails and the clock falls back to jiffies.
        cmdline.push_str(" tsc=reliable");
    }
    if !spec.kernel_params.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(spec.kernel_params.trim());
    }
    cmdline
}

/// A `backend` for the VM `spec` (`qemu` holds the qemu backend's own settings); the VM's
/// processes or threads go into `cgroup`.
pub fn create(
    backend: Backend,
    spec: VmSpec,
    qemu: &QemuConfig,
    paths: SandboxPaths,
    cgroup: Option<Arc<PodCgroup>>,
) -> Box<dyn Hypervisor> {
    match backend {
        Backend::Embedded => Box::new(embedded::Embedded::new(spec, paths, cgroup)),
        Backend::Qemu => Box::new(qemu::Qemu::new(spec, qemu.clone(), paths, cgroup)),
    }
}

/// Whether this host can run KVM guests natively: `/dev/kvm` opens and the CPU
/// has VT-x or AMD-V.
pub fn host_has_hw_virt() -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    kvm && cpu_has_vmx_or_svm(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// Whether a `/proc/cpuinfo` text lists the vmx or svm flag.
pub fn cpu_has_vmx_or_svm(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PulseConfig;

    #[test]
    fn vmx_and_svm_are_found_in_cpuinfo() {
        assert!(cpu_has_vmx_or_svm("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_vmx_or_svm("processor: 0\nflags : svm lm\n"));
        assert!(!cpu_has_vmx_or_svm("flags : fpu vmxnet\nbugs : svm\n"));
    }

    #[test]
    fn sandbox_files_live_in_one_directory() {
        let p = SandboxPaths::new(Path::new("/run/pulse"), "default", "pod1").unwrap();
        assert_eq!(p.vsock(), Path::new("/run/pulse/default/pod1/vm.vsock"));
        assert_eq!(
            p.ready(),
            Path::new("/run/pulse/default/pod1/vm.vsock_1023")
        );
        assert_eq!(
            p.slot_image(2),
            Path::new("/run/pulse/default/pod1/slot-2.img")
        );
        assert!(p.staging("c").unwrap().starts_with(&p.dir));
        assert!(p.staging("../../etc").is_err());
        let tap = p.tap_name();
        assert!(tap.len() <= 15 && tap.starts_with("pulse"), "{tap}");
        assert_eq!(
            tap,
            SandboxPaths::new(Path::new("/run/pulse"), "default", "pod1")
                .unwrap()
                .tap_name()
        );
        assert_ne!(
            tap,
            SandboxPaths::new(Path::new("/run/pulse"), "default", "pod2")
                .unwrap()
                .tap_name()
        );
    }

    #[test]
    fn a_pod_id_cannot_leave_the_state_dir() {
        let err = SandboxPaths::new(Path::new("/run/pulse"), "default", "../../etc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid pod id \"../../etc\""), "{err}");
        let err = SandboxPaths::new(Path::new("/run/pulse"), "..", "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid namespace"), "{err}");
    }

    #[test]
    fn cmdline_has_the_extra_params() {
        let paths = SandboxPaths::new(Path::new("/run/pulse"), "ns", "p").unwrap();
        let spec = |config: &PulseConfig| VmSpec::of_config(config, &paths);
        let mut config = PulseConfig::default();
        config.vm.kernel_params = " loglevel=7 ".into();
        let c = base_cmdline(&spec(&config), true);
        assert!(c.starts_with("console=ttyS0 reboot=t panic=-1"));
        // The user's parameters come last, so their `loglevel` overrides the default `quiet`.
        assert!(c.contains(" quiet "), "{c}");
        assert!(c.ends_with("tsc=reliable loglevel=7"), "{c}");
        assert!(!base_cmdline(&spec(&PulseConfig::default()), false).contains("tsc"));
        config.agent.port = 2000;
        let c = base_cmdline(&spec(&config), false);
        assert!(
            c.contains(" PULSE_AGENT_LISTEN=vsock://2000 PULSE_AGENT_READY_PORT=1023 "),
            "the agent learns its port and where to announce itself: {c}"
        );
    }
}
