//! The virtio-vsock driver and its workload, run on the BSP: an echo server on a guest port
//! (every byte a host connection sends comes back, then the guest shuts the connection
//! down), one guest-initiated connection to a host port, and the transport-reset events the
//! host raises at the end.
//!
//! Echoes are zero-copy: the payload of a received packet goes back out of the same rx
//! buffer, which is reposted only once the tx packet is used. Every rx buffer is one 4 KiB
//! descriptor holding the header and up to 4052 payload bytes; a tx packet is a header
//! descriptor, plus a payload descriptor for RW.

use super::buf::{dma_addr, read_bytes, write_bytes, DmaBufs};
use super::queue::{Virtq, QUEUE_SIZE_CAP};
use super::{idle, mmio, settle, IrqPacer};
use crate::arch::{self, Deadline};
use pulse_probe::cmdline::{VsockPlan, MAX_VSOCK_CONNS};
use pulse_probe::devreport::VsockResult;
use pulse_probe::virtio_spec::ring;
use pulse_probe::vsock_spec::{
    self as vs, credit, op, Header, HEADER_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

const RX_SLOTS: usize = QUEUE_SIZE_CAP as usize;
const RX_BUF: usize = 4096;
/// Two descriptors per tx packet (header, payload).
const TX_SLOTS: usize = QUEUE_SIZE_CAP as usize / 2;
const EV_SLOTS: usize = 8;
/// What the guest tells the device it can buffer per connection.
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
/// The guest port of the guest-initiated connection.
const CONNECT_SRC_PORT: u32 = 49152;
const CONNECT_MSG: &[u8] = b"hello from pulse-probe\n";
/// What the host's listener answers (the VMM's probe harness).
pub const CONNECT_REPLY: &[u8] = b"hello from pulse-vmm\n";
/// The whole workload must finish within this (real time).
const WORKLOAD_MS: u64 = 40_000;
/// Interrupts still on their way when the workload ends get this long to land.
/// Connection slots: the echo connections, then the guest-initiated one, then a scratch
/// slot that carries the addresses of an RST for a packet no connection owns.
const ECHO_CONNS: usize = MAX_VSOCK_CONNS as usize;
const OUTGOING: usize = ECHO_CONNS;
const SCRATCH: usize = ECHO_CONNS + 1;
const MAX_CONNS: usize = ECHO_CONNS + 2;

#[repr(C, align(4096))]
struct Buffers {
    rx: [[u8; RX_BUF]; RX_SLOTS],
    tx_headers: [[u8; 64]; TX_SLOTS],
    events: [[u8; 8]; EV_SLOTS],
    reply: [u8; 64],
}

#[link_section = ".noinit.vsock_bufs"]
static BUFS: DmaBufs<Buffers> = DmaBufs::new();

fn rx_addr(slot: usize) -> u64 {
    dma_addr!(BUFS, rx[slot])
}

fn tx_header_addr(slot: usize) -> u64 {
    dma_addr!(BUFS, tx_headers[slot])
}

fn event_addr(slot: usize) -> u64 {
    dma_addr!(BUFS, events[slot])
}

/// The device's queues as the transport set them up.
#[derive(Clone, Copy)]
pub struct Queues {
    pub rx: Virtq,
    pub tx: Virtq,
    pub ev: Virtq,
    /// Doorbell addresses (per-queue doorbells, or QueueNotify) and the value to write.
    pub doorbells: [(u64, u32); 3],
    pub size: u16,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ConnState {
    #[default]
    Free,
    /// Guest-initiated, REQUEST sent.
    Connecting,
    Open,
    /// The guest sent its SHUTDOWN; waiting for the device's RST (or nothing).
    Closed,
}

#[derive(Clone, Copy, Default)]
struct Conn {
    state: ConnState,
    local_port: u32,
    peer_port: u32,
    outgoing: bool,
    /// Payload bytes received, queued for echo, and echoed (tx used).
    received: u32,
    echo_queued: u32,
    echoed: u32,
    /// Bytes the guest sent (credit accounting) and the peer's advertised credit.
    sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The peer will send no more.
    peer_done: bool,
    reply_ok: bool,
}

/// A packet waiting for a tx slot.
#[derive(Clone, Copy)]
enum Pkt {
    Control { conn: u8, op: u16, flags: u32 },
    Echo { conn: u8, rx_slot: u8, len: u16 },
    Hello { conn: u8 },
}

const PENDING: usize = 512;

struct Driver {
    q: Queues,
    plan: VsockPlan,
    guest_cid: u64,
    conns: [Conn; MAX_CONNS],
    pending: [Option<Pkt>; PENDING],
    pend_head: usize,
    pend_len: usize,
    tx_inflight: [Option<Pkt>; TX_SLOTS],
    /// Free-running ring indexes.
    rx_avail: u16,
    rx_used: u16,
    tx_avail: u16,
    tx_used: u16,
    ev_avail: u16,
    ev_used: u16,
    /// rx slots to repost at the end of this round.
    repost: [u8; RX_SLOTS],
    n_repost: usize,
    result: VsockResult,
}

impl Driver {
    fn conn_index(&self, local: u32, peer: u32) -> Option<usize> {
        self.conns.iter().position(|c| {
            c.state != ConnState::Free && c.local_port == local && c.peer_port == peer
        })
    }

    fn push(&mut self, p: Pkt) -> bool {
        if self.pend_len == PENDING {
            return false;
        }
        self.pending[(self.pend_head + self.pend_len) % PENDING] = Some(p);
        self.pend_len += 1;
        true
    }

    fn header(&self, c: &Conn, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: c.local_port,
            dst_port: c.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: GUEST_BUF_ALLOC,
            // Consumed = echoed (their rx buffers are free again) or, for the outgoing
            // connection, everything received.
            fwd_cnt: if c.outgoing { c.received } else { c.echoed },
        }
    }

    fn post_rx(&mut self, slot: usize) {
        let vq = self.q.rx;
        vq.post_writable(
            &mut self.rx_avail,
            slot as u16,
            rx_addr(slot),
            RX_BUF as u32,
        );
    }

    fn post_event(&mut self, slot: usize) {
        let vq = self.q.ev;
        vq.post_writable(&mut self.ev_avail, slot as u16, event_addr(slot), 8);
    }

    fn kick(&self, which: usize) {
        let (addr, value) = self.q.doorbells[which];
        mmio::ring_doorbell(addr, value);
    }

    /// Handles every used rx buffer. Returns whether there was any.
    fn drain_rx(&mut self) -> bool {
        let mut any = false;
        while let Some((id, len)) = self.q.rx.pop_used(&mut self.rx_used) {
            any = true;
            let slot = id as usize;
            if slot >= RX_SLOTS || (len as usize) < HEADER_SIZE {
                self.result.bad_packets += 1;
                if slot < RX_SLOTS {
                    self.repost_later(slot);
                }
                continue;
            }
            let h = Header::decode(&read_bytes::<HEADER_SIZE>(rx_addr(slot)));
            let payload = (len as usize - HEADER_SIZE).min(h.len as usize);
            if !self.packet(slot, &h, payload) {
                self.repost_later(slot);
            }
        }
        any
    }

    fn repost_later(&mut self, slot: usize) {
        self.repost[self.n_repost] = slot as u8;
        self.n_repost += 1;
    }

    /// One packet from the device. Returns true when the rx buffer is kept (an echo holds
    /// it until its tx packet is used).
    fn packet(&mut self, slot: usize, h: &Header, payload: usize) -> bool {
        if h.dst_cid != self.guest_cid || h.kind != TYPE_STREAM {
            self.result.bad_packets += 1;
            return false;
        }
        let found = self.conn_index(h.dst_port, h.src_port);
        if h.op == op::REQUEST {
            if found.is_some() || h.dst_port != self.plan.listen_port {
                self.reply_rst(h);
                return false;
            }
            match self.conns[..ECHO_CONNS]
                .iter()
                .position(|c| c.state == ConnState::Free)
            {
                Some(i) => {
                    self.conns[i] = Conn {
                        state: ConnState::Open,
                        local_port: h.dst_port,
                        peer_port: h.src_port,
                        peer_buf_alloc: h.buf_alloc,
                        peer_fwd_cnt: h.fwd_cnt,
                        ..Conn::default()
                    };
                    self.result.conns_accepted += 1;
                    self.push(Pkt::Control {
                        conn: i as u8,
                        op: op::RESPONSE,
                        flags: 0,
                    });
                }
                None => self.reply_rst(h),
            }
            return false;
        }
        let Some(i) = found else {
            if h.op != op::RST {
                self.result.bad_packets += 1;
            }
            return false;
        };
        let c = &mut self.conns[i];
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            op::RESPONSE if c.state == ConnState::Connecting => {
                c.state = ConnState::Open;
                self.push(Pkt::Hello { conn: i as u8 });
            }
            op::RW if c.state == ConnState::Open && payload > 0 => {
                c.received = c.received.wrapping_add(payload as u32);
                if c.outgoing {
                    let got = read_bytes::<64>(rx_addr(slot) + HEADER_SIZE as u64);
                    c.reply_ok = payload == CONNECT_REPLY.len() && got[..payload] == *CONNECT_REPLY;
                    c.state = ConnState::Closed;
                    self.push(Pkt::Control {
                        conn: i as u8,
                        op: op::SHUTDOWN,
                        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                    });
                    return false;
                }
                c.echo_queued = c.echo_queued.wrapping_add(payload as u32);
                return self.push(Pkt::Echo {
                    conn: i as u8,
                    rx_slot: slot as u8,
                    len: payload as u16,
                });
            }
            op::SHUTDOWN => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.peer_done = true;
                }
                self.maybe_close(i);
            }
            op::RST => {
                if c.outgoing && c.state != ConnState::Closed {
                    c.reply_ok = false;
                }
                c.state = ConnState::Free;
            }
            op::CREDIT_REQUEST => {
                self.push(Pkt::Control {
                    conn: i as u8,
                    op: op::CREDIT_UPDATE,
                    flags: 0,
                });
            }
            op::CREDIT_UPDATE | op::RW => {}
            _ => self.result.bad_packets += 1,
        }
        false
    }

    /// An echo connection whose peer is done and whose data is all echoed gets the guest's
    /// SHUTDOWN and counts as done.
    fn maybe_close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.outgoing || c.state != ConnState::Open || !c.peer_done || c.echoed != c.received {
            return;
        }
        c.state = ConnState::Closed;
        if c.echoed == self.plan.bytes {
            self.result.conns_done += 1;
        }
        self.push(Pkt::Control {
            conn: i as u8,
            op: op::SHUTDOWN,
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
        });
    }

    /// RST for a packet that matches no connection of ours (a refused REQUEST).
    fn reply_rst(&mut self, h: &Header) {
        let slot = SCRATCH;
        if self.conns[slot].state != ConnState::Free {
            self.result.bad_packets += 1;
            return;
        }
        // A one-off pseudo connection in the last slot carries the addresses.
        self.conns[slot] = Conn {
            state: ConnState::Closed,
            local_port: h.dst_port,
            peer_port: h.src_port,
            ..Conn::default()
        };
        self.push(Pkt::Control {
            conn: slot as u8,
            op: op::RST,
            flags: 0,
        });
    }

    /// Submits pending packets while tx slots (and, for data, the peer's credit) allow.
    fn submit_tx(&mut self) -> bool {
        let mut submitted = false;
        let mut deferred = 0;
        while self.pend_len > deferred {
            let usable = TX_SLOTS.min(self.q.size as usize / 2);
            let Some(slot) = self.tx_inflight[..usable].iter().position(Option::is_none) else {
                break;
            };
            let idx = self.pend_head;
            let Some(p) = self.pending[idx].take() else {
                break;
            };
            self.pend_head = (self.pend_head + 1) % PENDING;
            self.pend_len -= 1;
            let (conn, op, flags, data) = match p {
                Pkt::Control { conn, op, flags } => (conn, op, flags, None),
                Pkt::Echo { conn, rx_slot, len } => (
                    conn,
                    op::RW,
                    0,
                    Some((rx_addr(rx_slot as usize) + HEADER_SIZE as u64, len as u32)),
                ),
                Pkt::Hello { conn } => {
                    let a = dma_addr!(BUFS, reply);
                    write_bytes(a, CONNECT_MSG);
                    (conn, op::RW, 0, Some((a, CONNECT_MSG.len() as u32)))
                }
            };
            let c = self.conns[conn as usize];
            let len = data.map_or(0, |(_, l)| l);
            if len > 0 && credit(c.peer_buf_alloc, c.peer_fwd_cnt, c.sent) < len {
                // No credit yet: put it back at the end and ask for an update.
                self.push(p);
                deferred += 1;
                continue;
            }
            let h = self.header(&c, op, flags, len);
            let hdr_addr = tx_header_addr(slot);
            write_bytes(hdr_addr, &h.encode());
            let (d0, d1) = (2 * slot as u16, 2 * slot as u16 + 1);
            let vq = self.q.tx;
            match data {
                Some((addr, len)) => {
                    vq.set_desc(d0, hdr_addr, HEADER_SIZE as u32, ring::DESC_F_NEXT, d1);
                    vq.set_desc(d1, addr, len, 0, 0);
                }
                None => vq.set_desc(d0, hdr_addr, HEADER_SIZE as u32, 0, 0),
            }
            vq.push_avail(&mut self.tx_avail, d0);
            self.conns[conn as usize].sent = c.sent.wrapping_add(len);
            self.tx_inflight[slot] = Some(p);
            submitted = true;
        }
        if submitted {
            self.q.tx.publish(self.tx_avail);
            self.kick(1);
        }
        submitted
    }

    /// Handles used tx packets: frees their slots, reposts echoed rx buffers.
    fn drain_tx(&mut self) -> bool {
        let mut any = false;
        while let Some((id, _)) = self.q.tx.pop_used(&mut self.tx_used) {
            any = true;
            let slot = id as usize / 2;
            let Some(p) = self.tx_inflight.get_mut(slot).and_then(Option::take) else {
                self.result.bad_packets += 1;
                continue;
            };
            match p {
                Pkt::Echo { conn, rx_slot, len } => {
                    let c = &mut self.conns[conn as usize];
                    c.echoed = c.echoed.wrapping_add(len as u32);
                    self.result.bytes_echoed += len as u64;
                    self.repost_later(rx_slot as usize);
                    self.maybe_close(conn as usize);
                }
                Pkt::Control { conn, op, .. } => {
                    let c = &mut self.conns[conn as usize];
                    if op == op::RST && conn as usize == SCRATCH {
                        c.state = ConnState::Free;
                    }
                }
                Pkt::Hello { .. } => {}
            }
        }
        any
    }

    fn drain_events(&mut self) -> bool {
        let mut any = false;
        while let Some((id, len)) = self.q.ev.pop_used(&mut self.ev_used) {
            any = true;
            let slot = (id as usize).min(EV_SLOTS - 1);
            let event = u32::from_le_bytes({
                let b = read_bytes::<8>(event_addr(slot));
                [b[0], b[1], b[2], b[3]]
            });
            if len >= 4 && event == vs::EVENT_TRANSPORT_RESET {
                self.result.events += 1;
                // Every connection is gone (virtio 1.2, 5.10.6.7).
                for c in self.conns.iter_mut() {
                    c.state = ConnState::Free;
                }
            } else {
                self.result.bad_packets += 1;
            }
            self.post_event(slot);
        }
        if any {
            self.q.ev.publish(self.ev_avail);
            self.kick(2);
        }
        any
    }

    fn flush_reposts(&mut self) {
        if self.n_repost == 0 {
            return;
        }
        for i in 0..self.n_repost {
            let slot = self.repost[i] as usize;
            self.post_rx(slot);
        }
        self.n_repost = 0;
        self.q.rx.publish(self.rx_avail);
        self.kick(0);
    }

    fn done(&self) -> bool {
        let echoes = self.result.conns_done >= self.plan.conns;
        let connect = self.plan.connect_port.is_none() || self.result.connect.is_some();
        echoes && connect && self.result.events >= self.plan.events
    }
}

/// Runs the vsock workload on the BSP with interrupts off (they come in only while it
/// halts). `pacers` pace the rx, tx and event queues' interrupts.
pub fn run(q: Queues, guest_cid: u64, plan: VsockPlan, mut pacers: [IrqPacer; 3]) -> VsockResult {
    const NO_CONN: Conn = Conn {
        state: ConnState::Free,
        local_port: 0,
        peer_port: 0,
        outgoing: false,
        received: 0,
        echo_queued: 0,
        echoed: 0,
        sent: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        peer_done: false,
        reply_ok: false,
    };
    let mut d = Driver {
        q,
        plan,
        guest_cid,
        conns: [NO_CONN; MAX_CONNS],
        pending: [None; PENDING],
        pend_head: 0,
        pend_len: 0,
        tx_inflight: [None; TX_SLOTS],
        rx_avail: 0,
        rx_used: 0,
        tx_avail: 0,
        tx_used: 0,
        ev_avail: 0,
        ev_used: 0,
        repost: [0; RX_SLOTS],
        n_repost: 0,
        result: VsockResult {
            guest_cid,
            conns_expected: plan.conns,
            bytes_expected: plan.bytes,
            events_expected: plan.events,
            ..VsockResult::default()
        },
    };
    let rx_slots = RX_SLOTS.min(q.size as usize);
    for slot in 0..rx_slots {
        d.post_rx(slot);
    }
    d.q.rx.publish(d.rx_avail);
    d.kick(0);
    for slot in 0..EV_SLOTS.min(q.size as usize) {
        d.post_event(slot);
    }
    d.q.ev.publish(d.ev_avail);
    d.kick(2);

    if let Some(port) = plan.connect_port {
        let i = OUTGOING;
        d.conns[i] = Conn {
            state: ConnState::Connecting,
            local_port: CONNECT_SRC_PORT,
            peer_port: port,
            outgoing: true,
            ..Conn::default()
        };
        d.push(Pkt::Control {
            conn: i as u8,
            op: op::REQUEST,
            flags: 0,
        });
    }

    let mut deadline = Deadline::after_ms(WORKLOAD_MS);
    loop {
        let mut progress = d.drain_rx();
        progress |= d.drain_tx();
        progress |= d.drain_events();
        progress |= d.submit_tx();
        d.flush_reposts();
        // Take the interrupts that came while this round ran: the pacers must see them.
        arch::interrupt_window();
        pacers[0].rearm(&d.q.rx, d.rx_used);
        pacers[1].rearm(&d.q.tx, d.tx_used);
        pacers[2].rearm(&d.q.ev, d.ev_used);
        let outgoing = &d.conns[OUTGOING];
        if plan.connect_port.is_some() && d.result.connect.is_none() {
            if outgoing.reply_ok {
                d.result.connect = Some(true);
            } else if outgoing.state == ConnState::Free && outgoing.outgoing {
                d.result.connect = Some(false);
            }
        }
        if d.done() {
            break;
        }
        if deadline.expired() {
            if plan.connect_port.is_some() && d.result.connect.is_none() {
                d.result.connect = Some(false);
            }
            break;
        }
        if !progress {
            idle();
        }
    }
    settle();
    d.result
}
