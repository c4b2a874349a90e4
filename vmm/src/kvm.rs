//! The KVM system handle, the capabilities Pulse needs, and VM creation with the in-kernel
//! irqchip (LAPIC, IOAPIC, PIC) and PIT.

use std::os::fd::AsRawFd;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::layout;

/// Capabilities without which Pulse does not start, with why each one matters.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY (guest RAM)"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR (VM setup)"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID (CPUID setup)"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP (in-kernel LAPIC/IOAPIC)"),
    (Cap::Pit2, "KVM_CAP_PIT2 (in-kernel PIT)"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING (GSI routing for MSI)"),
    (Cap::Irqfd, "KVM_CAP_IRQFD (interrupts from device threads)"),
    (
        Cap::Ioeventfd,
        "KVM_CAP_IOEVENTFD (doorbells without a vCPU exit)",
    ),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI (MSI injection)"),
    (Cap::MpState, "KVM_CAP_MP_STATE (SMP bring-up)"),
    (
        Cap::ImmediateExit,
        "KVM_CAP_IMMEDIATE_EXIT (clean vCPU stop)",
    ),
];

/// Errors from the KVM layer.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` is missing.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or enable nested virtualization)")]
    NoDevice,
    /// `/dev/kvm` exists but cannot be opened by this user.
    #[error("no permission to open /dev/kvm: run as root or add this user to the kvm group")]
    NoPermission,
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A capability Pulse relies on is missing.
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    /// The host allows fewer vCPUs than configured.
    #[error("{requested} vCPUs requested but KVM allows at most {max}")]
    TooManyVcpus {
        /// Configured count.
        requested: u8,
        /// KVM's KVM_CAP_MAX_VCPUS.
        max: usize,
    },
    /// An ioctl during VM creation failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { op, source }
}

/// Opens `/dev/kvm` and checks the API version and every capability in [`REQUIRED_CAPS`].
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::NoDevice,
        libc::EACCES | libc::EPERM => KvmError::NoPermission,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates a VM with the in-kernel irqchip and PIT, and KVM's TSS and identity-map pages placed
/// at the top of the MMIO gap.
pub fn create_vm(kvm: &Kvm, vcpus: u8) -> Result<VmFd, KvmError> {
    let max = kvm.get_max_vcpus();
    if usize::from(vcpus) > max {
        return Err(KvmError::TooManyVcpus {
            requested: vcpus,
            max,
        });
    }
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(const { layout::low32(layout::KVM_TSS_START) } as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    // The PIT drives the guest's early timer calibration; its speaker port is a dummy.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    tracing::debug!(fd = vm.as_raw_fd(), vcpus, "KVM VM created");
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_kvm_and_creates_a_vm() {
        let kvm = open_kvm().expect("/dev/kvm with every required capability");
        create_vm(&kvm, 2).expect("VM with irqchip and PIT");
    }

    #[test]
    fn too_many_vcpus_is_a_clear_error() {
        let kvm = open_kvm().unwrap();
        let err = create_vm(&kvm, 255);
        if kvm.get_max_vcpus() < 255 {
            assert!(matches!(
                err,
                Err(KvmError::TooManyVcpus { requested: 255, .. })
            ));
        }
    }
}
