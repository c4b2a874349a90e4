//! The console's one thread, on the shared device loop: transmitq0 to the sink, sink input to
//! receiveq0, and for a socket sink the listener. Input is read only when the guest has
//! posted a buffer for it, so nothing is dropped and nothing spins while the guest is not
//! reading. A ring the guest breaks stops that queue (DEVICE_NEEDS_RESET), not the thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::sink::{InputRead, Sink};
use crate::devices::worker::{
    self, bump, guest_queue, vring, Chain, DeviceWorker, GuestFault, InterruptCount, LoopContext,
    Served, BUDGET,
};
use crate::memory::GuestMemoryMmap;

/// Longest output chain accepted.
pub const MAX_OUTPUT_CHAIN: usize = 64 * 1024;
/// Most input bytes put in one receive buffer.
pub const MAX_INPUT_CHUNK: usize = 4096;

/// Counters of one queue.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Chains completed.
    pub chains: AtomicU64,
    /// Bytes moved (output written to the sink, input given to the guest).
    pub bytes: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Malformed chains (returned unused).
    pub errors: AtomicU64,
    /// Output bytes lost (sink `none`, write errors, socket backlog overflow).
    pub dropped: AtomicU64,
}

impl InterruptCount for QueueCounters {
    fn interrupts(&self) -> &AtomicU64 {
        &self.interrupts
    }
}

/// A queue as the worker serves it.
pub type Vring = vring::Vring<QueueCounters>;

/// Walks a chain: the (address, length) of each descriptor, all in direction `writable` and
/// inside guest memory, at most `max` bytes. None: malformed.
fn buffers(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    writable: bool,
    max: usize,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = true;
    for desc in chain {
        last_has_next = desc.has_next();
        let len = desc.len() as usize;
        total += len;
        if desc.is_write_only() != writable || total > max || !mem.check_range(desc.addr(), len) {
            return None;
        }
        if len > 0 {
            out.push((desc.addr(), len));
        }
    }
    (!last_has_next).then_some(out)
}

const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_INPUT: u64 = 3;
const TOKEN_LISTENER: u64 = 4;

/// The console thread's state.
pub struct ConsoleWorker {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// receiveq0.
    pub rx: Vring,
    /// transmitq0.
    pub tx: Vring,
    /// The host side.
    pub sink: Sink,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    rx_blocked: bool,
    input_watch: Option<(RawFd, u32, u64)>,
    /// Output left after a budgeted turn.
    tx_more: bool,
}

impl ConsoleWorker {
    /// A worker; nothing runs until [`ConsoleWorker::run`] (or the `process_*` calls).
    pub fn new(
        mem: GuestMemoryMmap,
        rx: Vring,
        tx: Vring,
        sink: Sink,
        connections: Arc<AtomicU64>,
    ) -> Self {
        Self {
            mem,
            rx,
            tx,
            sink,
            connections,
            rx_blocked: false,
            input_watch: None,
            tx_more: false,
        }
    }

    /// Runs on the device loop until `stop` is written; gives the sink back.
    pub fn run(mut self, mut ctx: LoopContext, stop: EventFd) -> Sink {
        if let Err(e) = worker::run(&mut self, &mut ctx, &stop) {
            tracing::error!("console: {e}");
        }
        self.sink
    }

    fn accept(&mut self) {
        let n = self.sink.accept();
        if n > 0 {
            bump(&self.connections, n);
            self.sink.flush();
        }
    }

    /// Polls the input for reading only while the guest has somewhere to put it, and a socket
    /// client for writing only while output waits for it.
    fn update_input_watch(&mut self, ctx: &LoopContext) {
        let fd = self.sink.input_fd();
        let mut want = EventSet::empty();
        if fd.is_some() && !self.rx_blocked {
            want |= EventSet::IN;
        }
        if self.sink.wants_write() {
            want |= EventSet::OUT;
        }
        let desired = fd
            .filter(|_| !want.is_empty())
            .map(|fd| (fd, want.bits(), self.sink.generation));
        if desired == self.input_watch {
            return;
        }
        if let Some((old, _, _)) = self.input_watch.take() {
            // The descriptor may be closed already (a client that went away): then it left the
            // epoll set by itself.
            ctx.unwatch(old);
        }
        if let Some((fd, bits, _)) = desired {
            let set = EventSet::from_bits_truncate(bits);
            match ctx.watch(fd, TOKEN_INPUT, set) {
                Ok(()) => self.input_watch = desired,
                Err(e) => {
                    // Not pollable (a regular file, /dev/null as stdin): no input from it.
                    tracing::debug!("console input cannot be polled: {e}");
                    if self.sink.client.is_none() {
                        self.sink.input = None;
                        self.sink.generation += 1;
                    }
                }
            }
        }
    }

    /// Writes available output chains (up to a budget) to the sink.
    pub fn process_tx(&mut self, ctx: &mut LoopContext) {
        self.tx_more = false;
        if ctx.is_broken(self.tx.index) {
            return;
        }
        let mut data = Vec::new();
        let (mem, sink, counters) = (&self.mem, &mut self.sink, &self.tx.counters);
        let (done, result) =
            guest_queue::drain(&mut self.tx.queue, mem, ctx.faults(), BUDGET, |chain| {
                bump(&counters.chains, 1);
                let Some(bufs) = buffers(mem, chain, false, MAX_OUTPUT_CHAIN) else {
                    bump(&counters.errors, 1);
                    ctx.guest_fault(GuestFault::MalformedChain, &"console output chain");
                    return Served::Used(0);
                };
                data.clear();
                let mut ok = true;
                for (addr, len) in bufs {
                    let at = data.len();
                    data.resize(at + len, 0);
                    ok &= mem.read_slice(&mut data[at..], addr).is_ok();
                }
                if ok {
                    let lost = sink.write(&data);
                    bump(&counters.bytes, data.len() as u64 - lost);
                    bump(&counters.dropped, lost);
                } else {
                    bump(&counters.errors, 1);
                }
                Served::Used(0)
            });
        bump(&self.tx.counters.errors, done.skipped);
        self.tx_more = done.more;
        if let Err(fault) = result {
            ctx.queue_fault(self.tx.index, fault);
        }
        if done.used {
            self.tx.signal(&self.mem, ctx.interrupt());
        }
    }

    /// Gives available input to the guest, one receive buffer per read.
    pub fn process_rx(&mut self, ctx: &mut LoopContext) {
        if ctx.is_broken(self.rx.index) {
            return;
        }
        let mut used = false;
        let mut buf = [0u8; MAX_INPUT_CHUNK];
        for _ in 0..BUDGET {
            if self.sink.input_fd().is_none() {
                break;
            }
            let chain = match guest_queue::pop(&mut self.rx.queue, &self.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    // Wait for the guest to post a buffer (with a doorbell), unless it just did.
                    match guest_queue::enable_notification(&mut self.rx.queue, &self.mem) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(fault) => ctx.queue_fault(self.rx.index, fault),
                    }
                    self.rx_blocked = true;
                    break;
                }
                Err(fault @ guest_queue::QueueFault::HeadOutOfRange { .. }) => {
                    bump(&self.rx.counters.errors, 1);
                    ctx.guest_fault(fault.kind(), &fault);
                    continue;
                }
                Err(fault) => {
                    ctx.queue_fault(self.rx.index, fault);
                    break;
                }
            };
            let head = chain.head_index();
            let Some(bufs) = buffers(&self.mem, chain, true, usize::MAX) else {
                bump(&self.rx.counters.errors, 1);
                ctx.guest_fault(GuestFault::MalformedChain, &"console input chain");
                used |= self.finish_rx(ctx, head, 0);
                continue;
            };
            let cap = bufs.iter().map(|b| b.1).sum::<usize>().min(MAX_INPUT_CHUNK);
            let n = match self.sink.read(&mut buf[..cap]) {
                InputRead::Data(n) => n,
                InputRead::Empty | InputRead::Closed => {
                    // Nothing to read (or the input went away): the buffer stays the guest's.
                    self.rx.queue.go_to_previous_position();
                    break;
                }
            };
            let mut off = 0;
            for (addr, len) in bufs {
                if off == n {
                    break;
                }
                let take = len.min(n - off);
                if self.mem.write_slice(&buf[off..off + take], addr).is_err() {
                    bump(&self.rx.counters.errors, 1);
                }
                off += take;
            }
            bump(&self.rx.counters.bytes, n as u64);
            // At most MAX_INPUT_CHUNK bytes.
            used |= self.finish_rx(ctx, head, u32::try_from(n).unwrap_or(u32::MAX));
        }
        if used {
            self.rx.signal(&self.mem, ctx.interrupt());
        }
    }

    /// Returns a receive chain; false when the ring could not take it (the queue is broken).
    fn finish_rx(&mut self, ctx: &mut LoopContext, head: u16, len: u32) -> bool {
        bump(&self.rx.counters.chains, 1);
        match guest_queue::add_used(&mut self.rx.queue, &self.mem, head, len) {
            Ok(()) => true,
            Err(fault) => {
                ctx.queue_fault(self.rx.index, fault);
                false
            }
        }
    }

    /// Whether input waits for guest buffers (for tests).
    #[cfg(test)]
    pub(crate) fn rx_blocked(&self) -> bool {
        self.rx_blocked
    }
}

impl DeviceWorker for ConsoleWorker {
    fn start(&mut self, ctx: &mut LoopContext) {
        let mut fds = vec![
            (self.rx.notifier.as_raw_fd(), TOKEN_RX),
            (self.tx.notifier.as_raw_fd(), TOKEN_TX),
        ];
        if let Some(l) = &self.sink.listener {
            fds.push((l.as_raw_fd(), TOKEN_LISTENER));
        }
        for (fd, token) in fds {
            if let Err(e) = ctx.watch(fd, token, EventSet::IN) {
                tracing::error!("console: epoll_ctl: {e}");
            }
        }
        self.accept();
        self.process_tx(ctx);
        self.process_rx(ctx);
        self.update_input_watch(ctx);
    }

    fn event(&mut self, ctx: &mut LoopContext, token: u64, events: EventSet) {
        match token {
            TOKEN_RX => {
                let _ = self.rx.notifier.read();
                self.rx_blocked = false;
                self.process_rx(ctx);
            }
            TOKEN_TX => {
                let _ = self.tx.notifier.read();
                self.process_tx(ctx);
            }
            TOKEN_LISTENER => {
                self.accept();
                self.process_rx(ctx);
            }
            _ => {
                if events.contains(EventSet::OUT) {
                    self.sink.flush();
                }
                if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    self.process_rx(ctx);
                }
            }
        }
    }

    fn turn_done(&mut self, ctx: &mut LoopContext) {
        if self.tx_more {
            self.process_tx(ctx);
        }
        self.update_input_watch(ctx);
    }

    fn has_more(&self) -> bool {
        self.tx_more
    }
}
