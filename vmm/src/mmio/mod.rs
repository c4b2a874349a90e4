//! virtio-mmio: the transport (virtio 1.x, Version 2) with Pulse's per-queue MSI extension
//! (docs/virtio-mmio-msi.md), and the kernel command-line entries that announce its devices.

pub mod registers;
pub mod transport;

pub use transport::{MmioTransport, RingSnapshot, TransportErrors, TransportStats};

use crate::layout;

/// Base address of device slot `slot`.
pub fn slot_base(slot: u32) -> u64 {
    layout::MMIO_DEVICES_START + u64::from(slot) * layout::MMIO_DEVICE_WINDOW
}

/// Legacy GSI of device slot `slot`.
pub fn slot_gsi(slot: u32) -> u32 {
    layout::FIRST_DEVICE_GSI + slot
}

/// Highest number of virtio-mmio devices: their legacy lines must fit on the IOAPIC.
pub const MAX_DEVICES: u32 = layout::IOAPIC_PINS - layout::FIRST_DEVICE_GSI;

/// The `virtio_mmio.device=8K@<base>:<irq>` entry that tells Linux (and the probe) about a
/// device.
pub fn cmdline_entry(base: u64, gsi: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{}",
        layout::MMIO_DEVICE_WINDOW / 1024,
        base,
        gsi
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_have_their_own_window_and_line() {
        assert_eq!(slot_base(0), 0xd000_0000);
        assert_eq!(slot_base(2), 0xd000_4000);
        assert_eq!(slot_gsi(0), 5);
        assert_eq!(
            cmdline_entry(slot_base(1), slot_gsi(1)),
            "virtio_mmio.device=8K@0xd0002000:6"
        );
        assert!(slot_gsi(MAX_DEVICES - 1) < layout::IOAPIC_PINS);
    }
}
