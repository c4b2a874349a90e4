//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte header every packet starts with, and
//! the values of its fields.

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// `type`: stream sockets, the only type Pulse supports.
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused, or closed).
    pub const RST: u16 = 3;
    /// One side stops sending and/or receiving.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Here is my credit.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Tell me your credit.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

/// The `N` bytes at offset `at` of a header.
fn field<const N: usize>(b: &[u8; HEADER_SIZE], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    v.copy_from_slice(&b[at..at + N]);
    v
}

impl Header {
    /// Decodes 44 little-endian bytes.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        Self {
            src_cid: u64::from_le_bytes(field(b, 0)),
            dst_cid: u64::from_le_bytes(field(b, 8)),
            src_port: u32::from_le_bytes(field(b, 16)),
            dst_port: u32::from_le_bytes(field(b, 20)),
            len: u32::from_le_bytes(field(b, 24)),
            kind: u16::from_le_bytes(field(b, 28)),
            op: u16::from_le_bytes(field(b, 30)),
            flags: u32::from_le_bytes(field(b, 32)),
            buf_alloc: u32::from_le_bytes(field(b, 36)),
            fwd_cnt: u32::from_le_bytes(field(b, 40)),
        }
    }

    /// Encodes to 44 little-endian bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let guest_data = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 0x4000_0001,
            len: 4052,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 262_144,
            fwd_cnt: 7,
        };
        let all_ones = Header {
            src_cid: u64::MAX,
            dst_cid: u64::MAX,
            src_port: u32::MAX,
            dst_port: u32::MAX,
            len: u32::MAX,
            kind: u16::MAX,
            op: u16::MAX,
            flags: u32::MAX,
            buf_alloc: u32::MAX,
            fwd_cnt: u32::MAX,
        };
        for h in [guest_data, all_ones, Header::default()] {
            assert_eq!(Header::decode(&h.encode()), h);
        }
    }

    #[test]
    fn header_layout_is_the_specs() {
        // Each field at its own offset, little-endian: a distinct byte pattern per field.
        let h = Header {
            src_cid: 0x0101_0101_0101_0101,
            dst_cid: 0x0202_0202_0202_0202,
            src_port: 0x0303_0303,
            dst_port: 0x0404_0404,
            len: 0x0505_0505,
            kind: 0x0606,
            op: 0x0707,
            flags: 0x0808_0808,
            buf_alloc: 0x0909_0909,
            fwd_cnt: 0x0a0b_0c0d,
        };
        let mut expected = [0u8; HEADER_SIZE];
        let sizes = [8, 8, 4, 4, 4, 2, 2, 4, 4];
        let mut at = 0;
        for (pattern, size) in (1u8..).zip(sizes) {
            expected[at..at + size].fill(pattern);
            at += size;
        }
        expected[40..44].copy_from_slice(&[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(h.encode(), expected);
        assert_eq!(Header::decode(&expected), h);
    }

    #[test]
    fn ops_and_flags_are_the_specs() {
        assert_eq!(
            [op::REQUEST, op::RESPONSE, op::RST, op::SHUTDOWN, op::RW],
            [1, 2, 3, 4, 5]
        );
        assert_eq!([op::CREDIT_UPDATE, op::CREDIT_REQUEST], [6, 7]);
        assert_eq!(SHUTDOWN_RCV | SHUTDOWN_SEND, 3);
    }
}
