//! A queue as a device's worker serves it: the virtqueue, its doorbell and the device's
//! counters for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::guest_queue;
use crate::devices::virtio::ActiveQueue;
use crate::interrupts::Interrupt;
use crate::memory::GuestMemoryMmap;

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the counters of a queue hold whatever the device: the interrupts raised for it.
pub trait InterruptCount {
    /// Interrupts raised for the queue.
    fn interrupts(&self) -> &AtomicU64;
}

/// A queue as a worker serves it.
pub struct Vring<C> {
    /// Index on the device.
    pub index: u16,
    /// The virtqueue.
    pub queue: Queue,
    /// Doorbell.
    pub notifier: EventFd,
    /// Counters.
    pub counters: Arc<C>,
}

impl<C: InterruptCount> Vring<C> {
    /// The queue the transport handed over, counted in `counters`.
    pub fn new(active: ActiveQueue, counters: Arc<C>) -> Self {
        Self {
            index: active.index,
            queue: active.queue,
            notifier: active.notifier,
            counters,
        }
    }

    /// Returns a chain to the guest. A head outside the descriptor table has no used entry to
    /// go to; the caller has counted that chain as malformed already.
    pub(crate) fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        if let Err(e) = guest_queue::add_used(&mut self.queue, mem, head, len) {
            tracing::debug!(queue = self.index, "add_used: {e}");
        }
    }

    /// Raises the queue's interrupt if the driver wants one for what was just used.
    pub(crate) fn signal(&mut self, mem: &GuestMemoryMmap, interrupt: &dyn Interrupt) {
        if guest_queue::needs_notification(&mut self.queue, mem) {
            bump(self.counters.interrupts(), 1);
            interrupt.trigger(self.index);
        }
    }
}
