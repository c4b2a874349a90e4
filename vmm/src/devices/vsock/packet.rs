//! virtio-vsock packets: the 44-byte header (virtio spec 5.10.6) and helpers to move a packet
//! between a descriptor chain and host memory.

use vm_memory::{Bytes, GuestAddress};

use crate::devices::block::request::Buffer;
use crate::memory::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Stream sockets, the only type Pulse supports.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload Pulse accepts from the guest in one packet.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

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

impl Header {
    /// Decodes 44 little-endian bytes.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2"));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
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

/// Why a TX chain is not a packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than 44 readable bytes.
    #[error("chain shorter than a vsock header")]
    ShortHeader,
    /// Device-writable buffers in a TX chain.
    #[error("writable buffer in a TX chain")]
    WritableBuffer,
    /// `len` larger than the payload in the chain, or than Pulse accepts.
    #[error("bad payload length {0}")]
    BadLength(u32),
    /// An address outside guest memory.
    #[error("buffer outside guest memory")]
    BadAddress,
    /// The chain does not end: it loops or names a descriptor beyond its table.
    #[error("descriptor chain without an end (a loop, or a next index beyond the table)")]
    Unterminated,
}

/// A chain's buffers in order, and whether it ended properly: the walk stops by itself on a
/// loop or an index outside the table, its last descriptor then still saying "next".
pub fn chain_buffers<M>(chain: virtio_queue::DescriptorChain<M>) -> (Vec<Buffer>, bool)
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut terminated = false;
    let buffers = chain
        .map(|d| {
            terminated = !d.has_next();
            Buffer {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            }
        })
        .collect();
    (buffers, terminated)
}

/// Copies up to `out.len()` bytes from the chain's buffers, starting `skip` bytes in.
fn gather(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    mut skip: usize,
    out: &mut [u8],
) -> Result<usize, PacketError> {
    let mut done = 0;
    for b in buffers {
        if done == out.len() {
            break;
        }
        let len = b.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        mem.read_slice(
            &mut out[done..done + n],
            GuestAddress(b.addr.0 + skip as u64),
        )
        .map_err(|_| PacketError::BadAddress)?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Reads a packet the guest sent: header and payload (which may span buffers).
pub fn read_tx(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
) -> Result<(Header, Vec<u8>), PacketError> {
    if buffers.iter().any(|b| b.writable) {
        return Err(PacketError::WritableBuffer);
    }
    let mut raw = [0u8; HEADER_SIZE];
    if gather(mem, buffers, 0, &mut raw)? < HEADER_SIZE {
        return Err(PacketError::ShortHeader);
    }
    let header = Header::decode(&raw);
    if header.len > MAX_PAYLOAD {
        return Err(PacketError::BadLength(header.len));
    }
    let mut payload = vec![0u8; header.len as usize];
    if gather(mem, buffers, HEADER_SIZE, &mut payload)? < payload.len() {
        return Err(PacketError::BadLength(header.len));
    }
    Ok((header, payload))
}

/// Room for payload in an RX chain (its writable bytes past the header), or None if the chain
/// cannot even hold a header.
pub fn rx_capacity(buffers: &[Buffer]) -> Option<usize> {
    if buffers.iter().any(|b| !b.writable) {
        return None;
    }
    let total: usize = buffers.iter().map(|b| b.len as usize).sum();
    total.checked_sub(HEADER_SIZE)
}

/// Writes a packet into an RX chain; returns the bytes written.
pub fn write_rx(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    header: &Header,
    payload: &[u8],
) -> Result<usize, PacketError> {
    let raw = header.encode();
    let mut sources: [&[u8]; 2] = [&raw, payload];
    let mut written = 0;
    for b in buffers {
        let mut at = b.addr.0;
        let mut room = b.len as usize;
        for src in sources.iter_mut() {
            if room == 0 {
                break;
            }
            let n = src.len().min(room);
            if n == 0 {
                continue;
            }
            mem.write_slice(&src[..n], GuestAddress(at))
                .map_err(|_| PacketError::BadAddress)?;
            *src = &src[n..];
            at += n as u64;
            room -= n;
            written += n;
        }
    }
    if sources.iter().any(|s| !s.is_empty()) {
        return Err(PacketError::BadLength(
            u32::try_from(payload.len()).unwrap_or(u32::MAX),
        ));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 5,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        assert_eq!(Header::decode(&h.encode()), h);
    }

    #[test]
    fn packets_across_buffers() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let h = Header {
            len: 6,
            op: op::RW,
            ..Default::default()
        };
        let rx = [
            Buffer {
                addr: GuestAddress(0x1000),
                len: 40,
                writable: true,
            },
            Buffer {
                addr: GuestAddress(0x2000),
                len: 100,
                writable: true,
            },
        ];
        assert_eq!(rx_capacity(&rx), Some(96));
        assert_eq!(write_rx(&mem, &rx, &h, b"abcdef").unwrap(), 50);
        // Read it back as if it were a TX chain.
        let tx: Vec<Buffer> = rx
            .iter()
            .map(|b| Buffer {
                writable: false,
                ..*b
            })
            .collect();
        let (h2, payload) = read_tx(&mem, &tx).unwrap();
        assert_eq!((h2, payload.as_slice()), (h, &b"abcdef"[..]));
        // Too short, too long, wrong direction.
        assert_eq!(read_tx(&mem, &tx[..1]), Err(PacketError::ShortHeader));
        let big = Header {
            len: MAX_PAYLOAD + 1,
            ..h
        };
        write_rx(&mem, &rx, &big, b"").unwrap();
        assert!(matches!(read_tx(&mem, &tx), Err(PacketError::BadLength(_))));
        assert_eq!(read_tx(&mem, &rx), Err(PacketError::WritableBuffer));
        assert!(write_rx(&mem, &rx, &h, &[0u8; 200]).is_err());
    }
}
