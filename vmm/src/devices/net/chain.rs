//! Descriptor chains as host memory segments: what `readv`/`writev` on the tap need to move a
//! frame straight between the tap and guest buffers, without a bounce copy.
//!
//! Every segment comes from a `vm-memory` slice of the guest's RAM, so its bounds are checked
//! against the memory map; the walk rejects chains that loop, point past the descriptor table,
//! mix directions, or are too long.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Most segments one frame may use (the kernel's `UIO_MAXIOV`, less one spare).
pub const MAX_SEGMENTS: usize = 1023;

/// One contiguous piece of guest memory, as the host sees it. Same layout as `struct iovec`,
/// so a slice of segments is passed to `readv`/`writev` as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Host address.
    pub base: usize,
    /// Length in bytes.
    pub len: usize,
}

// `Seg` stands in for `libc::iovec` in system calls.
const _: () = assert!(std::mem::size_of::<Seg>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<Seg>() == std::mem::align_of::<libc::iovec>());

/// A slice of segments as the iovec array the kernel reads.
pub fn as_iovecs(segs: &[Seg]) -> &[libc::iovec] {
    // SAFETY: `Seg` is `repr(C)` with the same size, alignment and field order (address,
    // length) as `struct iovec`, as asserted above; a `usize` holds a pointer's bits.
    unsafe { std::slice::from_raw_parts(segs.as_ptr().cast::<libc::iovec>(), segs.len()) }
}

/// Why a chain cannot carry a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain loops, ends at an index outside the table, or has no descriptor.
    #[error("malformed descriptor chain")]
    Malformed,
    /// A descriptor points the wrong way (device-writable on transmit, readable on receive).
    #[error("descriptor with the wrong direction")]
    WrongDirection,
    /// A descriptor outside guest memory.
    #[error("descriptor outside guest memory")]
    BadAddress,
    /// More bytes or segments than a frame may have.
    #[error("chain too long")]
    TooLong,
}

/// Walks `chain`, appending its buffers to `segs` (host view) and, when given, to `addrs`
/// (the guest address of each segment). All descriptors must be device-writable when
/// `writable`, readable otherwise. Returns the chain's byte count. On error, `segs` and `addrs`
/// are left as they were.
pub fn collect(
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    max_bytes: usize,
    segs: &mut Vec<Seg>,
    mut addrs: Option<&mut Vec<GuestAddress>>,
) -> Result<usize, ChainError> {
    let mem: &GuestMemoryMmap = chain.memory();
    let seg_start = segs.len();
    let addr_start = addrs.as_ref().map_or(0, |a| a.len());
    let result = (|| {
        let mut total = 0usize;
        let mut last_has_next = true;
        let mut any = false;
        for desc in chain.clone() {
            any = true;
            last_has_next = desc.has_next();
            if desc.is_write_only() != writable {
                return Err(ChainError::WrongDirection);
            }
            let len = desc.len() as usize;
            total = total.checked_add(len).ok_or(ChainError::TooLong)?;
            if total > max_bytes {
                return Err(ChainError::TooLong);
            }
            if len == 0 {
                continue;
            }
            let mut at = desc.addr();
            for slice in mem.get_slices(desc.addr(), len) {
                let slice = slice.map_err(|_| ChainError::BadAddress)?;
                if segs.len() - seg_start >= MAX_SEGMENTS {
                    return Err(ChainError::TooLong);
                }
                segs.push(Seg {
                    base: slice.ptr_guard_mut().as_ptr() as usize,
                    len: slice.len(),
                });
                if let Some(a) = addrs.as_deref_mut() {
                    a.push(at);
                }
                at = at.unchecked_add(slice.len() as u64);
            }
        }
        // The walk stops early (without an error of its own) on a loop or an index outside
        // the table: the last descriptor then still says "next".
        if !any || last_has_next {
            return Err(ChainError::Malformed);
        }
        Ok(total)
    })();
    if result.is_err() {
        segs.truncate(seg_start);
        if let Some(a) = addrs {
            a.truncate(addr_start);
        }
    }
    result
}

/// Writes `data` at byte `offset` of the buffer made of `segs` (host lengths) at guest
/// addresses `addrs`, through guest memory. Returns false if it does not fit.
pub fn write_at(
    mem: &GuestMemoryMmap,
    segs: &[Seg],
    addrs: &[GuestAddress],
    mut offset: usize,
    mut data: &[u8],
) -> bool {
    use vm_memory::Bytes;
    for (seg, addr) in segs.iter().zip(addrs) {
        if data.is_empty() {
            break;
        }
        if offset >= seg.len {
            offset -= seg.len;
            continue;
        }
        let n = (seg.len - offset).min(data.len());
        if mem
            .write_slice(&data[..n], addr.unchecked_add(offset as u64))
            .is_err()
        {
            return false;
        }
        data = &data[n..];
        offset = 0;
    }
    data.is_empty()
}
