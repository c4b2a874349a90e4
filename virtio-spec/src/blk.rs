//! virtio-blk (virtio 1.2, 5.2.6): the request types and status values that both the device
//! and the probe's drivers (the workload's and the hostile one's) use.

/// Request types: the `type` field of a request's header.
pub mod kind {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status: success.
pub const STATUS_OK: u8 = 0;
/// Status: I/O error (the VMM's answer to a malformed request, too).
pub const STATUS_IOERR: u8 = 1;
