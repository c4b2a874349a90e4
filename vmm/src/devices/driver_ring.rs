//! The driver's side of a split virtqueue, written into guest memory from the host: tests and
//! benchmarks use it to play the guest in front of a device model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{ActiveQueue, VirtioDevice};
use crate::devices::worker::{FaultLog, GuestFault};
use crate::interrupts::Interrupt;
use crate::memory::GuestMemoryMmap;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;

/// A split ring laid out from a base address: descriptor table, available ring, used ring.
pub struct DriverRing {
    mem: GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl DriverRing {
    /// A ring of `size` entries at `base` (4 KiB aligned), zeroed.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let desc = base.0;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        let total = used + 6 + 8 * u64::from(size) - desc;
        let total = usize::try_from(total).expect("ring of a 16-bit size");
        mem.write_slice(&vec![0u8; total], base)
            .expect("ring inside guest memory");
        Self {
            mem: mem.clone(),
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// A device-side queue configured for this ring, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("power-of-two size");
        q.set_size(self.size);
        let (lo, hi) = halves(self.desc);
        q.set_desc_table_address(Some(lo), Some(hi));
        let (lo, hi) = halves(self.avail);
        q.set_avail_ring_address(Some(lo), Some(hi));
        let (lo, hi) = halves(self.used);
        q.set_used_ring_address(Some(lo), Some(hi));
        q.set_ready(true);
        q
    }

    /// The device's side of this ring as queue `index`, and a clone of its doorbell for the
    /// caller to ring.
    pub fn active_queue(&self, index: u16) -> (ActiveQueue, EventFd) {
        let notifier = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let doorbell = notifier.try_clone().expect("eventfd clone");
        let queue = self.queue();
        (
            ActiveQueue {
                index,
                queue,
                notifier,
            },
            doorbell,
        )
    }

    /// Writes one raw descriptor.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(at))
            .expect("descriptor table");
    }

    /// Writes a chain of (address, length, device-writable) buffers at the next free
    /// descriptors, linked in order; returns its head. Not yet visible to the device.
    pub fn add_chain(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, writable)) in buffers.iter().enumerate() {
            let index = self.next_desc;
            let last = i + 1 == buffers.len();
            let mut flags = if *writable { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = if last { 0 } else { (index + 1) % self.size };
            self.write_desc(index, *addr, *len, flags, next);
            self.next_desc = (self.next_desc + 1) % self.size;
        }
        head
    }

    /// Writes `parts` one after the other at `at` and publishes them as one chain of one
    /// device-readable descriptor; returns its head.
    pub fn publish_readable(&mut self, at: u64, parts: &[&[u8]]) -> u16 {
        let mut end = at;
        for part in parts {
            self.mem
                .write_slice(part, GuestAddress(end))
                .expect("buffer inside guest memory");
            end += u64::try_from(part.len()).expect("a buffer of a 64-bit host");
        }
        let len = u32::try_from(end - at).expect("a chain under 4 GiB");
        let head = self.add_chain(&[(at, len, false)]);
        self.publish(&[head]);
        head
    }

    /// Starts allocating descriptors from index 0 again (all previous chains are used).
    pub fn recycle(&mut self) {
        self.next_desc = 0;
    }

    /// Makes `heads` available to the device with one index update.
    pub fn publish(&mut self, heads: &[u16]) {
        for head in heads {
            let slot = u64::from(self.avail_idx % self.size);
            self.mem
                .write_obj(*head, GuestAddress(self.avail + 4 + 2 * slot))
                .expect("avail ring");
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// The available index the driver has published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index the device has written.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used idx")
    }

    /// Used element `slot`: (descriptor head, length written).
    pub fn used_elem(&self, slot: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(slot % self.size);
        let id = self.mem.read_obj(GuestAddress(at)).expect("used ring");
        let len = self.mem.read_obj(GuestAddress(at + 4)).expect("used ring");
        (id, len)
    }

    /// With EVENT_IDX: the avail index past which the device wants a doorbell.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(at)).expect("avail_event")
    }

    /// With EVENT_IDX: ask for an interrupt once the used index passes `idx`.
    pub fn set_used_event(&self, idx: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem
            .write_obj(idx, GuestAddress(at))
            .expect("used_event");
    }
}

/// The driver's side of one queue laid out by [`lay_out_queues`].
pub struct DriverQueue {
    /// The queue's index on the device.
    pub index: u16,
    /// Its ring.
    pub ring: DriverRing,
    /// Its doorbell.
    pub doorbell: EventFd,
    /// Start of its 16 MiB of buffers.
    pub buffers: u64,
}

/// Rings for the queues `indexes` in `mem`, 64 KiB apart from 1 MiB on, and 16 MiB of buffers
/// for each from 16 MiB on: the queues to activate the device with, and the driver's side.
pub fn lay_out_queues(
    mem: &GuestMemoryMmap,
    indexes: impl IntoIterator<Item = u16>,
    size: u16,
) -> (Vec<ActiveQueue>, Vec<DriverQueue>) {
    indexes
        .into_iter()
        .map(|index| {
            let q = u64::from(index);
            let ring = DriverRing::new(mem, GuestAddress(0x10_0000 + q * 0x1_0000), size);
            let (queue, doorbell) = ring.active_queue(index);
            let driver = DriverQueue {
                index,
                ring,
                doorbell,
                buffers: 0x100_0000 + q * 0x100_0000,
            };
            (queue, driver)
        })
        .unzip()
}

/// The interrupt a device model gets in tests and benches: it counts what the device raises,
/// per queue and for configuration changes, instead of reaching a guest.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    queues: Mutex<HashMap<u16, u64>>,
    total: AtomicU64,
    config: AtomicU64,
    needs_reset: AtomicU64,
}

impl CountingInterrupt {
    /// Interrupts raised for queue `q`.
    pub fn queue(&self, q: u16) -> u64 {
        *self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&q)
            .unwrap_or(&0)
    }

    /// Queue interrupts raised, all queues together.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Configuration-change interrupts raised.
    pub fn config(&self) -> u64 {
        self.config.load(Ordering::SeqCst)
    }

    /// Times the device asked for a reset (DEVICE_NEEDS_RESET).
    pub fn needs_reset_requests(&self) -> u64 {
        self.needs_reset.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self, queue: u16) {
        *self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(queue)
            .or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn trigger_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }

    fn needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
        self.trigger_config();
    }
}

/// Joins `thread`, or gives up after `deadline`: tests use it to tell a worker that hangs from
/// one that stops (the deadline is far beyond any slow machine, never a speed check).
pub fn join_within<T: Send + 'static>(
    thread: std::thread::JoinHandle<T>,
    deadline: std::time::Duration,
) -> Result<T, &'static str> {
    let start = std::time::Instant::now();
    while !thread.is_finished() {
        if start.elapsed() > deadline {
            return Err("the thread did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    thread.join().map_err(|_| "the thread panicked")
}

/// Resets `device` on another thread and asserts that the reset (which joins the device's
/// workers) returns: a worker that hangs would hang it.
pub fn assert_resets(mut device: impl VirtioDevice + 'static) {
    let stopper = std::thread::spawn(move || device.reset());
    join_within(stopper, std::time::Duration::from_secs(30)).expect("the device stops");
}

/// A host buffer's length as a descriptor's `len`: a test or benchmark buffer over 4 GiB is a
/// bug in it, not a case to handle.
pub fn desc_len(len: usize) -> u32 {
    u32::try_from(len).expect("a test buffer under 4 GiB")
}

/// After a guest broke one queue of the device by moving its available index too far: the
/// device asked for one reset and counted the broken ring once in `faults`.
pub fn assert_broken_once(irq: &CountingInterrupt, faults: &FaultLog) {
    assert_eq!(irq.needs_reset_requests(), 1);
    assert_eq!(faults.count(GuestFault::AvailIndexTooFar), 1);
}

/// Polls `f` until it holds or `timeout` passes, and says whether it held: tests wait for a
/// worker thread with it (the timeout is far beyond any slow machine, never a speed check).
pub fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    f()
}

/// The low and high 32 bits of a guest address, as a driver writes them to the transport.
fn halves(addr: u64) -> (u32, u32) {
    ((addr & 0xffff_ffff) as u32, (addr >> 32) as u32)
}
