//! The virtio-mmio transport (virtio 1.x, Version 2) and Pulse's per-queue MSI extension
//! (`docs/virtio-mmio-msi.md`): register offsets, bit values, and the decisions the
//! driver makes from what it reads. No hardware access here, so all of it is unit-tested.

/// The window's register offsets and values, the MSI extension's included: the map the VMM
/// implements, from pulse-virtio-spec.
pub use pulse_virtio_spec::mmio as reg;

/// Device types and status bits, as the VMM defines them (pulse-virtio-spec).
pub use pulse_virtio_spec::{device_type, status};

/// Feature bits the driver cares about: the ring features (pulse-virtio-spec) and the block
/// device's multiqueue bit.
pub mod feature {
    pub use pulse_virtio_spec::feature::*;
    pub const BLK_MQ: u64 = 1 << 12;
}

/// MSI_CMD: the operation (`reg::MSI_CMD_*`) in bits 15-12, the vector in bits 11-0.
pub fn msi_cmd(op: u16, vector: u16) -> u16 {
    op << 12 | (vector & 0x0fff)
}

/// The extension's feature byte, if VendorID carries its signature.
pub fn vendor_features(vendor_id: u32) -> Option<u32> {
    (vendor_id & !0xff == reg::VENDOR_SIGNATURE).then_some(vendor_id & 0xff)
}

/// The features the driver accepts out of `offered`: VERSION_1 (required), MQ and EVENT_IDX
/// when offered. Nothing else: the probe uses neither indirect descriptors nor the block
/// device's optional commands.
pub fn negotiate(offered: u64) -> Result<u64, &'static str> {
    negotiate_from(offered, feature::BLK_MQ)
}

/// As [`negotiate`], with `extra` as the device-specific features the driver takes.
pub fn negotiate_from(offered: u64, extra: u64) -> Result<u64, &'static str> {
    if offered & feature::VERSION_1 == 0 {
        return Err("virtio: device is not virtio 1.x (no VERSION_1)");
    }
    Ok(offered & (feature::VERSION_1 | feature::RING_EVENT_IDX | extra))
}

/// Size of a driver's queue: the device's maximum capped at `cap`, rounded down to a power of
/// two (free-running u16 ring indexes wrap correctly only then). `None` for a missing queue.
pub fn queue_size(num_max: u32, cap: u16) -> Option<u16> {
    let n = num_max.min(cap as u32);
    if n == 0 {
        return None;
    }
    Some(1 << (31 - n.leading_zeros()))
}

/// Offset of queue `q`'s doorbell in the window from NotifyInfo `(scale << 16) | base`, if it
/// lies in the doorbell area of an 8 KiB window (beyond the config space, 4 bytes wide).
pub fn doorbell_offset(notify_info: u32, q: u16, window_size: u64) -> Option<u64> {
    let base = (notify_info & 0xffff) as u64;
    let scale = (notify_info >> 16) as u64;
    let off = base + scale * q as u64;
    (base >= 0x1000 && scale >= 4 && off + 4 <= window_size).then_some(off)
}

/// MSI address for fixed delivery to the xAPIC with id `apic_id`, physical destination.
pub fn msi_address(apic_id: u8) -> u32 {
    0xfee0_0000 | (apic_id as u32) << 12
}

/// MSI data: the IDT vector, fixed delivery, edge.
pub fn msi_data(vector: u8) -> u32 {
    vector as u32
}

/// Checks MSI_CSR read back after enabling `vectors` vectors: bit 14 (enabled now) must be
/// set; with MSI_VECTOR_COUNT the count in bits 0-10 must match too.
pub fn msi_csr_check(csr: u16, vectors: u16, has_count: bool) -> Result<(), &'static str> {
    if csr & reg::MSI_CSR_ACTIVE == 0 {
        return Err("msi: MSI_CSR does not show MSI enabled");
    }
    if has_count && csr & reg::MSI_CSR_VECTORS_MASK != vectors {
        return Err("msi: MSI_CSR vector count differs from queues + 1");
    }
    Ok(())
}

/// Split virtqueue layout (virtio 1.x, 2.7): offsets inside the three areas.
pub mod ring {
    pub const DESC_SIZE: usize = 16;
    pub const DESC_F_NEXT: u16 = 1;
    pub const DESC_F_WRITE: u16 = 2;
    /// Available ring: flags, idx, ring[size] (u16), used_event.
    pub const AVAIL_IDX: usize = 2;
    pub const AVAIL_RING: usize = 4;
    pub fn used_event(size: u16) -> usize {
        AVAIL_RING + 2 * size as usize
    }
    /// Used ring: flags, idx, ring[size] of {id: u32, len: u32}, avail_event.
    pub const USED_IDX: usize = 2;
    pub const USED_RING: usize = 4;
    pub const USED_ELEM_SIZE: usize = 8;
    pub fn avail_area_len(size: u16) -> usize {
        used_event(size) + 2
    }
    pub fn used_area_len(size: u16) -> usize {
        USED_RING + USED_ELEM_SIZE * size as usize + 2
    }
}

/// virtio-blk request types and status: those the device defines too (pulse-virtio-spec),
/// and the driver's own.
pub mod blk {
    pub use pulse_virtio_spec::blk::{kind, STATUS_IOERR, STATUS_OK};
    /// Written into status bytes before submitting, so an untouched one is caught.
    pub const STATUS_UNSET: u8 = 0xff;
    pub const SECTOR_SIZE: u64 = 512;
    /// Config space: capacity (u64, sectors) and num_queues (u16).
    pub const CFG_CAPACITY: u64 = 0;
    pub const CFG_NUM_QUEUES: u64 = 34;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_id() {
        assert_eq!(vendor_features(0xdbfc_db16), Some(0x16));
        assert_eq!(vendor_features(0xdbfc_db00), Some(0));
        assert_eq!(vendor_features(0x554d_4551), None); // QEMU's "QEMU"
        assert_eq!(vendor_features(0), None);
    }

    #[test]
    fn feature_negotiation() {
        let pulse = feature::VERSION_1
            | feature::RING_EVENT_IDX
            | feature::RING_INDIRECT_DESC
            | 1 << 2
            | 1 << 6
            | 1 << 9
            | feature::BLK_MQ
            | 1 << 13
            | 1 << 14;
        assert_eq!(
            negotiate(pulse),
            Ok(feature::VERSION_1 | feature::BLK_MQ | feature::RING_EVENT_IDX)
        );
        assert_eq!(negotiate(feature::VERSION_1), Ok(feature::VERSION_1));
        assert!(negotiate(feature::BLK_MQ | feature::RING_EVENT_IDX).is_err());
    }

    #[test]
    fn queue_sizes() {
        assert_eq!(queue_size(256, 64), Some(64));
        assert_eq!(queue_size(32, 64), Some(32));
        assert_eq!(queue_size(48, 64), Some(32));
        assert_eq!(queue_size(1, 64), Some(1));
        assert_eq!(queue_size(0, 64), None);
        assert_eq!(queue_size(u32::MAX, 64), Some(64));
    }

    #[test]
    fn doorbells() {
        assert_eq!(doorbell_offset(0x0004_1000, 0, 0x2000), Some(0x1000));
        assert_eq!(doorbell_offset(0x0004_1000, 3, 0x2000), Some(0x100c));
        assert_eq!(doorbell_offset(0x0004_1000, 1023, 0x2000), Some(0x1ffc));
        assert_eq!(doorbell_offset(0x0004_1000, 1024, 0x2000), None);
        // a device without NotifyInfo reads 0 there: no doorbells
        assert_eq!(doorbell_offset(0, 0, 0x2000), None);
        assert_eq!(doorbell_offset(0x0000_1000, 1, 0x2000), None);
    }

    #[test]
    fn msi_messages() {
        assert_eq!(msi_address(0), 0xfee0_0000);
        assert_eq!(msi_address(3), 0xfee0_3000);
        assert_eq!(msi_address(255), 0xfeef_f000);
        assert_eq!(msi_data(0x41), 0x41);
        assert_eq!(msi_cmd(reg::MSI_CMD_UPDATE, 4), 0x1004);
        assert_eq!(msi_cmd(reg::MSI_CMD_MASK, 1), 0x2001);
        assert_eq!(msi_cmd(reg::MSI_CMD_UNMASK, 1), 0x3001);
    }

    #[test]
    fn msi_csr() {
        assert!(msi_csr_check(0xc005, 5, true).is_ok());
        assert!(msi_csr_check(0xc004, 5, true).is_err());
        assert!(msi_csr_check(0xc004, 5, false).is_ok());
        assert!(msi_csr_check(0x8005, 5, true).is_err());
    }

    #[test]
    fn ring_layout() {
        assert_eq!(ring::used_event(64), 132);
        assert_eq!(ring::avail_area_len(64), 134);
        assert_eq!(ring::used_area_len(64), 518);
    }
}
