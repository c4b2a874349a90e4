//! The virtio-mmio transport (virtio 1.x, "Version 2"): register offsets in a device window,
//! the values read from it, and Pulse's per-queue MSI extension (`docs/virtio-mmio-msi.md`).
//! 16-bit registers are marked; the VMM ignores accesses of the wrong width.

/// "virt".
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Virtio 1.x virtio-mmio.
pub const VERSION: u32 = 2;

/// MagicValue (R).
pub const MAGIC: u64 = 0x000;
/// Version (R).
pub const VERSION_REG: u64 = 0x004;
/// DeviceID (R).
pub const DEVICE_ID: u64 = 0x008;
/// VendorID (R): the extension's signature and feature byte.
pub const VENDOR_ID: u64 = 0x00c;
/// DeviceFeatures (R).
pub const DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel (W).
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures (W).
pub const DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel (W).
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel (W).
pub const QUEUE_SEL: u64 = 0x030;
/// QueueNumMax (R).
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum (W).
pub const QUEUE_NUM: u64 = 0x038;
/// QueueReady (RW).
pub const QUEUE_READY: u64 = 0x044;
/// QueueNotify (W); NotifyInfo (R) with the extension.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus (R).
pub const INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK (W).
pub const INTERRUPT_ACK: u64 = 0x064;
/// Status (RW).
pub const STATUS: u64 = 0x070;
/// QueueDescLow (W).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDescHigh (W).
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow (W): the available ring.
pub const QUEUE_AVAIL_LOW: u64 = 0x090;
/// QueueDriverHigh (W).
pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
/// QueueDeviceLow (W): the used ring.
pub const QUEUE_USED_LOW: u64 = 0x0a0;
/// QueueDeviceHigh (W).
pub const QUEUE_USED_HIGH: u64 = 0x0a4;
/// MSI_CSR (16-bit RW).
pub const MSI_CSR: u64 = 0x0c0;
/// MSI_CMD (16-bit W).
pub const MSI_CMD: u64 = 0x0c2;
/// MSI_ADDRESS_LOW (32-bit W, latched).
pub const MSI_ADDRESS_LOW: u64 = 0x0c4;
/// MSI_ADDRESS_HIGH (32-bit W, latched).
pub const MSI_ADDRESS_HIGH: u64 = 0x0c8;
/// MSI_DATA (32-bit W, latched).
pub const MSI_DATA: u64 = 0x0cc;
/// ConfigGeneration (R).
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// Device configuration space.
pub const CONFIG_SPACE: u64 = 0x100;
/// End of the configuration space.
pub const CONFIG_SPACE_END: u64 = 0x1000;
/// Per-queue doorbells: queue q at DOORBELLS + 4*q.
pub const DOORBELLS: u64 = 0x1000;
/// Size of a device window.
pub const WINDOW_SIZE: u64 = 0x2000;

/// Top 24 bits of VendorID: "this device speaks the MSI extension".
pub const VENDOR_SIGNATURE: u32 = 0xdbfc_db00;
/// Feature: legacy InterruptStatus always reports the used-buffer bit (not offered by Pulse).
pub const VENDOR_F_INTR_USED: u32 = 0x01;
/// Feature: per-queue MSI.
pub const VENDOR_F_MSI: u32 = 0x02;
/// Feature: per-queue doorbells.
pub const VENDOR_F_PER_QUEUE_NOTIFY: u32 = 0x04;
/// Feature (Pulse): MSI_CSR bits 0-10 give the vector count.
pub const VENDOR_F_MSI_VECTOR_COUNT: u32 = 0x10;

/// NotifyInfo: doorbell of queue q at window + 0x1000 + 4*q.
pub const NOTIFY_INFO: u32 = (4 << 16) | 0x1000;

/// MSI_CSR bit 15: MSI offered (read) / enable (write).
pub const MSI_CSR_ENABLE: u16 = 1 << 15;
/// MSI_CSR bit 14 (Pulse): MSI enabled now.
pub const MSI_CSR_ACTIVE: u16 = 1 << 14;
/// MSI_CSR bits 0-10 (Pulse): vector count.
pub const MSI_CSR_VECTORS_MASK: u16 = 0x7ff;

/// MSI_CMD operation: commit the latched address/data to a vector.
pub const MSI_CMD_UPDATE: u16 = 1;
/// MSI_CMD operation: mask a vector.
pub const MSI_CMD_MASK: u16 = 2;
/// MSI_CMD operation: unmask a vector.
pub const MSI_CMD_UNMASK: u16 = 3;

// The window holds the registers, the config space, then the doorbells.
const _: () = assert!(CONFIG_GENERATION < CONFIG_SPACE && CONFIG_SPACE_END <= DOORBELLS);
const _: () = assert!(DOORBELLS < WINDOW_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_follow_the_config_space_inside_the_window() {
        assert_eq!(CONFIG_SPACE_END, DOORBELLS);
        // NotifyInfo is (scale << 16) | base: the doorbell of queue q at DOORBELLS + 4 * q.
        assert_eq!(u64::from(NOTIFY_INFO & 0xffff), DOORBELLS);
        assert_eq!(NOTIFY_INFO >> 16, 4);
    }

    #[test]
    fn msi_extension_bits_do_not_overlap() {
        // VendorID: the signature in the top 24 bits, the feature byte below it.
        assert_eq!(VENDOR_SIGNATURE & 0xff, 0);
        for f in [
            VENDOR_F_INTR_USED,
            VENDOR_F_MSI,
            VENDOR_F_PER_QUEUE_NOTIFY,
            VENDOR_F_MSI_VECTOR_COUNT,
        ] {
            assert_eq!(f & !0xff, 0);
            assert_eq!(f.count_ones(), 1);
        }
        assert_eq!(MSI_CSR_ENABLE & MSI_CSR_ACTIVE, 0);
        assert_eq!((MSI_CSR_ENABLE | MSI_CSR_ACTIVE) & MSI_CSR_VECTORS_MASK, 0);
        // MSI_CMD: the operation in bits 15-12.
        assert!([MSI_CMD_UPDATE, MSI_CMD_MASK, MSI_CMD_UNMASK]
            .iter()
            .all(|&op| op <= 0xf));
    }
}
