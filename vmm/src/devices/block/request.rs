//! A virtio-blk request: parsed from a descriptor chain, checked, and executed against the
//! backend. A malformed chain fails its own request (with an error status when the chain has a
//! usable status byte), never the device.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::{Backend, BackendError, SECTOR_SIZE};
use crate::memory::GuestMemoryMmap;

/// Request types (virtio spec 5.2.6): those the probe guest's drivers send too, from
/// pulse-virtio-spec, and the others the device serves.
pub mod kind {
    pub use pulse_virtio_spec::blk::kind::*;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard sectors.
    pub const DISCARD: u32 = 11;
}

/// Status: success, and I/O error (also: malformed request, bounds, read-only): the values
/// the probe guest's drivers check for, from pulse-virtio-spec.
pub use pulse_virtio_spec::blk::{STATUS_IOERR, STATUS_OK};
/// Status: unsupported request type.
pub const STATUS_UNSUPP: u8 = 2;

const HEADER_SIZE: u32 = 16;
/// Length of the ID string returned by GET_ID.
pub const ID_BYTES: usize = 20;
/// Size of one discard / write-zeroes segment.
const SEGMENT_SIZE: u32 = 16;
/// Most data descriptors in one request (advertised as seg_max).
pub const MAX_SEGMENTS: usize = 128;
/// Most data bytes in one request.
pub const MAX_REQUEST_BYTES: u64 = 8 << 20;
/// Most segments in one discard or write-zeroes request (advertised as max_discard_seg and
/// max_write_zeroes_seg).
pub const MAX_RANGE_SEGMENTS: u32 = 1;
/// Most sectors in one discard or write-zeroes segment (advertised as max_discard_sectors and
/// max_write_zeroes_sectors): 32 MiB, so that a filesystem that zeroes by writing (tmpfs)
/// keeps a worker busy for milliseconds, not hours.
pub const MAX_RANGE_SECTORS: u32 = (32 << 20) / 512;

/// Why a chain is not a well-formed request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain is empty.
    #[error("empty descriptor chain")]
    Empty,
    /// The chain does not end: it loops, names a descriptor beyond its table, or its table
    /// cannot be read (its last descriptor still says "next").
    #[error("descriptor chain without an end (a loop, or a next index beyond the table)")]
    Unterminated,
    /// The first descriptor is not a readable 16-byte header.
    #[error("bad request header descriptor")]
    BadHeader,
    /// No writable status byte at the end.
    #[error("no writable status descriptor")]
    NoStatus,
    /// A data descriptor points the wrong way for the request type.
    #[error("data descriptor with the wrong direction")]
    WrongDirection,
    /// More segments or bytes than the device accepts.
    #[error("request too long")]
    TooLong,
    /// An address the guest does not have.
    #[error("descriptor outside guest memory")]
    BadAddress,
    /// A write to a read-only disk.
    #[error("read-only device")]
    ReadOnly,
    /// Sectors beyond the end of the disk.
    #[error("access beyond the end of the disk")]
    OutOfBounds,
    /// A discard/write-zeroes segment list of the wrong size or with unknown flags.
    #[error("malformed discard/write-zeroes segment")]
    BadSegment,
    /// More discard/write-zeroes segments than advertised.
    #[error("{0} discard/write-zeroes segments, at most {MAX_RANGE_SEGMENTS} allowed")]
    TooManySegments(u64),
    /// A discard/write-zeroes segment larger than advertised.
    #[error("discard/write-zeroes segment of {0} sectors, at most {MAX_RANGE_SECTORS} allowed")]
    SegmentTooLarge(u32),
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(String),
}

impl From<BackendError> for RequestError {
    fn from(e: BackendError) -> Self {
        RequestError::Backend(e.to_string())
    }
}

/// One descriptor of a chain, as the request needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Type.
    pub kind: u32,
    /// First sector.
    pub sector: u64,
    /// Data buffers between header and status.
    pub data: Vec<Buffer>,
    /// The status byte.
    pub status: GuestAddress,
}

/// The status byte of a chain, if its last descriptor can hold one: written on failure.
pub fn status_of(buffers: &[Buffer]) -> Option<GuestAddress> {
    let last = buffers.last()?;
    if buffers.len() < 2 || !last.writable || last.len == 0 {
        return None;
    }
    // The guest picks both: an address near the top of the space must not wrap to 0.
    last.addr.checked_add(u64::from(last.len) - 1)
}

/// Parses `buffers` (a chain in order) into a request.
pub fn parse(mem: &GuestMemoryMmap, buffers: &[Buffer]) -> Result<Request, RequestError> {
    let header = buffers.first().ok_or(RequestError::Empty)?;
    if header.writable || header.len < HEADER_SIZE {
        return Err(RequestError::BadHeader);
    }
    let status = status_of(buffers).ok_or(RequestError::NoStatus)?;
    let kind: u32 = mem
        .read_obj(header.addr)
        .map_err(|_| RequestError::BadAddress)?;
    let sector_at = header.addr.checked_add(8).ok_or(RequestError::BadAddress)?;
    let sector: u64 = mem
        .read_obj(sector_at)
        .map_err(|_| RequestError::BadAddress)?;
    let data = buffers[1..buffers.len() - 1].to_vec();
    if data.len() > MAX_SEGMENTS {
        return Err(RequestError::TooLong);
    }
    let total: u64 = data.iter().map(|b| u64::from(b.len)).sum();
    if total > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    let wants_writable = match kind {
        kind::IN | kind::GET_ID => Some(true),
        kind::OUT | kind::DISCARD | kind::WRITE_ZEROES => Some(false),
        _ => None,
    };
    if let Some(writable) = wants_writable {
        if data.iter().any(|b| b.writable != writable) {
            return Err(RequestError::WrongDirection);
        }
    }
    for b in &data {
        if !mem.check_range(b.addr, b.len as usize) {
            return Err(RequestError::BadAddress);
        }
    }
    Ok(Request {
        kind,
        sector,
        data,
        status,
    })
}

/// Runs a request; returns the status and the bytes written into guest buffers (not counting
/// the status byte). `scratch` is a reusable bounce buffer.
pub fn execute(
    mem: &GuestMemoryMmap,
    backend: &Backend,
    id: &[u8; ID_BYTES],
    request: &Request,
    scratch: &mut Vec<u8>,
) -> (u8, u32) {
    let result = match request.kind {
        kind::IN => read(mem, backend, request, scratch),
        kind::OUT => write(mem, backend, request, scratch).map(|_| 0),
        kind::FLUSH => backend.flush().map(|_| 0).map_err(Into::into),
        kind::GET_ID => get_id(mem, id, request),
        kind::DISCARD | kind::WRITE_ZEROES => ranges(mem, backend, request).map(|_| 0),
        _ => return (STATUS_UNSUPP, 0),
    };
    match result {
        Ok(written) => (STATUS_OK, written),
        Err(e) => {
            tracing::debug!(kind = request.kind, "block request failed: {e}");
            (STATUS_IOERR, 0)
        }
    }
}

fn checked_offset(backend: &Backend, sector: u64, len: u64) -> Result<u64, RequestError> {
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(RequestError::OutOfBounds)?;
    let end = offset.checked_add(len).ok_or(RequestError::OutOfBounds)?;
    if end > backend.size() {
        return Err(RequestError::OutOfBounds);
    }
    Ok(offset)
}

fn read(
    mem: &GuestMemoryMmap,
    backend: &Backend,
    request: &Request,
    scratch: &mut Vec<u8>,
) -> Result<u32, RequestError> {
    let total: u64 = request.data.iter().map(|b| u64::from(b.len)).sum();
    let mut offset = checked_offset(backend, request.sector, total)?;
    for b in &request.data {
        scratch.resize(b.len as usize, 0);
        backend.read_at(scratch, offset)?;
        mem.write_slice(scratch, b.addr)
            .map_err(|_| RequestError::BadAddress)?;
        offset += u64::from(b.len);
    }
    // The parser caps a request at MAX_REQUEST_BYTES (8 MiB).
    u32::try_from(total).map_err(|_| RequestError::TooLong)
}

fn write(
    mem: &GuestMemoryMmap,
    backend: &Backend,
    request: &Request,
    scratch: &mut Vec<u8>,
) -> Result<(), RequestError> {
    if backend.read_only() {
        return Err(RequestError::ReadOnly);
    }
    let total: u64 = request.data.iter().map(|b| u64::from(b.len)).sum();
    let mut offset = checked_offset(backend, request.sector, total)?;
    for b in &request.data {
        scratch.resize(b.len as usize, 0);
        mem.read_slice(scratch, b.addr)
            .map_err(|_| RequestError::BadAddress)?;
        backend.write_at(scratch, offset)?;
        offset += u64::from(b.len);
    }
    Ok(())
}

fn get_id(
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
    request: &Request,
) -> Result<u32, RequestError> {
    let b = request.data.first().ok_or(RequestError::TooLong)?;
    let n = (b.len as usize).min(ID_BYTES);
    mem.write_slice(&id[..n], b.addr)
        .map_err(|_| RequestError::BadAddress)?;
    // At most ID_BYTES (20).
    Ok(u32::try_from(n).unwrap_or(b.len))
}

/// Discard and write-zeroes: a list of {sector u64, num_sectors u32, flags u32} segments.
fn ranges(mem: &GuestMemoryMmap, backend: &Backend, request: &Request) -> Result<(), RequestError> {
    const FLAG_UNMAP: u32 = 1;
    if backend.read_only() {
        return Err(RequestError::ReadOnly);
    }
    if request.data.iter().any(|b| b.len % SEGMENT_SIZE != 0) {
        return Err(RequestError::BadSegment);
    }
    // Checked before any work: the limits are what the config space advertises.
    let segments: u64 = request
        .data
        .iter()
        .map(|b| u64::from(b.len / SEGMENT_SIZE))
        .sum();
    if segments > u64::from(MAX_RANGE_SEGMENTS) {
        return Err(RequestError::TooManySegments(segments));
    }
    let field =
        |at: GuestAddress, offset: u64| at.checked_add(offset).ok_or(RequestError::BadAddress);
    for b in &request.data {
        for i in 0..b.len / SEGMENT_SIZE {
            let at = field(b.addr, u64::from(i * SEGMENT_SIZE))?;
            let sector: u64 = mem.read_obj(at).map_err(|_| RequestError::BadAddress)?;
            let count: u32 = mem
                .read_obj(field(at, 8)?)
                .map_err(|_| RequestError::BadAddress)?;
            let flags: u32 = mem
                .read_obj(field(at, 12)?)
                .map_err(|_| RequestError::BadAddress)?;
            if flags & !FLAG_UNMAP != 0 || (request.kind == kind::DISCARD && flags != 0) {
                return Err(RequestError::BadSegment);
            }
            if count > MAX_RANGE_SECTORS {
                return Err(RequestError::SegmentTooLarge(count));
            }
            let len = u64::from(count) * SECTOR_SIZE;
            let offset = checked_offset(backend, sector, len)?;
            if request.kind == kind::DISCARD || flags & FLAG_UNMAP != 0 {
                backend.punch_hole(offset, len)?;
            } else {
                backend.write_zeroes(offset, len)?;
            }
        }
    }
    Ok(())
}
