//! Queue access that checks what the guest wrote before the virtio-queue crate acts on it.
//!
//! The crate copes with a broken ring by logging an ERROR line and returning "nothing", while
//! `enable_notification` keeps reporting "more": a device that retries spins, and logs on
//! every turn. Here a broken ring is a [`QueueFault`], which the worker loop turns into a
//! broken queue (DEVICE_NEEDS_RESET) once, silently otherwise.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::fault_log::{FaultLog, GuestFault};
use crate::memory::GuestMemoryMmap;

/// A descriptor chain in guest memory.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// A ring the guest broke: the device cannot serve the queue until a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueFault {
    /// The available index is further ahead of the device than the ring has entries.
    #[error(
        "available index {avail} is {ahead} entries past the device's {next} (queue size {size})"
    )]
    AvailIndexTooFar {
        /// The index the driver published.
        avail: u16,
        /// The device's position.
        next: u16,
        /// How far apart they are (wrapping).
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// An available-ring entry names a descriptor beyond the table: it has no used entry to
    /// go back to.
    #[error("available ring entry names descriptor {head}, the table has {size}")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// Reading or writing the rings failed.
    #[error("the rings cannot be accessed")]
    RingAccess,
}

impl QueueFault {
    /// Its kind for the fault log.
    pub fn kind(&self) -> GuestFault {
        match self {
            QueueFault::AvailIndexTooFar { .. } => GuestFault::AvailIndexTooFar,
            QueueFault::HeadOutOfRange { .. } => GuestFault::HeadOutOfRange,
            QueueFault::RingAccess => GuestFault::RingAccess,
        }
    }
}

/// Chains the driver made available and the device has not taken yet.
pub fn pending(queue: &Queue, mem: &GuestMemoryMmap) -> Result<u16, QueueFault> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| QueueFault::RingAccess)?
        .0;
    let next = queue.next_avail();
    // Both indexes are free-running u16: the distance wraps.
    let ahead = avail.wrapping_sub(next);
    if ahead > queue.size() {
        return Err(QueueFault::AvailIndexTooFar {
            avail,
            next,
            ahead,
            size: queue.size(),
        });
    }
    Ok(ahead)
}

/// Takes the next available chain, if any.
pub fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<Chain<'m>>, QueueFault> {
    if pending(queue, mem)? == 0 {
        return Ok(None);
    }
    let size = queue.size();
    // `iter` reports a bad index as an error instead of logging it (the guest may have moved
    // the index again since `pending` looked).
    let chain = match queue.iter(mem) {
        Ok(mut chains) => chains.next(),
        Err(virtio_queue::Error::InvalidAvailRingIndex) => {
            return Err(pending(queue, mem).err().unwrap_or(QueueFault::RingAccess))
        }
        Err(_) => return Err(QueueFault::RingAccess),
    };
    match chain {
        Some(c) if c.head_index() >= size => Err(QueueFault::HeadOutOfRange {
            head: c.head_index(),
            size,
        }),
        other => Ok(other),
    }
}

/// Returns a chain to the driver.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueFault> {
    if head >= queue.size() {
        // The crate would log this; `pop` never hands out such a head.
        return Err(QueueFault::HeadOutOfRange {
            head,
            size: queue.size(),
        });
    }
    queue
        .add_used(mem, head, len)
        .map_err(|_| QueueFault::RingAccess)
}

/// Asks for a doorbell on the next chain; `true` when chains arrived meanwhile.
pub fn enable_notification(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueFault> {
    queue
        .enable_notification(mem)
        .map_err(|_| QueueFault::RingAccess)?;
    Ok(pending(queue, mem)? > 0)
}

/// What a device did with a chain in [`drain`].
pub enum Served {
    /// Done: return it with this many bytes written.
    Used(u32),
    /// Not now (e.g. the host side is full): it goes back to the ring and draining stops.
    Retry,
}

/// What [`drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Chains were returned to the driver: it may want an interrupt.
    pub used: bool,
    /// The budget ran out with chains left: call again after looking at other events.
    pub more: bool,
    /// `serve` asked to retry a chain later.
    pub retry: bool,
    /// Available entries skipped because they name a descriptor beyond the table.
    pub skipped: u64,
}

/// Serves up to `budget` chains with `serve`, with doorbells off meanwhile (EVENT_IDX), and
/// asks for the next doorbell when the ring is empty. An available entry naming a descriptor
/// beyond the table is skipped (it has no used entry to go back to) and recorded in
/// `faults`; any other fault ends the draining, and what was served before it is in the
/// `Drained`.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    faults: &FaultLog,
    budget: usize,
    mut serve: F,
) -> (Drained, Result<(), QueueFault>)
where
    F: FnMut(Chain<'_>) -> Served,
{
    let mut done = Drained::default();
    let mut served = 0;
    loop {
        if queue.disable_notification(mem).is_err() {
            return (done, Err(QueueFault::RingAccess));
        }
        loop {
            if served == budget {
                // Doorbells stay off: the worker comes back without one.
                done.more = true;
                return (done, Ok(()));
            }
            served += 1;
            let chain = match pop(queue, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(fault @ QueueFault::HeadOutOfRange { .. }) => {
                    faults.record(fault.kind(), &fault);
                    done.skipped += 1;
                    continue;
                }
                Err(fault) => return (done, Err(fault)),
            };
            let head = chain.head_index();
            match serve(chain) {
                Served::Used(len) => {
                    if let Err(fault) = add_used(queue, mem, head, len) {
                        return (done, Err(fault));
                    }
                    done.used = true;
                }
                Served::Retry => {
                    queue.go_to_previous_position();
                    done.retry = true;
                    return (done, Ok(()));
                }
            }
        }
        match enable_notification(queue, mem) {
            Ok(true) => continue,
            Ok(false) => return (done, Ok(())),
            Err(fault) => return (done, Err(fault)),
        }
    }
}

/// Whether the driver wants an interrupt for what was just used (EVENT_IDX); when the ring
/// cannot be read, it gets one.
pub fn needs_notification(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    queue.needs_notification(mem).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::driver_ring::DriverRing;
    use crate::memory::create_guest_memory;
    use vm_memory::{Bytes, GuestAddress};

    fn ring() -> (GuestMemoryMmap, DriverRing, Queue) {
        let mem = create_guest_memory(16).unwrap();
        let ring = DriverRing::new(&mem, GuestAddress(0x10_0000), 16);
        let queue = ring.queue();
        (mem, ring, queue)
    }

    #[test]
    fn an_avail_index_past_the_ring_is_a_fault_not_an_empty_ring() {
        let (mem, ring, mut queue) = ring();
        // avail_idx sits at avail + 2; the driver ring's avail area follows its descriptors.
        let avail_idx_at = GuestAddress(0x10_0000 + 16 * 16 + 2);
        mem.write_obj(16u16 + 5, avail_idx_at).unwrap();
        let fault = pop(&mut queue, &mem).unwrap_err();
        assert_eq!(fault.kind(), GuestFault::AvailIndexTooFar);
        assert!(enable_notification(&mut queue, &mem).is_err());
        // Wrapping: next_avail 65530, avail 4 is 10 ahead, which is fine.
        queue.set_next_avail(65530);
        mem.write_obj(4u16, avail_idx_at).unwrap();
        assert_eq!(pending(&queue, &mem), Ok(10));
        drop(ring);
    }

    #[test]
    fn a_head_beyond_the_table_is_a_fault() {
        let (mem, mut ring, mut queue) = ring();
        ring.publish(&[40]);
        assert_eq!(
            pop(&mut queue, &mem).unwrap_err(),
            QueueFault::HeadOutOfRange { head: 40, size: 16 }
        );
    }

    #[test]
    fn drain_stops_at_the_budget_and_resumes() {
        let (mem, mut ring, mut queue) = ring();
        let heads: Vec<u16> = (0..10)
            .map(|i| ring.add_chain(&[(0x20_0000 + i * 64, 64, false)]))
            .collect();
        ring.publish(&heads);
        let log = FaultLog::new("test");
        let (done, result) = drain(&mut queue, &mem, &log, 4, |_| Served::Used(0));
        assert!(result.is_ok() && done.used && done.more);
        assert_eq!(ring.used_idx(), 4);
        let (done, result) = drain(&mut queue, &mem, &log, 100, |_| Served::Used(0));
        assert!(result.is_ok() && !done.more);
        assert_eq!(ring.used_idx(), 10);
    }
}
