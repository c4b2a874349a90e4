//! Interrupts of virtio devices: GSI allocation and the VM's one KVM routing table
//! ([`routing::InterruptManager`]), and each device's interrupt resources, one legacy IOAPIC line
//! plus one MSI vector per queue and one for configuration changes
//! ([`device::DeviceInterrupts`]). Devices only see the [`Interrupt`] trait: they never know
//! whether the guest chose MSI or the legacy line.

pub mod device;
pub mod routing;

pub use device::{DeviceInterrupts, VectorRole, VectorStats, VectorUpdate};
pub use routing::InterruptManager;

/// What a device calls when it has used buffers or changed its configuration.
pub trait Interrupt: Send + Sync {
    /// Queue `queue` has used buffers for the driver.
    fn trigger(&self, queue: u16);
    /// The device configuration changed.
    fn trigger_config(&self);
    /// The device hit a guest error it cannot recover from without a reset (e.g. a queue the
    /// driver broke): the transport shows DEVICE_NEEDS_RESET and the driver gets a
    /// configuration-change interrupt.
    fn needs_reset(&self);
    /// An eventfd that interrupts the guest for queue `queue` without passing through the VMM:
    /// the queue's MSI vector's irqfd (an interrupt raised while the vector is masked waits in
    /// it until unmask, as one raised by [`Interrupt::trigger`] does). For a device whose
    /// queues another process serves (vhost-user), registered there as the queue's call
    /// eventfd. `None` where there is none (the legacy line, a vector the guest did not
    /// program): the device relays with [`Interrupt::trigger`] then. Interrupts raised through
    /// it are not in the VMM's `sent` counts.
    fn queue_irqfd(&self, _queue: u16) -> Option<vmm_sys_util::eventfd::EventFd> {
        None
    }
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

/// Lowest vector a device may raise: 0-15 are the CPU's exceptions.
pub const MIN_MSI_VECTOR: u8 = 16;

/// Why an MSI message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsiRejection {
    /// The address is outside the LAPIC window, or has a high half.
    #[error("address outside the x86 interrupt window")]
    Address,
    /// A delivery mode other than fixed or lowest priority (SMI, NMI, INIT, ExtINT, ...).
    #[error("delivery mode {0} is not fixed or lowest priority")]
    DeliveryMode(u8),
    /// A vector below 16: an exception, not an interrupt.
    #[error("vector {0} is below 16")]
    Vector(u8),
}

/// MSI data: delivery mode in bits 10:8.
const DELIVERY_MODE_SHIFT: u32 = 8;
/// Delivery mode: fixed.
const DELIVERY_FIXED: u8 = 0;
/// Delivery mode: lowest priority.
const DELIVERY_LOWEST_PRIORITY: u8 = 1;

impl MsiMessage {
    /// Checks that an x86 LAPIC would take this as an ordinary device interrupt: the address
    /// in the interrupt window without a high half, a fixed or lowest-priority delivery mode,
    /// and a vector of 16 or more. Anything else (NMI, SMI, INIT, ExtINT, exception vectors)
    /// would let the guest's device poke at the CPU in ways no driver needs.
    pub fn check_x86(&self) -> Result<(), MsiRejection> {
        if self.address_hi != 0 || !(MSI_ADDRESS_START..=MSI_ADDRESS_END).contains(&self.address_lo)
        {
            return Err(MsiRejection::Address);
        }
        let mode = self.delivery_mode();
        if mode != DELIVERY_FIXED && mode != DELIVERY_LOWEST_PRIORITY {
            return Err(MsiRejection::DeliveryMode(mode));
        }
        if self.vector() < MIN_MSI_VECTOR {
            return Err(MsiRejection::Vector(self.vector()));
        }
        Ok(())
    }

    /// Whether [`MsiMessage::check_x86`] accepts it.
    pub fn is_valid_x86(&self) -> bool {
        self.check_x86().is_ok()
    }

    /// Delivery mode (data bits 10:8).
    pub fn delivery_mode(&self) -> u8 {
        ((self.data >> DELIVERY_MODE_SHIFT) & 0x7) as u8
    }

    /// Destination APIC ID (physical mode).
    pub fn destination(&self) -> u8 {
        ((self.address_lo >> 12) & 0xff) as u8
    }

    /// The vector the LAPIC will raise.
    pub fn vector(&self) -> u8 {
        (self.data & 0xff) as u8
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

    #[test]
    fn only_fixed_and_lowest_priority_device_vectors_are_accepted() {
        let with = |data: u32| MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data,
        };
        assert_eq!(with(0x41).check_x86(), Ok(()));
        assert_eq!(with(0x141).check_x86(), Ok(()), "lowest priority");
        for (mode, name) in [
            (2, "SMI"),
            (4, "NMI"),
            (5, "INIT"),
            (6, "SIPI"),
            (7, "ExtINT"),
        ] {
            assert_eq!(
                with((mode << 8) | 0x41).check_x86(),
                Err(MsiRejection::DeliveryMode(u8::try_from(mode).unwrap())),
                "{name}"
            );
        }
        assert_eq!(with(2).check_x86(), Err(MsiRejection::Vector(2)));
        assert_eq!(with(15).check_x86(), Err(MsiRejection::Vector(15)));
        assert_eq!(with(16).check_x86(), Ok(()));
    }
}
