//! The drivers' static DMA buffers and byte access to them. The device reads and writes them
//! from another host thread, so every access is volatile; ordering against the ring indexes is
//! the queue's business (`queue.rs`).

use crate::arch::RacyCell;
use core::mem::MaybeUninit;

/// A driver's static buffers, of type `T`: not zeroed at boot (give the static a `.noinit`
/// link section; every byte the device reads is written first). The probe's memory is
/// identity-mapped, so an address in them is what the device is given: see [`dma_addr`].
pub struct DmaBufs<T>(RacyCell<MaybeUninit<T>>);

impl<T> DmaBufs<T> {
    pub const fn new() -> Self {
        Self(RacyCell::new(MaybeUninit::uninit()))
    }

    /// The buffers (`MaybeUninit<T>` has `T`'s layout); only addresses are formed from it.
    pub fn ptr(&self) -> *mut T {
        self.0.get().cast()
    }
}

/// The address of a field of a [`DmaBufs`] static, as the device is given it:
/// `dma_addr!(BUFS, rx[slot])`. Indexes are bounds-checked.
macro_rules! dma_addr {
    ($bufs:expr, $($field:tt)+) => {
        // SAFETY: the pointer is to a static; `addr_of!` reads nothing and makes no
        // reference, and the indexing in the place expression is bounds-checked.
        unsafe { core::ptr::addr_of!((*$bufs.ptr()).$($field)+) as u64 }
    };
}
pub(crate) use dma_addr;

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
