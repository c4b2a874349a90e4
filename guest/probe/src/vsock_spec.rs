//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte header every packet starts with,
//! the operations the probe's driver uses, and the per-connection credit arithmetic.

/// The header and its field values, as the VMM decodes them: from pulse-virtio-spec.
pub use pulse_virtio_spec::vsock::{
    op, Header, HEADER_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The event queue's one event: every connection is gone.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Byte offset of `guest_cid` (le64) in the device configuration space.
pub const CFG_GUEST_CID: u64 = 0;

/// Bytes a sender may still send: the receiver's buffer minus what is in flight to it
/// (`sent` and `peer_fwd_cnt` are free-running counters, so the subtraction wraps).
pub fn credit(peer_buf_alloc: u32, peer_fwd_cnt: u32, sent: u32) -> u32 {
    peer_buf_alloc.saturating_sub(sent.wrapping_sub(peer_fwd_cnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_wraps() {
        assert_eq!(credit(1000, 0, 0), 1000);
        assert_eq!(credit(1000, 500, 900), 600);
        assert_eq!(credit(1000, 0, 2000), 0);
        assert_eq!(credit(1000, u32::MAX - 10, 5), 984);
    }
}
