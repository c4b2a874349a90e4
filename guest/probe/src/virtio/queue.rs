//! A split virtqueue over three static 4 KiB pages (descriptor table, available ring, used
//! ring). The device reads and writes these pages from another host thread at any time, so
//! every shared field is accessed with volatile loads and stores; x86 keeps stores in order
//! and loads in order (TSO), so compiler fences are all the ordering needed: descriptors and
//! ring entries before the avail index, the avail index before the doorbell, the used index
//! before the used entries and the buffers it covers.

use core::sync::atomic::{fence, Ordering};
use pulse_probe::virtio_spec::ring;

#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// The three areas of one queue, each on its own page.
#[repr(C)]
pub struct RingPages {
    desc: Page,
    avail: Page,
    used: Page,
}

/// Queues per device the probe drives (more are left unused).
pub const MAX_QUEUES: usize = 16;
/// Queue size the driver asks for (at most): 21 three-descriptor requests per batch.
pub const QUEUE_SIZE_CAP: u16 = 64;

use crate::virtio::buf::DmaBufs;
use crate::virtio::MAX_DEVICES;

/// Not zeroed at boot (zeroing 1.5 MiB with `rep stos` is slow under the emulator): `init`
/// clears the few fields the device reads before the driver writes them.
#[link_section = ".noinit.virtio_rings"]
static RINGS: DmaBufs<[[RingPages; MAX_QUEUES]; MAX_DEVICES]> = DmaBufs::new();

/// The driver's handle of one queue. `Copy`: it is only addresses; the state that changes
/// (next indexes) is kept by its single user.
#[derive(Clone, Copy)]
pub struct Virtq {
    rings: *mut RingPages,
    size: u16,
}

// SAFETY: a Virtq is a pair of addresses; which CPU may use it at a time is decided by the
// workload (one owner per queue), and every access through it is volatile.
unsafe impl Send for Virtq {}
// SAFETY: as above.
unsafe impl Sync for Virtq {}

impl Virtq {
    /// The pages of queue `q` of device `dev`, for a queue of `size` entries (<= 64, power
    /// of two, checked by the caller).
    pub fn new(dev: usize, q: usize, size: u16) -> Self {
        assert!(dev < MAX_DEVICES && q < MAX_QUEUES && size <= QUEUE_SIZE_CAP);
        let base = RINGS.ptr().cast::<RingPages>();
        // SAFETY: in bounds of the static array (asserted above); only an address is formed.
        let rings = unsafe { base.add(dev * MAX_QUEUES + q) };
        Self { rings, size }
    }

    pub fn desc_addr(&self) -> u64 {
        // SAFETY: address computation inside the static (no access).
        unsafe { core::ptr::addr_of!((*self.rings).desc) as u64 }
    }

    pub fn avail_addr(&self) -> u64 {
        // SAFETY: as above.
        unsafe { core::ptr::addr_of!((*self.rings).avail) as u64 }
    }

    pub fn used_addr(&self) -> u64 {
        // SAFETY: as above.
        unsafe { core::ptr::addr_of!((*self.rings).used) as u64 }
    }

    fn at<T>(area: u64, offset: usize) -> *mut T {
        (area as usize + offset) as *mut T
    }

    fn write16(area: u64, offset: usize, v: u16) {
        // SAFETY: `offset` is inside one of this queue's pages (ring layout for `size` <= 64
        // ends far below 4 KiB) and 2-aligned; the memory is the probe's static.
        unsafe { core::ptr::write_volatile(Self::at::<u16>(area, offset), v) }
    }

    fn read16(area: u64, offset: usize) -> u16 {
        // SAFETY: as for `write16`.
        unsafe { core::ptr::read_volatile(Self::at::<u16>(area, offset)) }
    }

    /// Clears what the device may read before the driver has written it: the avail ring's
    /// flags, index and used_event, the used ring's flags, index and avail_event. Call
    /// before QueueReady.
    pub fn init(&self) {
        let (avail, used) = (self.avail_addr(), self.used_addr());
        Self::write16(avail, 0, 0);
        Self::write16(avail, ring::AVAIL_IDX, 0);
        Self::write16(avail, ring::used_event(self.size), 0);
        Self::write16(used, 0, 0);
        Self::write16(used, ring::USED_IDX, 0);
        Self::write16(
            used,
            ring::USED_RING + ring::USED_ELEM_SIZE * self.size as usize,
            0,
        );
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        debug_assert!(i < self.size);
        let d = self.desc_addr() as usize + i as usize * ring::DESC_SIZE;
        // SAFETY: descriptor `i` < size <= 64 lies in the descriptor page; fields at their
        // natural alignment (the page is 4 KiB-aligned, entries 16 bytes).
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Puts `head` into the avail ring at free-running index `idx` (not yet published).
    pub fn put_avail(&self, idx: u16, head: u16) {
        let slot = (idx % self.size) as usize;
        Self::write16(self.avail_addr(), ring::AVAIL_RING + 2 * slot, head);
    }

    /// Puts `head` into the avail ring at `*avail` and moves `*avail` on (not yet published).
    pub fn push_avail(&self, avail: &mut u16, head: u16) {
        self.put_avail(*avail, head);
        *avail = avail.wrapping_add(1);
    }

    /// Makes descriptor `i` one device-writable buffer of `len` bytes at `addr` and pushes it
    /// into the avail ring at `*avail` (not yet published).
    pub fn post_writable(&self, avail: &mut u16, i: u16, addr: u64, len: u32) {
        self.set_desc(i, addr, len, ring::DESC_F_WRITE, 0);
        self.push_avail(avail, i);
    }

    /// With EVENT_IDX: ask for an interrupt once the used index moves past `idx`.
    pub fn set_used_event(&self, idx: u16) {
        Self::write16(self.avail_addr(), ring::used_event(self.size), idx);
    }

    /// Makes everything up to free-running index `idx` visible to the device in one store.
    pub fn publish(&self, idx: u16) {
        // Descriptors, ring entries, used_event and buffers before the index.
        fence(Ordering::Release);
        Self::write16(self.avail_addr(), ring::AVAIL_IDX, idx);
        // The index before the doorbell that follows.
        fence(Ordering::Release);
    }

    /// The device's used index (free-running). Later reads of used entries and buffers are
    /// not moved before it.
    pub fn used_idx(&self) -> u16 {
        let v = Self::read16(self.used_addr(), ring::USED_IDX);
        fence(Ordering::Acquire);
        v
    }

    /// The used entry at `next` if the device has added it, and `next` moved past it: a
    /// driver's loop over what the device returned.
    pub fn pop_used(&self, next: &mut u16) -> Option<(u32, u32)> {
        if *next == self.used_idx() {
            return None;
        }
        let e = self.used_elem(*next);
        *next = next.wrapping_add(1);
        Some(e)
    }

    /// Used entry at free-running index `idx`: (descriptor head id, bytes written).
    pub fn used_elem(&self, idx: u16) -> (u32, u32) {
        let slot = (idx % self.size) as usize;
        let e = self.used_addr() as usize + ring::USED_RING + ring::USED_ELEM_SIZE * slot;
        // SAFETY: entry `slot` < size lies in the used page, 4-aligned.
        unsafe {
            (
                core::ptr::read_volatile(e as *const u32),
                core::ptr::read_volatile((e + 4) as *const u32),
            )
        }
    }
}
