//! Byte access to the drivers' static DMA buffers. The device reads and writes them from
//! another host thread, so every access is volatile; ordering against the ring indexes is the
//! queue's business (`queue.rs`).

/// Writes `data` at `addr`.
///
/// The caller passes a range inside one of its own static buffers that the device does not
/// use until a descriptor pointing there is published.
pub fn write_bytes(addr: u64, data: &[u8]) {
    for (i, b) in data.iter().enumerate() {
        // SAFETY: `addr..addr + data.len()` lies in a driver's static buffer (see above),
        // identity-mapped and not aliased by a Rust reference.
        unsafe { core::ptr::write_volatile((addr + i as u64) as *mut u8, *b) };
    }
}

/// One byte at `addr`, inside a driver's static buffer that the device filled before the
/// used index the caller acquired.
pub fn read_byte(addr: u64) -> u8 {
    // SAFETY: as for `write_bytes`: a byte of a driver's static buffer.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// `N` bytes at `addr`, under the same rule as [`read_byte`].
pub fn read_bytes<const N: usize>(addr: u64) -> [u8; N] {
    // SAFETY: as for `read_byte`, for `N` bytes inside one buffer.
    unsafe { core::ptr::read_volatile(addr as *const [u8; N]) }
}
