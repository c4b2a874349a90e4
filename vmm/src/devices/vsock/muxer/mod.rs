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

mod connections;
mod host;
mod rx;
mod tx;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::connection::{Connection, State};
use super::packet::Header;
use super::unix::PendingConnect;
use crate::devices::worker::{self, DeviceWorker, LoopContext};
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
