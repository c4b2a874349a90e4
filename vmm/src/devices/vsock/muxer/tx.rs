//! The guest's transmit queue: packets from the guest, one operation each.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::devices::vsock::connection::State;
use crate::devices::vsock::packet::{self, op, Header, HOST_CID, TYPE_STREAM};
use crate::devices::worker::{guest_queue, GuestFault, LoopContext, Served, BUDGET};

use super::{refuse, Key, Worker, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, TX};

impl Worker {
    pub(super) fn process_tx(&mut self, ctx: &mut LoopContext) {
        self.tx_more = false;
        if ctx.is_broken(TX) {
            return;
        }
        let Some((mut queue, evt)) = self.m.tx.take() else {
            return;
        };
        let mem = self.m.mem.clone();
        let (done, result) = guest_queue::drain(&mut queue, &mem, ctx.faults(), BUDGET, |chain| {
            let (buffers, terminated) = packet::chain_buffers(chain);
            let read = if terminated {
                packet::read_tx(&mem, &buffers)
            } else {
                Err(packet::PacketError::Unterminated)
            };
            match read {
                Ok((header, payload)) => {
                    self.m.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                    self.handle_packet(header, &payload);
                }
                Err(e) => {
                    ctx.guest_fault(GuestFault::MalformedChain, &e);
                    self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                }
            }
            Served::Used(0)
        });
        self.m
            .counters
            .bad_packets
            .fetch_add(done.skipped, Ordering::Relaxed);
        self.tx_more = done.more;
        if let Err(fault) = result {
            ctx.queue_fault(TX, fault);
        }
        if done.used && guest_queue::needs_notification(&mut queue, &mem) {
            ctx.interrupt().trigger(TX);
        }
        self.m.tx = Some((queue, evt));
    }

    fn handle_packet(&mut self, h: Header, payload: &[u8]) {
        if h.src_cid != self.m.guest_cid || h.dst_cid != HOST_CID {
            self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.kind != TYPE_STREAM {
            self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
            if h.op != op::RST {
                self.queue(key.0, key.1, op::RST, 0);
            }
            return;
        }
        if h.op == op::REQUEST {
            self.guest_connect(key, &h);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != op::RST {
                self.queue(key.0, key.1, op::RST, 0);
            }
            return;
        };
        c.update_peer_credit(&h);
        match h.op {
            op::RESPONSE => {
                if !matches!(c.state, State::Connecting { .. }) {
                    self.reset(key);
                    return;
                }
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                match (&c.stream).write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => {
                        self.m.counters.connections.fetch_add(1, Ordering::Relaxed);
                        self.readable.insert(key);
                    }
                    _ => self.reset(key),
                }
            }
            op::RST => {
                if matches!(c.state, State::Connecting { .. }) {
                    refuse(
                        &c.stream,
                        &format!("connection refused by guest port {}", key.1),
                    );
                    self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
                }
                self.remove(key);
            }
            op::SHUTDOWN => {
                c.peer_shutdown(h.flags);
                self.flush(key);
            }
            op::RW => {
                if c.state != State::Established || !c.push_to_host(payload) {
                    // Data before the handshake, or more than the credit we gave.
                    self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                    self.reset(key);
                    return;
                }
                self.flush(key);
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                c.credit_requested = true;
                self.queue(key.0, key.1, op::CREDIT_UPDATE, 0);
            }
            _ => {
                self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                self.reset(key);
            }
        }
    }

    /// A guest REQUEST to host port `key.0`: forwarded to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: Key, h: &Header) {
        if self.conns.contains_key(&key)
            || self.host_connects.contains_key(&key)
            || self.conns.len() + self.host_connects.len() >= MAX_CONNECTIONS
        {
            self.queue(key.0, key.1, op::RST, 0);
            return;
        }
        self.try_host_connect(key, *h, Instant::now() + HANDSHAKE_TIMEOUT);
    }
}
