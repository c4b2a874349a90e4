//! The guest's receive and event queues: replies, host data under credit control, and
//! transport resets.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::vsock::packet::{
    self, op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::devices::worker::{guest_queue, GuestFault, LoopContext, QueueFault, BUDGET};

use super::{Key, Muxer, Worker, EVENT, EVENT_TRANSPORT_RESET, RX};
use crate::memory::GuestMemoryMmap;

/// What [`next_chain`] found on the receive or event queue.
enum Next<'m> {
    /// A chain to fill.
    Chain(guest_queue::Chain<'m>),
    /// An entry naming a descriptor beyond the table, reported and skipped: look again.
    Skipped,
    /// The ring was empty, and buffers came while doorbells went back on: look again.
    Refilled,
    /// The ring is empty with doorbells on, or the queue broke (reported): stop.
    Stop,
}

/// Takes the next chain of queue `index`. Out of buffers, it asks for a doorbell on the next
/// one: with EVENT_IDX the driver only kicks once it posts past avail_event, which only
/// enable_notification moves, so without it a driver that refills after the device ran dry
/// (Linux's does) never says so and host data waits for good.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    ctx: &mut LoopContext,
    index: u16,
) -> Next<'m> {
    match guest_queue::pop(queue, mem) {
        Ok(Some(chain)) => Next::Chain(chain),
        Ok(None) => match guest_queue::enable_notification(queue, mem) {
            Ok(true) => Next::Refilled,
            Ok(false) => Next::Stop,
            Err(fault) => {
                ctx.queue_fault(index, fault);
                Next::Stop
            }
        },
        Err(fault @ QueueFault::HeadOutOfRange { .. }) => {
            ctx.guest_fault(fault.kind(), &fault);
            Next::Skipped
        }
        Err(fault) => {
            ctx.queue_fault(index, fault);
            Next::Stop
        }
    }
}

impl Worker {
    /// Drops every connection (their host streams are closed, which host processes see as
    /// EOF) and tells the guest with one TRANSPORT_RESET event per request, so that it drops
    /// its side too (virtio 1.2, 5.10.6.7).
    pub(super) fn transport_reset(&mut self, ctx: &mut LoopContext, requests: u64) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let pending: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in pending {
            self.unwatch(fd);
            self.pending.remove(&fd);
        }
        self.control.clear();
        self.count_queued();
        self.host_connects.clear();
        self.events_owed = self
            .events_owed
            .saturating_add(u32::try_from(requests).unwrap_or(u32::MAX));
        self.deliver_events(ctx);
    }

    /// Takes queue `index` out of its `slot` for `fill` (nothing while the queue is broken or
    /// not active yet) and puts it back after, then interrupts the driver if `fill` used chains
    /// and the driver asked to hear of it.
    fn serve(
        &mut self,
        ctx: &mut LoopContext,
        index: u16,
        slot: fn(&mut Muxer) -> &mut Option<(Queue, EventFd)>,
        fill: impl FnOnce(&mut Self, &mut LoopContext, &mut Queue) -> bool,
    ) {
        if ctx.is_broken(index) {
            return;
        }
        let Some((mut queue, evt)) = slot(&mut self.m).take() else {
            return;
        };
        let used_any = fill(self, ctx, &mut queue);
        if used_any && guest_queue::needs_notification(&mut queue, &self.m.mem) {
            ctx.interrupt().trigger(index);
        }
        *slot(&mut self.m) = Some((queue, evt));
    }

    /// Writes owed events into the buffers the guest posted on the event queue.
    pub(super) fn deliver_events(&mut self, ctx: &mut LoopContext) {
        self.serve(ctx, EVENT, |m| &mut m.event, Self::fill_event_chains);
    }

    /// The body of [`Self::deliver_events`]; says whether it used chains.
    fn fill_event_chains(&mut self, ctx: &mut LoopContext, queue: &mut Queue) -> bool {
        let mem = self.m.mem.clone();
        let mut used_any = false;
        let mut looked_again = false;
        while self.events_owed > 0 {
            let chain = match next_chain(queue, &mem, ctx, EVENT) {
                Next::Chain(chain) => chain,
                Next::Skipped => continue,
                Next::Refilled if !looked_again => {
                    looked_again = true;
                    continue;
                }
                Next::Refilled | Next::Stop => break,
            };
            let head = chain.head_index();
            let first = chain.clone().next();
            let terminated = chain.last().is_some_and(|d| !d.has_next());
            let written = match first {
                Some(d) if terminated && d.is_write_only() && d.len() >= 4 => mem
                    .write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr())
                    .is_ok(),
                _ => false,
            };
            if let Err(fault) =
                guest_queue::add_used(queue, &mem, head, if written { 4 } else { 0 })
            {
                ctx.queue_fault(EVENT, fault);
                break;
            }
            used_any = true;
            if written {
                self.events_owed -= 1;
                self.m.counters.events.fetch_add(1, Ordering::Relaxed);
            } else {
                self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
        used_any
    }

    /// Delivers control packets, then host data, into the guest's rx buffers.
    pub(super) fn fill_rx(&mut self, ctx: &mut LoopContext) {
        self.serve(ctx, RX, |m| &mut m.rx, Self::fill_rx_chains);
    }

    /// The body of [`Self::fill_rx`]; says whether it used chains.
    fn fill_rx_chains(&mut self, ctx: &mut LoopContext, queue: &mut Queue) -> bool {
        let mem = self.m.mem.clone();
        let mut used_any = false;
        let mut data_keys: VecDeque<Key> = self
            .readable
            .iter()
            .copied()
            .filter(|k| {
                self.conns
                    .get(k)
                    .is_some_and(|c| c.wants_to_send() || c.host_eof)
            })
            .collect();
        let mut served = 0;
        self.rx_more = false;
        while !self.control.is_empty() || !data_keys.is_empty() {
            if served == BUDGET {
                // The rest on the next turn; the loop looks at its stop request in between.
                self.rx_more = true;
                break;
            }
            served += 1;
            let chain = match next_chain(queue, &mem, ctx, RX) {
                Next::Chain(chain) => chain,
                // Buffers came while doorbells went back on: look again (the budget bounds it).
                Next::Skipped | Next::Refilled => continue,
                Next::Stop => {
                    self.rx_starved = true;
                    break;
                }
            };
            let head = chain.head_index();
            let (buffers, terminated) = packet::chain_buffers(chain);
            let Some(capacity) = packet::rx_capacity(&buffers).filter(|_| terminated) else {
                ctx.guest_fault(GuestFault::MalformedChain, &"vsock receive chain");
                self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                let _ = guest_queue::add_used(queue, &mem, head, 0);
                used_any = true;
                continue;
            };
            let produced = if let Some(ctl) = self.control.pop_front() {
                self.count_queued();
                let mut h = self.header(ctl.local_port, ctl.peer_port, ctl.op, ctl.flags);
                if let Some(c) = self.conns.get_mut(&(ctl.local_port, ctl.peer_port)) {
                    c.stamp(&mut h);
                }
                Some((h, Vec::new()))
            } else {
                let key = data_keys.pop_front().expect("checked non-empty");
                self.host_data(key, capacity)
            };
            match produced {
                Some((h, payload)) => match packet::write_rx(&mem, &buffers, &h, &payload) {
                    Ok(n) => {
                        // At most a header and MAX_PAYLOAD bytes.
                        let n = u32::try_from(n).unwrap_or(u32::MAX);
                        let _ = guest_queue::add_used(queue, &mem, head, n);
                        self.m.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                        used_any = true;
                        if h.op == op::RW {
                            // Round robin: the connection may have more.
                            data_keys.push_back((h.src_port, h.dst_port));
                        }
                    }
                    Err(_) => {
                        self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                        let _ = guest_queue::add_used(queue, &mem, head, 0);
                        used_any = true;
                    }
                },
                None => queue.go_to_previous_position(),
            }
        }
        used_any
    }

    fn header(&self, local_port: u32, peer_port: u32, op: u16, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.m.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The next packet of host data for `key`, if any fits now.
    fn host_data(&mut self, key: Key, capacity: usize) -> Option<(Header, Vec<u8>)> {
        let mut h = self.header(key.0, key.1, op::RW, 0);
        let c = self.conns.get_mut(&key)?;
        if c.host_eof {
            // The host closed its side: tell the guest once, then stop reading.
            self.readable.remove(&key);
            if c.eof_told {
                return None;
            }
            c.eof_told = true;
            h.op = op::SHUTDOWN;
            h.flags = SHUTDOWN_SEND | if c.peer_done_sending { SHUTDOWN_RCV } else { 0 };
            c.stamp(&mut h);
            return Some((h, Vec::new()));
        }
        if !c.wants_to_send() {
            self.readable.remove(&key);
            return None;
        }
        let max = capacity
            .min(c.peer_credit() as usize)
            .min(packet::MAX_PAYLOAD as usize);
        match c.read_from_host(max) {
            Ok(Some(data)) => {
                // At most MAX_PAYLOAD (64 KiB), the cap on `max`.
                h.len = u32::try_from(data.len()).unwrap_or(packet::MAX_PAYLOAD);
                c.sent_to_guest(data.len());
                c.stamp(&mut h);
                Some((h, data))
            }
            Ok(None) if c.host_eof => self.host_data(key, capacity),
            Ok(None) => {
                self.readable.remove(&key);
                None
            }
            Err(_) => {
                self.reset(key);
                None
            }
        }
    }
}
