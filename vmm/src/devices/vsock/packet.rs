//! virtio-vsock packets: the 44-byte header (virtio spec 5.10.6, in pulse-virtio-spec, which
//! the probe guest's driver shares) and helpers to move a packet between a descriptor chain and
//! host memory.

use vm_memory::{Bytes, GuestAddress};

use crate::devices::block::request::Buffer;
use crate::memory::GuestMemoryMmap;

pub use pulse_virtio_spec::vsock::{
    op, Header, HEADER_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Largest payload Pulse accepts from the guest in one packet.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

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
