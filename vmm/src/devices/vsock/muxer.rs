//! The vsock device's one worker thread: it moves packets between the guest's rx/tx queues and
//! the host's unix sockets, for every connection at once.
//!
//! Host-initiated: a process connects to the VMM's socket, writes `CONNECT <port>\n`; the muxer
//! sends the guest a REQUEST and answers `OK <local port>\n` when the guest accepts (or
//! `ERR <reason>\n` and closes). Guest-initiated: a REQUEST to host port P connects to
//! `<uds_path>_P` without blocking: a listener whose backlog is full is tried again until
//! [`HANDSHAKE_TIMEOUT`], while the other connections go on. Data then flows under
//! virtio-vsock credit control in both directions.
//!
//! The worker runs the shared device loop: it always stops, a ring the guest breaks stops
//! that queue (DEVICE_NEEDS_RESET), and replies the guest has no buffer for wait in a queue
//! of at most [`MAX_QUEUED_REPLIES`] packets (beyond it they are dropped and counted).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::connection::{Connection, State};
use super::packet::{self, op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::connect_nonblocking;
use super::unix::{forward_path, LineStatus, PendingConnect};
use crate::devices::worker::{
    self, guest_queue, DeviceWorker, GuestFault, LoopContext, QueueFault, Served, BUDGET,
};
use crate::memory::GuestMemoryMmap;

/// How long a host process has to send its CONNECT line, and the guest to answer a REQUEST.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Host ports handed to host-initiated connections start here (as in Firecracker's scheme).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Most connections (established or in handshake) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets (RST, RESPONSE, credit updates) waiting for guest rx buffers. Every
/// packet for an unknown connection earns a reply: without a bound a guest that posts no rx
/// buffers grows the VMM without end.
pub const MAX_QUEUED_REPLIES: usize = 4 * MAX_CONNECTIONS;
/// How often a connect to a host listener whose backlog is full is tried again.
const HOST_CONNECT_RETRY: Duration = Duration::from_millis(50);

/// Counters of the device.
#[derive(Debug, Default)]
pub struct VsockCounters {
    /// Connections that reached the established state.
    pub connections: AtomicU64,
    /// CONNECT lines refused and guest REQUESTs that could not be forwarded.
    pub refused: AtomicU64,
    /// Packets the guest sent.
    pub tx_packets: AtomicU64,
    /// Packets delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Malformed or misaddressed packets from the guest.
    pub bad_packets: AtomicU64,
    /// Events delivered on the event queue (transport resets).
    pub events: AtomicU64,
    /// Control replies dropped because [`MAX_QUEUED_REPLIES`] were already waiting.
    pub replies_dropped: AtomicU64,
    /// Control replies waiting for guest rx buffers now.
    pub replies_queued: AtomicU64,
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2, 5.10.6.7): every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;

type Key = (u32, u32);

/// A packet without payload waiting for an rx buffer.
#[derive(Clone, Copy, Debug)]
struct Control {
    local_port: u32,
    peer_port: u32,
    op: u16,
    flags: u32,
}

/// Everything the worker owns.
pub struct Muxer {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The guest's CID.
    pub guest_cid: u64,
    /// The hybrid-vsock socket path.
    pub uds_path: PathBuf,
    /// Its listener.
    pub listener: UnixListener,
    /// rx queue (index 0) and its doorbell.
    pub rx: Option<(Queue, EventFd)>,
    /// tx queue (index 1) and its doorbell.
    pub tx: Option<(Queue, EventFd)>,
    /// event queue (index 2) and its doorbell: the guest posts buffers for device events.
    pub event: Option<(Queue, EventFd)>,
    /// Written by [`super::VsockHandle::transport_reset`].
    pub reset_request: EventFd,
    /// Stop request.
    pub kill: EventFd,
    /// Counters.
    pub counters: Arc<VsockCounters>,
}

/// A guest REQUEST whose host listener had a full backlog: tried again until `deadline`.
struct HostConnect {
    request: Header,
    deadline: Instant,
}

struct Worker {
    m: Muxer,
    /// epoll changes waiting for the loop's context (applied in order).
    interest_changes: Vec<(RawFd, Option<EventSet>)>,
    pending: HashMap<RawFd, PendingConnect>,
    host_connects: HashMap<Key, HostConnect>,
    next_connect_retry: Option<Instant>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    interest: HashMap<RawFd, EventSet>,
    readable: HashSet<Key>,
    control: VecDeque<Control>,
    next_local_port: u32,
    rx_starved: bool,
    /// Transport resets not yet delivered (the guest had no event buffer posted).
    events_owed: u32,
    /// Transmit chains left after a budgeted turn.
    tx_more: bool,
    /// Packets for the guest left after a budgeted turn.
    rx_more: bool,
}

fn is_would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

/// Best-effort refusal line to a host process, then the stream is dropped.
fn refuse(mut stream: &UnixStream, reason: &str) {
    let _ = stream.write_all(format!("ERR {reason}\n").as_bytes());
}

impl Muxer {
    /// Runs on the device loop until `kill` is written.
    pub fn run(self, mut ctx: LoopContext) {
        let kill = match self.kill.try_clone() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!("vsock: {e}");
                return;
            }
        };
        let mut w = Worker::new(self);
        if let Err(e) = worker::run(&mut w, &mut ctx, &kill) {
            tracing::error!("vsock: {e}");
        }
    }
}

const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;

impl Worker {
    fn new(m: Muxer) -> Self {
        Self {
            m,
            interest_changes: Vec::new(),
            pending: HashMap::new(),
            host_connects: HashMap::new(),
            next_connect_retry: None,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            interest: HashMap::new(),
            readable: HashSet::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_starved: false,
            events_owed: 0,
            tx_more: false,
            rx_more: false,
        }
    }

    fn watch(&mut self, fd: RawFd, events: EventSet) {
        if self.interest.get(&fd) == Some(&events) {
            return;
        }
        self.interest.insert(fd, events);
        self.interest_changes.push((fd, Some(events)));
    }

    fn unwatch(&mut self, fd: RawFd) {
        if self.interest.remove(&fd).is_some() {
            self.interest_changes.push((fd, None));
        }
    }

    /// Applies the epoll changes made since the last call, in order.
    fn apply_interest(&mut self, ctx: &LoopContext) {
        let mut added: HashSet<RawFd> = HashSet::new();
        for (fd, change) in self.interest_changes.drain(..) {
            match change {
                None => {
                    ctx.unwatch(fd);
                    added.remove(&fd);
                }
                Some(set) => {
                    let token = super::fd_token(fd);
                    let result = if added.contains(&fd) {
                        ctx.rewatch(fd, token, set)
                    } else {
                        // Modify first: the fd may be watched since an earlier turn.
                        ctx.rewatch(fd, token, set)
                            .or_else(|_| ctx.watch(fd, token, set))
                    };
                    match result {
                        Ok(()) => {
                            added.insert(fd);
                        }
                        Err(e) => {
                            tracing::warn!("vsock: epoll_ctl on fd {fd}: {e}");
                            self.interest.remove(&fd);
                        }
                    }
                }
            }
        }
    }

    fn fd_of(q: &Option<(Queue, EventFd)>) -> Option<RawFd> {
        q.as_ref().map(|(_, e)| e.as_raw_fd())
    }
}

impl DeviceWorker for Worker {
    fn start(&mut self, ctx: &mut LoopContext) {
        let mut fixed = vec![self.m.listener.as_raw_fd()];
        fixed.extend(Self::fd_of(&self.m.rx));
        fixed.extend(Self::fd_of(&self.m.tx));
        fixed.extend(Self::fd_of(&self.m.event));
        fixed.push(self.m.reset_request.as_raw_fd());
        for fd in fixed {
            self.watch(fd, EventSet::IN);
        }
        // Anything the guest queued before we started.
        self.process_tx(ctx);
        self.turn_done(ctx);
    }

    fn event(&mut self, ctx: &mut LoopContext, token: u64, set: EventSet) {
        // Every token is a descriptor's (`apply_interest`).
        let Ok(fd) = RawFd::try_from(token) else {
            return;
        };
        if Some(fd) == Self::fd_of(&self.m.tx) {
            if let Some((_, e)) = &self.m.tx {
                let _ = e.read();
            }
            self.process_tx(ctx);
        } else if Some(fd) == Self::fd_of(&self.m.rx) {
            if let Some((_, e)) = &self.m.rx {
                let _ = e.read();
            }
            self.rx_starved = false;
        } else if Some(fd) == Self::fd_of(&self.m.event) {
            if let Some((_, e)) = &self.m.event {
                let _ = e.read();
            }
            self.deliver_events(ctx);
        } else if fd == self.m.reset_request.as_raw_fd() {
            if let Ok(n) = self.m.reset_request.read() {
                self.transport_reset(ctx, n);
            }
        } else if fd == self.m.listener.as_raw_fd() {
            self.accept();
        } else if self.pending.contains_key(&fd) {
            self.advance_pending(fd);
        } else if let Some(key) = self.by_fd.get(&fd).copied() {
            self.connection_event(key, set);
        }
    }

    fn turn_done(&mut self, ctx: &mut LoopContext) {
        if self.tx_more {
            self.process_tx(ctx);
        }
        self.retry_host_connects();
        self.expire();
        self.fill_rx(ctx);
        self.update_interest();
        self.apply_interest(ctx);
    }

    fn has_more(&self) -> bool {
        self.tx_more || self.rx_more
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.host_connects.is_empty() {
            return Some(HOST_CONNECT_RETRY);
        }
        let handshakes = !self.pending.is_empty()
            || self
                .conns
                .values()
                .any(|c| matches!(c.state, State::Connecting { .. }));
        handshakes.then_some(Duration::from_millis(250))
    }
}

impl Worker {
    fn accept(&mut self) {
        loop {
            match self.m.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() + self.conns.len() >= MAX_CONNECTIONS {
                        refuse(&stream, "too many connections");
                        self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending.insert(
                        fd,
                        PendingConnect::new(stream, Instant::now() + HANDSHAKE_TIMEOUT),
                    );
                    self.watch(fd, EventSet::IN);
                    // The line may already be there.
                    self.advance_pending(fd);
                }
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    fn advance_pending(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let status = p.read_line();
        if status == LineStatus::Incomplete {
            return;
        }
        let p = self.pending.remove(&fd).expect("present");
        self.unwatch(fd);
        match status {
            LineStatus::Port(port) => {
                let local = self.allocate_local_port(port);
                let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                let conn = Connection::new(p.stream, local, port, State::Connecting { deadline });
                self.insert(conn);
                self.queue(local, port, op::REQUEST, 0);
            }
            LineStatus::Refused(e) => {
                refuse(&p.stream, &e.to_string());
                self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            LineStatus::Closed | LineStatus::Incomplete => {}
        }
    }

    fn allocate_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.readable.insert(key);
    }

    fn remove(&mut self, key: Key) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        let fd = conn.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        self.unwatch(fd);
        self.readable.remove(&key);
        Some(conn)
    }

    fn queue(&mut self, local_port: u32, peer_port: u32, op: u16, flags: u32) {
        if self.control.len() >= MAX_QUEUED_REPLIES {
            // The guest posts no rx buffers and keeps sending: its replies are lost, its
            // connections time out or get reset, the VMM does not grow.
            self.m
                .counters
                .replies_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.control.push_back(Control {
            local_port,
            peer_port,
            op,
            flags,
        });
        self.count_queued();
    }

    fn count_queued(&self) {
        self.m
            .counters
            .replies_queued
            .store(self.control.len() as u64, Ordering::Relaxed);
    }

    /// Resets a connection: RST to the guest, the host stream closed.
    fn reset(&mut self, key: Key) {
        if self.remove(key).is_some() {
            self.queue(key.0, key.1, op::RST, 0);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(p) = self.pending.remove(&fd) {
                self.unwatch(fd);
                refuse(&p.stream, "timeout waiting for the CONNECT line");
            }
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Connecting { deadline } if deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get(&key) {
                refuse(
                    &c.stream,
                    &format!("timeout waiting for guest port {}", key.1),
                );
            }
            self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.reset(key);
        }
    }

    fn connection_event(&mut self, key: Key, set: EventSet) {
        if set.contains(EventSet::IN)
            || set.contains(EventSet::HANG_UP)
            || set.contains(EventSet::READ_HANG_UP)
        {
            self.readable.insert(key);
        }
        if set.contains(EventSet::OUT) {
            self.flush(key);
        }
        if set.contains(EventSet::ERROR) {
            self.reset(key);
        }
    }

    /// Writes pending guest data to the host, then sends credit or finishes as needed.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.flush_to_host().is_err() {
            self.reset(key);
            return;
        }
        if c.pending_to_host() == 0 && c.peer_done_sending {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.is_finished() {
            self.reset(key);
            return;
        }
        if c.needs_credit_update() {
            self.queue(key.0, key.1, op::CREDIT_UPDATE, 0);
        }
    }

    fn process_tx(&mut self, ctx: &mut LoopContext) {
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

    /// Connects to the host listener without blocking: one whose backlog is full (it does not
    /// accept) is tried again later, until `deadline`, and never holds up the device.
    fn try_host_connect(&mut self, key: Key, h: Header, deadline: Instant) {
        let path = forward_path(&self.m.uds_path, key.0);
        match connect_nonblocking(&path) {
            Err(e) if is_would_block(&e) && Instant::now() < deadline => {
                self.host_connects.insert(
                    key,
                    HostConnect {
                        request: h,
                        deadline,
                    },
                );
                self.next_connect_retry
                    .get_or_insert(Instant::now() + HOST_CONNECT_RETRY);
            }
            Ok(stream) => {
                let mut conn = Connection::new(stream, key.0, key.1, State::Established);
                conn.update_peer_credit(&h);
                self.insert(conn);
                self.m.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.queue(key.0, key.1, op::RESPONSE, 0);
            }
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
                self.queue(key.0, key.1, op::RST, 0);
            }
        }
    }

    /// Tries the connects that found a full backlog again, once per [`HOST_CONNECT_RETRY`].
    fn retry_host_connects(&mut self) {
        if self.host_connects.is_empty()
            || self.next_connect_retry.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.next_connect_retry = None;
        let waiting: Vec<(Key, HostConnect)> = self.host_connects.drain().collect();
        for (key, c) in waiting {
            self.try_host_connect(key, c.request, c.deadline);
        }
    }

    /// Drops every connection (their host streams are closed, which host processes see as
    /// EOF) and tells the guest with one TRANSPORT_RESET event per request, so that it drops
    /// its side too (virtio 1.2, 5.10.6.7).
    fn transport_reset(&mut self, ctx: &mut LoopContext, requests: u64) {
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

    /// Writes owed events into the buffers the guest posted on the event queue.
    fn deliver_events(&mut self, ctx: &mut LoopContext) {
        if ctx.is_broken(EVENT) {
            return;
        }
        let Some((mut queue, evt)) = self.m.event.take() else {
            return;
        };
        let mem = self.m.mem.clone();
        let mut used_any = false;
        let mut looked_again = false;
        while self.events_owed > 0 {
            let chain = match guest_queue::pop(&mut queue, &mem) {
                Ok(Some(chain)) => chain,
                // As in fill_rx: have the driver kick when it posts the next buffer.
                Ok(None) => match guest_queue::enable_notification(&mut queue, &mem) {
                    Ok(true) if !looked_again => {
                        looked_again = true;
                        continue;
                    }
                    Ok(_) => break,
                    Err(fault) => {
                        ctx.queue_fault(EVENT, fault);
                        break;
                    }
                },
                Err(fault @ QueueFault::HeadOutOfRange { .. }) => {
                    ctx.guest_fault(fault.kind(), &fault);
                    continue;
                }
                Err(fault) => {
                    ctx.queue_fault(EVENT, fault);
                    break;
                }
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
                guest_queue::add_used(&mut queue, &mem, head, if written { 4 } else { 0 })
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
        if used_any && guest_queue::needs_notification(&mut queue, &mem) {
            ctx.interrupt().trigger(EVENT);
        }
        self.m.event = Some((queue, evt));
    }

    /// Delivers control packets, then host data, into the guest's rx buffers.
    fn fill_rx(&mut self, ctx: &mut LoopContext) {
        if ctx.is_broken(RX) {
            return;
        }
        let Some((mut queue, evt)) = self.m.rx.take() else {
            return;
        };
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
            let chain = match guest_queue::pop(&mut queue, &mem) {
                Ok(Some(chain)) => chain,
                // Out of buffers. With EVENT_IDX the driver only kicks once it posts past
                // avail_event, which only enable_notification moves: without it a driver that
                // refills after the device ran dry (Linux's does) never says so and host data
                // waits for good. Look again if buffers came meanwhile (the budget bounds it).
                Ok(None) => match guest_queue::enable_notification(&mut queue, &mem) {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.rx_starved = true;
                        break;
                    }
                    Err(fault) => {
                        ctx.queue_fault(RX, fault);
                        self.rx_starved = true;
                        break;
                    }
                },
                Err(fault @ QueueFault::HeadOutOfRange { .. }) => {
                    ctx.guest_fault(fault.kind(), &fault);
                    continue;
                }
                Err(fault) => {
                    ctx.queue_fault(RX, fault);
                    self.rx_starved = true;
                    break;
                }
            };
            let head = chain.head_index();
            let (buffers, terminated) = packet::chain_buffers(chain);
            let Some(capacity) = packet::rx_capacity(&buffers).filter(|_| terminated) else {
                ctx.guest_fault(GuestFault::MalformedChain, &"vsock receive chain");
                self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                let _ = guest_queue::add_used(&mut queue, &mem, head, 0);
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
                        let _ = guest_queue::add_used(&mut queue, &mem, head, n);
                        self.m.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                        used_any = true;
                        if h.op == op::RW {
                            // Round robin: the connection may have more.
                            data_keys.push_back((h.src_port, h.dst_port));
                        }
                    }
                    Err(_) => {
                        self.m.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                        let _ = guest_queue::add_used(&mut queue, &mem, head, 0);
                        used_any = true;
                    }
                },
                None => queue.go_to_previous_position(),
            }
        }
        if used_any && guest_queue::needs_notification(&mut queue, &mem) {
            ctx.interrupt().trigger(RX);
        }
        self.m.rx = Some((queue, evt));
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

    fn update_interest(&mut self) {
        let wanted: Vec<(RawFd, EventSet)> = self
            .conns
            .values()
            .map(|c| {
                let mut set = EventSet::empty();
                if !self.rx_starved && c.wants_to_send() {
                    set |= EventSet::IN;
                }
                if c.pending_to_host() > 0 {
                    set |= EventSet::OUT;
                }
                (c.stream.as_raw_fd(), set)
            })
            .collect();
        for (fd, set) in wanted {
            if set.is_empty() {
                self.unwatch(fd);
            } else {
                self.watch(fd, set);
            }
        }
    }
}

/// The worker's state outside its loop, for the fuzz targets: they run its queue turns one by
/// one on rings they built.
#[cfg(feature = "fuzzing")]
pub struct FuzzWorker(Worker);

#[cfg(feature = "fuzzing")]
impl FuzzWorker {
    /// A worker for `m`, as [`Muxer::run`] starts it.
    pub fn new(m: Muxer) -> Self {
        Self(Worker::new(m))
    }

    /// A transmit turn: the guest's packets (up to the budget) handled.
    pub fn tx_turn(&mut self, ctx: &mut LoopContext) {
        self.0.process_tx(ctx);
    }

    /// A receive turn: replies and host data put in the guest's receive buffers.
    pub fn rx_turn(&mut self, ctx: &mut LoopContext) {
        self.0.fill_rx(ctx);
    }

    /// Owes the guest one transport-reset event and delivers what the event queue takes.
    pub fn event_turn(&mut self, ctx: &mut LoopContext) {
        self.0.transport_reset(ctx, 1);
    }

    /// Control replies waiting for receive buffers.
    pub fn queued_replies(&self) -> usize {
        self.0.control.len()
    }
}
