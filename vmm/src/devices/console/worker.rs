//! The console's one thread: transmitq0 to the sink, sink input to receiveq0, and for a
//! socket sink the listener. Input is read only when the guest has posted a buffer for it, so
//! nothing is dropped and nothing spins while the guest is not reading.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::sink::{InputRead, Sink};
use crate::interrupts::Interrupt;
use crate::memory::GuestMemoryMmap;

/// Longest output chain accepted.
pub const MAX_OUTPUT_CHAIN: usize = 64 * 1024;
/// Most input bytes put in one receive buffer.
pub const MAX_INPUT_CHUNK: usize = 4096;
const BUDGET: usize = 256;

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

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A queue as the worker serves it.
pub struct Vring {
    /// Index on the device.
    pub index: u16,
    /// The virtqueue.
    pub queue: Queue,
    /// Doorbell.
    pub notifier: EventFd,
    /// Counters.
    pub counters: Arc<QueueCounters>,
}

impl Vring {
    fn finish(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        bump(&self.counters.chains, 1);
        if let Err(e) = self.queue.add_used(mem, head, len) {
            tracing::debug!(queue = self.index, "add_used: {e}");
        }
    }

    fn signal(&mut self, mem: &GuestMemoryMmap, interrupt: &dyn Interrupt) {
        if self.queue.needs_notification(mem).unwrap_or(true) {
            bump(&self.counters.interrupts, 1);
            interrupt.trigger(self.index);
        }
    }
}

/// Walks a chain: the (address, length) of each descriptor, all in direction `writable` and
/// inside guest memory, at most `max` bytes. None: malformed.
fn buffers(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
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

const TOKEN_KILL: u64 = 0;
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
    /// Stop request.
    pub kill: EventFd,
    /// Interrupt.
    pub interrupt: Arc<dyn Interrupt>,
    /// The host side.
    pub sink: Sink,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    rx_blocked: bool,
    input_watch: Option<(RawFd, u32, u64)>,
}

impl ConsoleWorker {
    /// A worker; nothing runs until [`ConsoleWorker::run`] (or the `process_*` calls).
    pub fn new(
        mem: GuestMemoryMmap,
        rx: Vring,
        tx: Vring,
        kill: EventFd,
        interrupt: Arc<dyn Interrupt>,
        sink: Sink,
        connections: Arc<AtomicU64>,
    ) -> Self {
        Self {
            mem,
            rx,
            tx,
            kill,
            interrupt,
            sink,
            connections,
            rx_blocked: false,
            input_watch: None,
        }
    }

    /// Runs until `kill` is written; gives the sink back.
    pub fn run(mut self) -> Sink {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("console: epoll: {e}");
                return self.sink;
            }
        };
        let mut fds = vec![
            (self.kill.as_raw_fd(), TOKEN_KILL),
            (self.rx.notifier.as_raw_fd(), TOKEN_RX),
            (self.tx.notifier.as_raw_fd(), TOKEN_TX),
        ];
        if let Some(l) = &self.sink.listener {
            fds.push((l.as_raw_fd(), TOKEN_LISTENER));
        }
        for (fd, token) in fds {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                tracing::error!("console: epoll_ctl: {e}");
                return self.sink;
            }
        }
        self.accept();
        self.process_tx();
        self.process_rx();
        self.update_input_watch(&epoll);
        let mut events = [EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("console: epoll_wait: {e}");
                    return self.sink;
                }
            };
            let (mut tx, mut rx) = (false, false);
            for event in &events[..n] {
                match event.data() {
                    TOKEN_KILL => return self.sink,
                    TOKEN_RX => {
                        let _ = self.rx.notifier.read();
                        self.rx_blocked = false;
                        rx = true;
                    }
                    TOKEN_TX => {
                        let _ = self.tx.notifier.read();
                        tx = true;
                    }
                    TOKEN_LISTENER => {
                        self.accept();
                        rx = true;
                    }
                    _ => {
                        let set = EventSet::from_bits_truncate(event.events);
                        if set.contains(EventSet::OUT) {
                            self.sink.flush();
                        }
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                            rx = true;
                        }
                    }
                }
            }
            if tx {
                self.process_tx();
            }
            if rx {
                self.process_rx();
            }
            self.update_input_watch(&epoll);
        }
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
    fn update_input_watch(&mut self, epoll: &Epoll) {
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
            let _ = epoll.ctl(ControlOperation::Delete, old, EpollEvent::default());
        }
        if let Some((fd, bits, _)) = desired {
            let set = EventSet::from_bits_truncate(bits);
            match epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, TOKEN_INPUT)) {
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

    /// Writes every available output chain to the sink.
    pub fn process_tx(&mut self) {
        let mut used = false;
        let mut served = 0;
        let mut data = Vec::new();
        'drain: loop {
            if self.tx.queue.disable_notification(&self.mem).is_err() {
                break;
            }
            while let Some(chain) = self.tx.queue.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let counters = self.tx.counters.clone();
                match buffers(&self.mem, chain, false, MAX_OUTPUT_CHAIN) {
                    Some(bufs) => {
                        data.clear();
                        let mut ok = true;
                        for (addr, len) in bufs {
                            let at = data.len();
                            data.resize(at + len, 0);
                            ok &= self.mem.read_slice(&mut data[at..], addr).is_ok();
                        }
                        if ok {
                            let lost = self.sink.write(&data);
                            bump(&counters.bytes, data.len() as u64 - lost);
                            bump(&counters.dropped, lost);
                        } else {
                            bump(&counters.errors, 1);
                        }
                    }
                    None => bump(&counters.errors, 1),
                }
                self.tx.finish(&self.mem, head, 0);
                used = true;
                served += 1;
                if served == BUDGET {
                    // Let input and the other queue have a turn; the doorbell brings us back.
                    break 'drain;
                }
            }
            match self.tx.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            self.tx.signal(&self.mem, self.interrupt.as_ref());
        }
        if served == BUDGET {
            let _ = self.tx.notifier.write(1);
        }
    }

    /// Gives available input to the guest, one receive buffer per read.
    pub fn process_rx(&mut self) {
        let mut used = false;
        let mut buf = [0u8; MAX_INPUT_CHUNK];
        for _ in 0..BUDGET {
            if self.sink.input_fd().is_none() {
                break;
            }
            let Some(chain) = self.rx.queue.pop_descriptor_chain(&self.mem) else {
                // Wait for the guest to post a buffer (with a doorbell), unless it just did.
                if let Ok(true) = self.rx.queue.enable_notification(&self.mem) {
                    continue;
                }
                self.rx_blocked = true;
                break;
            };
            let head = chain.head_index();
            let Some(bufs) = buffers(&self.mem, chain, true, usize::MAX) else {
                bump(&self.rx.counters.errors, 1);
                self.rx.finish(&self.mem, head, 0);
                used = true;
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
            self.rx.finish(&self.mem, head, n as u32);
            used = true;
        }
        if used {
            self.rx.signal(&self.mem, self.interrupt.as_ref());
        }
    }

    /// Whether input waits for guest buffers (for tests).
    #[cfg(test)]
    pub(crate) fn rx_blocked(&self) -> bool {
        self.rx_blocked
    }
}
