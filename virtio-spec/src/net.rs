//! virtio-net (virtio 1.2, 5.1): the parts of the control queue's protocol that both the
//! device and the probe's drivers (the workload's and the hostile one's) use.

/// Control queue (5.1.6.5): command classes, commands, acks.
pub mod ctrl {
    /// Receive filtering class.
    pub const CLASS_RX: u8 = 0;
    /// MAC class.
    pub const CLASS_MAC: u8 = 1;
    /// MAC filter table.
    pub const MAC_TABLE_SET: u8 = 0;
    /// Primary MAC address.
    pub const MAC_ADDR_SET: u8 = 1;
    /// Multiqueue class.
    pub const CLASS_MQ: u8 = 4;
    /// Number of queue pairs in use.
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// Acknowledgement: done.
    pub const OK: u8 = 0;
    /// Acknowledgement: refused.
    pub const ERR: u8 = 1;
}
