//! Interrupts of virtio devices: GSI allocation and the VM's one KVM routing table
//! ([`routing::InterruptManager`]), and each device's interrupt resources, one legacy IOAPIC line
//! plus one MSI vector per queue and one for configuration changes
//! ([`device::DeviceInterrupts`]). Devices only see the [`Interrupt`] trait: they never know
//! whether the guest chose MSI or the legacy line.

pub mod device;
pub mod routing;

pub use device::{DeviceInterrupts, VectorRole, VectorStats};
pub use routing::InterruptManager;

/// What a device calls when it has used buffers or changed its configuration.
pub trait Interrupt: Send + Sync {
    /// Queue `queue` has used buffers for the driver.
    fn trigger(&self, queue: u16);
    /// The device configuration changed.
    fn trigger_config(&self);
}

/// An MSI message as the guest programs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address, low half: on x86 0xFEEx_xxxx, destination APIC ID in bits 19:12.
    pub address_lo: u32,
    /// Address, high half: zero on x86.
    pub address_hi: u32,
    /// Data: vector and delivery mode.
    pub data: u32,
}

/// The x86 MSI address window.
pub const MSI_ADDRESS_START: u32 = 0xfee0_0000;
/// Last address of the x86 MSI window.
pub const MSI_ADDRESS_END: u32 = 0xfeef_ffff;

impl MsiMessage {
    /// Whether an x86 LAPIC would accept this message: its address in the interrupt window and
    /// no high half.
    pub fn is_valid_x86(&self) -> bool {
        self.address_hi == 0 && (MSI_ADDRESS_START..=MSI_ADDRESS_END).contains(&self.address_lo)
    }

    /// Destination APIC ID (physical mode).
    pub fn destination(&self) -> u8 {
        (self.address_lo >> 12) as u8
    }

    /// The vector the LAPIC will raise.
    pub fn vector(&self) -> u8 {
        self.data as u8
    }
}

/// Interrupt setup errors.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The GSI space is exhausted.
    #[error("no GSI left for {wanted} more vectors (KVM allows {max})")]
    NoGsi {
        /// How many were asked for.
        wanted: usize,
        /// The limit.
        max: u32,
    },
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// KVM refused an ioctl.
    #[error("{op} failed: {source}")]
    Kvm {
        /// Which one.
        op: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_msi_window() {
        let ok = MsiMessage {
            address_lo: 0xfee0_1000,
            address_hi: 0,
            data: 0x41,
        };
        assert!(ok.is_valid_x86());
        assert_eq!((ok.destination(), ok.vector()), (1, 0x41));
        assert!(!MsiMessage {
            address_lo: 0xfed0_0000,
            ..ok
        }
        .is_valid_x86());
        assert!(!MsiMessage {
            address_hi: 1,
            ..ok
        }
        .is_valid_x86());
        assert!(MsiMessage {
            address_lo: MSI_ADDRESS_END,
            ..ok
        }
        .is_valid_x86());
    }
}
