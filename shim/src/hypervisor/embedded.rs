//! The `embedded` backend: `pulse-vmm` in the shim's own process.
//!
//! What works against the current `pulse-vmm` API: the VM is built with
//! [`pulse_vmm::Vm::start`] from the pod's kernel, initramfs, vCPUs, memory and
//! its empty block slots (virtio-blk over placeholder files, with the slot
//! serials and queue counts), the guest console goes to the sandbox's console
//! log, the device view comes from [`pulse_vmm::Vm::device_stats`] (queues,
//! MSI state, per-vector interrupt counts), and stop joins every VM thread.
//!
//! What needs the VMM (marked `NEEDS-VMM` below):
//! - a hybrid-vsock device in `VmConfig` (host side: a unix socket that
//!   answers `CONNECT <port>\n` with `OK <port>\n`), so the agent can be reached;
//! - a way to tell a block device that its backing file changed size: re-read
//!   the length, update `capacity` in the config space, bump
//!   `config_generation` and raise the configuration-change interrupt;
//! - a switch to offer or withhold per-queue MSI (`devices.msi = false`).

use std::path::PathBuf;

use async_trait::async_trait;
use pulse_vmm::devices::block::{BlockConfig, DEFAULT_QUEUE_SIZE};
use pulse_vmm::{KernelSource, SerialOutput, Vm, VmConfig};

use super::{
    base_cmdline, create_placeholders, HostDevice, HostVector, HostView, Hypervisor,
    HypervisorError, SandboxPaths,
};
use crate::config::PulseConfig;
use crate::state::slot_serial;

/// pulse-vmm in-process.
pub struct Embedded {
    config: PulseConfig,
    paths: SandboxPaths,
    vm: Option<Vm>,
    exit_reason: Option<String>,
}

impl Embedded {
    /// A backend for `config`, not started.
    pub fn new(config: PulseConfig, paths: SandboxPaths) -> Self {
        Self {
            config,
            paths,
            vm: None,
            exit_reason: None,
        }
    }

    /// The VMM's configuration for this pod.
    pub fn vm_config(&self) -> VmConfig {
        let c = &self.config;
        let mut vm = VmConfig::new(KernelSource::Path(c.vm.kernel.clone()));
        vm.initrd = Some(c.vm.initramfs.clone());
        vm.cmdline = base_cmdline(c, false);
        vm.vcpus = c.vm.vcpus;
        vm.memory_mib = c.vm.memory_mib;
        vm.serial = SerialOutput::File(self.paths.console());
        vm.block = (0..c.devices.block_slots)
            .map(|slot| BlockConfig {
                path: self.paths.slot_image(slot),
                read_only: false,
                queues: c.block_queues(),
                queue_size: DEFAULT_QUEUE_SIZE,
                serial: Some(slot_serial(slot)),
            })
            .collect();
        // NEEDS-VMM: `vm.vsock = Some(VsockConfig { cid: 3, uds: self.paths.vsock() })`
        // once pulse-vmm's VmConfig has its hybrid-vsock device.
        // NEEDS-VMM: `vm.msi = c.devices.msi` (offer per-queue MSI or not).
        // NEEDS-VMM: net (`devices.net_queues`) and console devices.
        vm
    }
}

/// Why the embedded backend cannot reach the agent yet.
const NO_VSOCK: &str = "the embedded backend cannot reach the guest agent yet: pulse-vmm has no \
                        hybrid-vsock device in VmConfig; set [hypervisor] backend = \"qemu\" in \
                        the pulse config";

#[async_trait]
impl Hypervisor for Embedded {
    async fn boot(&mut self) -> Result<(), HypervisorError> {
        // Without vsock the guest would boot but never be reachable: refuse up
        // front, before a VM exists. NEEDS-VMM: drop this once vsock is there.
        if !vmm_has_vsock() {
            return Err(HypervisorError::Unsupported(NO_VSOCK.into()));
        }
        create_placeholders(&self.paths, self.config.devices.block_slots)?;
        let config = self.vm_config();
        let vm = tokio::task::spawn_blocking(move || Vm::start(&config))
            .await
            .map_err(|e| HypervisorError::Boot(e.to_string()))?
            .map_err(|e| HypervisorError::Boot(e.to_string()))?;
        self.vm = Some(vm);
        Ok(())
    }

    fn agent_socket(&self) -> Result<PathBuf, HypervisorError> {
        if vmm_has_vsock() {
            Ok(self.paths.vsock())
        } else {
            Err(HypervisorError::Unsupported(NO_VSOCK.into()))
        }
    }

    fn slot_image(&self, slot: usize) -> PathBuf {
        self.paths.slot_image(slot)
    }

    async fn attach_disk(&mut self, slot: usize, _bytes: u64) -> Result<(), HypervisorError> {
        // NEEDS-VMM: `vm.block_resized(slot)` (re-read the file size, update the
        // capacity, raise the config-change interrupt).
        Err(HypervisorError::Unsupported(format!(
            "the embedded backend cannot signal a capacity change on block slot {slot} yet \
             (pulse-vmm has no block resize call)"
        )))
    }

    async fn detach_disk(&mut self, slot: usize) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "the embedded backend cannot empty block slot {slot} yet (pulse-vmm has no block resize call)"
        )))
    }

    fn host_view(&self) -> HostView {
        let c = &self.config;
        let stats = self.vm.as_ref().map(Vm::device_stats).unwrap_or_default();
        let serials: Vec<String> = (0..c.devices.block_slots).map(slot_serial).collect();
        let devices = if stats.is_empty() {
            serials
                .into_iter()
                .map(|id| HostDevice {
                    kind: "block".into(),
                    id,
                    queues: c.block_queues(),
                    msi: c.devices.msi,
                    interrupts: Vec::new(),
                })
                .collect()
        } else {
            stats
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut interrupts: Vec<HostVector> = s
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
                    interrupts.push(HostVector {
                        name: "legacy".into(),
                        sent: s.legacy_sent,
                    });
                    HostDevice {
                        kind: s.device_type.to_string(),
                        id: serials.get(i).cloned().unwrap_or_else(|| format!("dev{i}")),
                        queues: s.queues,
                        msi: s.msi_enabled,
                        interrupts,
                    }
                })
                .collect()
        };
        HostView {
            backend: "embedded".into(),
            accel: "kvm".into(),
            vcpus: c.vm.vcpus,
            memory_mib: c.vm.memory_mib,
            devices,
            pids: vec![std::process::id()],
        }
    }

    fn exited(&mut self) -> Option<String> {
        // NEEDS-VMM: a non-blocking "has the VM stopped, and why" (Vm::wait takes &mut and blocks).
        self.exit_reason.clone()
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(mut vm) = self.vm.take() {
            let exit = tokio::task::spawn_blocking(move || vm.stop())
                .await
                .map_err(|e| HypervisorError::Control(e.to_string()))?;
            self.exit_reason = Some(format!("{exit:?}"));
        }
        Ok(())
    }
}

/// Whether the linked pulse-vmm can give the guest a hybrid-vsock device.
/// NEEDS-VMM: true once `VmConfig` has `vsock`.
fn vmm_has_vsock() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_config_has_the_slots_and_the_console() {
        let mut config = PulseConfig::default();
        config.vm.vcpus = 2;
        config.devices.block_slots = 3;
        let paths = SandboxPaths::new(std::path::Path::new("/run/pulse"), "ns", "p");
        let e = Embedded::new(config, paths.clone());
        let vm = e.vm_config();
        assert_eq!(vm.block.len(), 3);
        assert_eq!(vm.block[1].serial.as_deref(), Some("pulse-slot-1"));
        assert_eq!(vm.block[1].queues, 2);
        assert!(matches!(vm.serial, SerialOutput::File(ref p) if *p == paths.console()));
        assert!(vm.cmdline.starts_with("console=ttyS0"));
    }

    #[tokio::test]
    async fn boot_without_vsock_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "ns", "p");
        let mut e = Embedded::new(PulseConfig::default(), paths);
        let err = e.boot().await.unwrap_err().to_string();
        assert!(err.contains("backend = \"qemu\""), "{err}");
        e.stop().await.unwrap();
        assert_eq!(e.host_view().devices.len(), 4);
    }
}
