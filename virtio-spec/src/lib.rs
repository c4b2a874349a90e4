//! The virtio layouts that the VMM (the device side) and the bare-metal probe guest (the
//! driver side) must agree on, written once: the virtio-mmio register map with Pulse's
//! per-queue MSI extension (`docs/virtio-mmio-msi.md`), the device-independent values (device
//! types, status bits, ring feature bits), the parts of the block and net device protocols
//! that both sides use, and the virtio-vsock packet header.
//!
//! `no_std` and without dependencies, so that guest/probe (target x86_64-unknown-none, its own
//! Cargo workspace) takes it as a path dependency.

#![no_std]
#![deny(missing_docs)]

pub mod blk;
pub mod mmio;
pub mod net;
pub mod vsock;

/// Device types (virtio 1.2, 5): the DeviceID register's values.
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 0x01;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 0x02;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 0x04;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 0x08;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// Feature bits shared by all devices (virtio 1.2, 6).
pub mod feature {
    /// Virtio 1.x.
    pub const VERSION_1: u64 = 1 << 32;
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values_are_the_specs() {
        use device_type::{BLOCK, CONSOLE, NET, VSOCK};
        assert_eq!([NET, BLOCK, CONSOLE, VSOCK], [1, 2, 3, 19]);
        let all_status = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
        assert_eq!(all_status | status::FEATURES_OK, 0x0f);
        assert_eq!([status::DEVICE_NEEDS_RESET, status::FAILED], [0x40, 0x80]);
        let ring = feature::RING_INDIRECT_DESC | feature::RING_EVENT_IDX;
        assert_eq!([feature::VERSION_1, ring], [1 << 32, 3 << 28]);
        assert_eq!(
            [blk::kind::IN, blk::kind::OUT, blk::kind::WRITE_ZEROES],
            [0, 1, 13]
        );
        assert_eq!([blk::STATUS_OK, blk::STATUS_IOERR], [0, 1]);
        assert_eq!(
            [
                net::ctrl::CLASS_RX,
                net::ctrl::CLASS_MAC,
                net::ctrl::CLASS_MQ
            ],
            [0, 1, 4]
        );
        assert_eq!([net::ctrl::MAC_TABLE_SET, net::ctrl::MAC_ADDR_SET], [0, 1]);
        assert_eq!(
            [net::ctrl::MQ_VQ_PAIRS_SET, net::ctrl::OK, net::ctrl::ERR],
            [0, 0, 1]
        );
    }
}
