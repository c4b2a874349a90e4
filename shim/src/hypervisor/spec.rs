//! What a backend builds: the pod's VM, narrowed from the pulse config to what a VMM needs.
//! The sandbox makes it (with the block slots' disks and the pod's share), so that the
//! backends see neither the shim's whole configuration nor the sandbox's other parts.

use std::path::PathBuf;
use std::time::Duration;

use crate::block_slots::SlotDisk;
use crate::config::PulseConfig;

/// The pod's share as the VM exports it: a virtio-fs device served by virtiofsd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedDir {
    /// The device's tag, which the guest mounts it by.
    pub tag: &'static str,
    /// The host directory virtiofsd exports.
    pub export: PathBuf,
}

/// The pod's VM (see the module).
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest's initramfs (the agent is its init).
    pub initramfs: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// The vsock port the agent serves on (the guest learns it from its command line).
    pub agent_port: u32,
    /// Extra kernel parameters (`vm.kernel_params`).
    pub kernel_params: String,
    /// The block slots, in slot order, each over its (empty) image.
    pub disks: Vec<SlotDisk>,
    /// Queues per block device.
    pub block_queues: u16,
    /// Queue pairs of the network card on a tap of the shim's own namespace, used when the
    /// pod brings no NICs ([`super::Hypervisor::set_nics`]); 0: no card.
    pub net_queues: u16,
    /// Whether the VMM offers per-queue MSI.
    pub msi: bool,
    /// Whether the VM has a virtio-console (`hvc0`).
    pub virtio_console: bool,
    /// The pod's share, when the VM has one.
    pub shared_dir: Option<SharedDir>,
    /// Whether the embedded VMM's threads run under their seccomp filters.
    pub seccomp: bool,
    /// The cap of each console or helper log.
    pub log_max_bytes: u64,
    /// The virtiofsd program.
    pub virtiofsd: PathBuf,
    /// How long the VMM's own control channel (QEMU's QMP) may take to answer at boot.
    pub start_timeout: Duration,
}

impl VmSpec {
    /// The VM `config` asks for, with `disks` and the share `shared_dir`.
    pub fn new(config: &PulseConfig, disks: Vec<SlotDisk>, shared_dir: Option<SharedDir>) -> Self {
        Self {
            kernel: config.vm.kernel.clone(),
            initramfs: config.vm.initramfs.clone(),
            vcpus: config.vm.vcpus,
            memory_mib: config.vm.memory_mib,
            agent_port: config.agent.port,
            kernel_params: config.vm.kernel_params.clone(),
            disks,
            block_queues: config.block_queues(),
            net_queues: config.devices.net_queues,
            msi: config.devices.msi,
            virtio_console: config.devices.virtio_console,
            shared_dir,
            seccomp: config.hypervisor.seccomp,
            log_max_bytes: config.console_log_max_bytes(),
            virtiofsd: config.qemu.virtiofsd_binary.clone(),
            start_timeout: config.connect_timeout(),
        }
    }

    /// The VM `config` asks for, with its slots and share in `paths`' directory, as the
    /// sandbox makes it.
    #[cfg(test)]
    pub fn of_config(config: &PulseConfig, paths: &super::SandboxPaths) -> Self {
        let disks = crate::block_slots::BlockSlots::new(paths, config.devices.block_slots).disks();
        let shared_dir = config.devices.shared_fs.then(|| SharedDir {
            tag: crate::shared_fs::TAG,
            export: crate::shared_fs::SharedFs::new(paths)
                .export_dir()
                .to_path_buf(),
        });
        Self::new(config, disks, shared_dir)
    }
}
