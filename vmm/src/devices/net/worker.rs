//! One thread per queue pair. It waits (epoll) on the rx and tx doorbells, its tap queue, a
//! wake-up from the control queue and a kill eventfd, and moves frames:
//!
//! - transmit: each chain (virtio-net header + frame) is handed to the tap with one `writev`
//!   straight from guest memory; the kernel reads the header and does the checksum and
//!   segmentation work the guest left to it.
//! - receive: guest buffers are taken from the ring into a reserve, and each frame is read
//!   from the tap with one `readv` straight into them (with MRG_RXBUF, across as many buffers
//!   as it needs, `num_buffers` set in the header). When the guest has posted no buffer, the
//!   worker stops polling the tap, asks for a doorbell, and sleeps: frames wait in the kernel's
//!   queue instead of being dropped or spun on.
//!
//! One interrupt per batch and queue, suppressed with EVENT_IDX when the driver asks. A chain
//! that is malformed (loop, bad index, out-of-range address, wrong direction, too long) is
//! returned to the guest unused and counted; a ring the guest breaks stops that queue
//! (DEVICE_NEEDS_RESET). The thread runs the shared device loop, so it always stops.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, as_iovecs, ChainError, Seg, MAX_SEGMENTS};
use super::ctrl::{Ctrl, Shared};
use super::tap::{TapQueue, VNET_HDR_LEN};
pub(crate) use crate::devices::worker::bump;
use crate::devices::worker::{
    self, guest_queue, vring, DeviceWorker, GuestFault, InterruptCount, LoopContext, QueueFault,
    Served,
};
use crate::interrupts::Interrupt;
use crate::memory::GuestMemoryMmap;

/// Largest frame (without the virtio-net header): 64 KiB of payload plus Ethernet and VLAN
/// headers, the most a GSO frame can be.
pub const MAX_FRAME_LEN: usize = 65536 + 14 + 4;
/// Largest chain accepted on transmit, and the receive space a frame may need.
pub const MAX_CHAIN_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Shortest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
use crate::devices::worker::BUDGET;

/// Offset of `num_buffers` in the header.
const HDR_NUM_BUFFERS: usize = 10;

/// Counters of one queue.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames moved (rx: delivered to the guest, tx: written to the tap), or control commands
    /// acknowledged with OK.
    pub frames: AtomicU64,
    /// Frame bytes moved, without virtio-net headers.
    pub bytes: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Malformed chains returned unused, and control commands refused.
    pub errors: AtomicU64,
    /// Well-formed frames lost: refused by the tap, or larger than the guest's buffers.
    pub dropped: AtomicU64,
    /// Times the receive side ran out of guest buffers and paused reading the tap.
    pub no_buffers: AtomicU64,
}

impl InterruptCount for QueueCounters {
    fn interrupts(&self) -> &AtomicU64 {
        &self.interrupts
    }
}

/// A queue as a worker serves it.
pub type Vring = vring::Vring<QueueCounters>;

/// How received frames are laid out in guest buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct RxMode {
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several buffers.
    pub mergeable: bool,
    /// VIRTIO_NET_F_GUEST_CSUM: header flags are passed on as the kernel set them.
    pub guest_csum: bool,
}

struct RxChain {
    head: u16,
    nsegs: usize,
    cap: usize,
}

/// Guest receive buffers taken from the ring and not used yet, and a frame that did not fit.
#[derive(Default)]
struct RxState {
    chains: VecDeque<RxChain>,
    segs: Vec<Seg>,
    addrs: Vec<GuestAddress>,
    cap: usize,
    /// Length of a frame waiting in `bounce` for more guest buffers.
    pending: Option<usize>,
    bounce: Vec<u8>,
    /// Catches the byte past the guest's buffers: a frame that reaches it was truncated.
    overflow: [u8; 1],
    /// Waiting for the guest to post buffers (the tap is not polled meanwhile).
    blocked: bool,
    /// The ring broke while taking buffers.
    fault: Option<QueueFault>,
    /// An available entry was skipped (a head beyond the table).
    skipped: Option<QueueFault>,
    notify_enabled: bool,
    more: bool,
}

enum RxStep {
    /// A frame went to the guest, or was dropped, or a frame now waits for buffers.
    Progress,
    /// Nothing more to read from the tap.
    TapEmpty,
    /// No guest buffer (or not enough for the waiting frame).
    NoBuffers,
}

const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_TAP: u64 = 3;
const TOKEN_CTRL: u64 = 4;
const TOKEN_WAKE: u64 = 5;

/// The state one queue-pair thread owns.
pub struct PairWorker {
    pair: u16,
    mem: GuestMemoryMmap,
    rx: Vring,
    tx: Vring,
    ctrl: Option<Ctrl>,
    ctrl_more: bool,
    tap: Arc<TapQueue>,
    stop: Option<EventFd>,
    wake: EventFd,
    /// Out only while [`PairWorker::run`] has it.
    ctx: Option<LoopContext>,
    shared: Arc<Shared>,
    mode: RxMode,
    rxs: RxState,
    tx_segs: Vec<Seg>,
    tx_blocked: bool,
    tx_more: bool,
    tap_events: Option<u32>,
    tap_failed: bool,
}

/// What a worker is built from.
pub struct PairParts {
    /// Queue pair number.
    pub pair: u16,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Receive queue.
    pub rx: Vring,
    /// Transmit queue.
    pub tx: Vring,
    /// The control queue, served by pair 0.
    pub ctrl: Option<Ctrl>,
    /// The pair's tap queue.
    pub tap: Arc<TapQueue>,
    /// Stop request.
    pub kill: EventFd,
    /// Written by the control queue when the active pairs change.
    pub wake: EventFd,
    /// Interrupt.
    pub interrupt: Arc<dyn Interrupt>,
    /// State the control queue changes.
    pub shared: Arc<Shared>,
    /// Receive layout.
    pub mode: RxMode,
}

impl PairWorker {
    /// A worker for one pair; nothing runs until [`PairWorker::run`] (or the `process_*`
    /// calls in tests).
    pub fn new(parts: PairParts) -> io::Result<Self> {
        let ctx = LoopContext::new(parts.interrupt, parts.shared.faults.clone())?;
        Ok(Self {
            pair: parts.pair,
            mem: parts.mem,
            rx: parts.rx,
            tx: parts.tx,
            ctrl: parts.ctrl,
            ctrl_more: false,
            tap: parts.tap,
            stop: Some(parts.kill),
            wake: parts.wake,
            ctx: Some(ctx),
            shared: parts.shared,
            mode: parts.mode,
            rxs: RxState::default(),
            tx_segs: Vec::new(),
            tx_blocked: false,
            tx_more: false,
            tap_events: None,
            tap_failed: false,
        })
    }

    /// Runs on the device loop until `kill` is written.
    pub fn run(mut self) {
        let (Some(mut ctx), Some(stop)) = (self.ctx.take(), self.stop.take()) else {
            return;
        };
        if let Err(e) = worker::run(&mut self, &mut ctx, &stop) {
            tracing::error!("net pair {}: {e}", self.pair);
        }
    }

    /// Runs `f` with the worker's context (outside [`PairWorker::run`]: tests).
    #[cfg(any(test, feature = "fuzzing"))]
    fn with_ctx(&mut self, f: impl FnOnce(&mut Self, &mut LoopContext)) {
        if let Some(mut ctx) = self.ctx.take() {
            f(self, &mut ctx);
            self.ctx = Some(ctx);
        }
    }

    /// Serves the control queue, if this worker has it.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn process_ctrl(&mut self) {
        self.with_ctx(|w, ctx| w.ctrl_turn(ctx));
    }

    /// Sends every available transmit chain (up to a budget) to the tap.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn process_tx(&mut self) {
        self.with_ctx(|w, ctx| w.tx_turn(ctx));
    }

    /// Moves frames from the tap into guest buffers until the tap is empty, the guest has no
    /// buffer left, or the budget is spent.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn process_rx(&mut self) {
        self.with_ctx(|w, ctx| w.rx_turn(ctx));
    }

    fn active(&self) -> bool {
        self.pair < self.shared.active_pairs()
    }

    /// Polls the tap for frames only while there is somewhere to put them (and only while the
    /// pair is in use), and for write space only while a write was refused.
    fn update_tap_interest(&mut self, ctx: &LoopContext) {
        let mut want = EventSet::empty();
        if !self.tap_failed {
            if self.active() && !self.rxs.blocked {
                want |= EventSet::IN;
            }
            if self.tx_blocked {
                want |= EventSet::OUT;
            }
        }
        let fd = self.tap.as_raw_fd();
        let result = match (self.tap_events, want.is_empty()) {
            (None, true) => return,
            (Some(cur), false) if cur == want.bits() => return,
            (None, false) => ctx.watch(fd, TOKEN_TAP, want),
            (Some(_), false) => ctx.rewatch(fd, TOKEN_TAP, want),
            (Some(_), true) => {
                ctx.unwatch(fd);
                Ok(())
            }
        };
        match result {
            Ok(()) => self.tap_events = (!want.is_empty()).then_some(want.bits()),
            Err(e) => tracing::error!("net pair {}: epoll_ctl on the tap: {e}", self.pair),
        }
    }

    fn ctrl_turn(&mut self, ctx: &mut LoopContext) {
        if let Some(ctrl) = &mut self.ctrl {
            self.ctrl_more = ctrl.process(&self.mem, ctx);
        }
    }

    fn tx_turn(&mut self, ctx: &mut LoopContext) {
        self.tx_more = false;
        if self.tx_blocked || ctx.is_broken(self.tx.index) {
            return;
        }
        let (mem, tap, segs, pair) = (&self.mem, &self.tap, &mut self.tx_segs, self.pair);
        let counters = &self.tx.counters;
        let (done, result) =
            guest_queue::drain(&mut self.tx.queue, mem, ctx.faults(), BUDGET, |chain| {
                segs.clear();
                match chain::collect(chain, false, MAX_CHAIN_LEN, segs, None) {
                    Ok(len) if len >= VNET_HDR_LEN + MIN_FRAME_LEN => {
                        // SAFETY: every segment was produced by `chain::collect` from a
                        // bounds-checked slice of guest memory, which `mem` keeps mapped.
                        match unsafe { tap.writev(as_iovecs(segs)) } {
                            Ok(_) => {
                                bump(&counters.frames, 1);
                                bump(&counters.bytes, (len - VNET_HDR_LEN) as u64);
                            }
                            // The tap is full: retry this chain when it can take it.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Served::Retry
                            }
                            Err(e) => {
                                // The kernel refused the frame (bad GSO header, link down).
                                tracing::trace!(pair, "tap write: {e}");
                                bump(&counters.dropped, 1);
                            }
                        }
                    }
                    Ok(_) => {
                        bump(&counters.errors, 1);
                        ctx.guest_fault(GuestFault::MalformedChain, &"frame shorter than a header");
                    }
                    Err(e) => {
                        bump(&counters.errors, 1);
                        ctx.guest_fault(GuestFault::MalformedChain, &e);
                    }
                }
                Served::Used(0)
            });
        bump(&self.tx.counters.errors, done.skipped);
        self.tx_blocked = done.retry;
        self.tx_more = done.more;
        if let Err(fault) = result {
            ctx.queue_fault(self.tx.index, fault);
        }
        if done.used {
            self.tx.signal(&self.mem, ctx.interrupt());
        }
    }

    fn rx_turn(&mut self, ctx: &mut LoopContext) {
        self.rxs.more = false;
        if ctx.is_broken(self.rx.index) {
            return;
        }
        if self.rxs.notify_enabled && !self.rxs.blocked {
            let _ = self.rx.queue.disable_notification(&self.mem);
            self.rxs.notify_enabled = false;
        }
        let mut used = false;
        let mut steps = 0;
        loop {
            if steps == BUDGET {
                self.rxs.more = true;
                break;
            }
            steps += 1;
            let step = self.rx_one(&mut used);
            if let Some(skipped) = self.rxs.skipped.take() {
                ctx.guest_fault(skipped.kind(), &skipped);
            }
            if let Some(fault) = self.rxs.fault.take() {
                // The guest broke the ring: stop serving it, and stop polling the tap for it.
                ctx.queue_fault(self.rx.index, fault);
                self.rxs.blocked = true;
                break;
            }
            match step {
                RxStep::Progress => {}
                RxStep::TapEmpty => {
                    self.rxs.blocked = false;
                    break;
                }
                RxStep::NoBuffers => {
                    // Ask for a doorbell, then look once more: the guest may have posted
                    // buffers in between.
                    self.rxs.notify_enabled = true;
                    match guest_queue::enable_notification(&mut self.rx.queue, &self.mem) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.rxs.blocked = true;
                            bump(&self.rx.counters.no_buffers, 1);
                            break;
                        }
                        Err(fault) => {
                            ctx.queue_fault(self.rx.index, fault);
                            self.rxs.blocked = true;
                            break;
                        }
                    }
                }
            }
        }
        if used {
            self.rx.signal(&self.mem, ctx.interrupt());
        }
    }

    fn rx_one(&mut self, used: &mut bool) -> RxStep {
        if let Some(len) = self.rxs.pending {
            self.fill_reserve(len, used);
            if !self.fits(len) {
                if self.rxs.segs.len() >= usize::from(self.rx.queue.size()) {
                    // The guest's whole ring is here and the frame still does not fit: it
                    // never will.
                    bump(&self.rx.counters.dropped, 1);
                    self.rxs.pending = None;
                    return RxStep::Progress;
                }
                return RxStep::NoBuffers;
            }
            self.rxs.pending = None;
            self.finish_frame(len, true, used);
            return RxStep::Progress;
        }
        self.fill_reserve(MAX_CHAIN_LEN, used);
        if self.rxs.chains.is_empty() {
            return RxStep::NoBuffers;
        }
        if self.mode.mergeable && self.rxs.cap < MAX_CHAIN_LEN {
            // Fewer buffers than the largest frame needs: read the frame aside, and place it
            // now if it fits or once the guest has posted enough.
            return match self.read_bounce() {
                Ok(Some(n)) if self.fits(n) => {
                    self.finish_frame(n, true, used);
                    RxStep::Progress
                }
                Ok(Some(n)) => {
                    self.rxs.pending = Some(n);
                    RxStep::Progress
                }
                Ok(None) => RxStep::Progress,
                Err(()) => RxStep::TapEmpty,
            };
        }
        // Straight into the guest's buffers: the first chain, or (mergeable) as many chains as
        // the largest frame needs.
        let mut nsegs = 0;
        let mut cap = 0;
        for c in &self.rxs.chains {
            if nsegs + c.nsegs > MAX_SEGMENTS || (nsegs > 0 && !self.mode.mergeable) {
                break;
            }
            nsegs += c.nsegs;
            cap += c.cap;
            if cap >= MAX_CHAIN_LEN {
                break;
            }
        }
        let overflow = Seg {
            base: self.rxs.overflow.as_mut_ptr() as usize,
            len: 1,
        };
        let saved = if nsegs < self.rxs.segs.len() {
            Some(std::mem::replace(&mut self.rxs.segs[nsegs], overflow))
        } else {
            self.rxs.segs.push(overflow);
            None
        };
        // SAFETY: the first `nsegs` segments come from `chain::collect` over bounds-checked
        // guest memory that `self.mem` keeps mapped; the last one is `self.rxs.overflow`,
        // which lives through the call.
        let result = unsafe { self.tap.readv(as_iovecs(&self.rxs.segs[..=nsegs])) };
        match saved {
            Some(seg) => self.rxs.segs[nsegs] = seg,
            None => {
                self.rxs.segs.pop();
            }
        }
        let counters = &self.rx.counters;
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => RxStep::TapEmpty,
            Err(e) => {
                tracing::debug!(pair = self.pair, "tap read: {e}");
                bump(&counters.errors, 1);
                RxStep::TapEmpty
            }
            Ok(n) if n > cap || n < VNET_HDR_LEN => {
                // Larger than the guest's buffers (or not even a header): lost. Without
                // MRG_RXBUF the buffer goes back empty, so that a guest whose buffers are too
                // small for what arrives is not left with its whole ring held here.
                bump(&counters.dropped, 1);
                if !self.mode.mergeable {
                    self.finish_frame(0, false, used);
                }
                RxStep::Progress
            }
            Ok(n) => {
                self.finish_frame(n, false, used);
                RxStep::Progress
            }
        }
    }

    /// Whether the reserve can take a frame of `len` bytes now.
    fn fits(&self, len: usize) -> bool {
        match self.rxs.chains.front() {
            None => false,
            Some(first) if !self.mode.mergeable => first.cap >= len,
            Some(_) => self.rxs.cap >= len,
        }
    }

    /// Reads a frame into the bounce buffer. `Ok(None)`: it was dropped (too large).
    fn read_bounce(&mut self) -> Result<Option<usize>, ()> {
        if self.rxs.bounce.len() < MAX_CHAIN_LEN + 1 {
            self.rxs.bounce.resize(MAX_CHAIN_LEN + 1, 0);
        }
        let seg = [Seg {
            base: self.rxs.bounce.as_mut_ptr() as usize,
            len: self.rxs.bounce.len(),
        }];
        // SAFETY: the segment is `self.rxs.bounce`, owned here and alive through the call.
        let result = unsafe { self.tap.readv(as_iovecs(&seg)) };
        let counters = &self.rx.counters;
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(()),
            Err(e) => {
                tracing::debug!(pair = self.pair, "tap read: {e}");
                bump(&counters.errors, 1);
                Err(())
            }
            Ok(n) if !(VNET_HDR_LEN..=MAX_CHAIN_LEN).contains(&n) => {
                bump(&counters.dropped, 1);
                Ok(None)
            }
            Ok(n) => Ok(Some(n)),
        }
    }

    /// Takes chains from the ring into the reserve until it holds `want` bytes (mergeable) or
    /// one chain; malformed chains go back to the guest at once.
    fn fill_reserve(&mut self, want: usize, used: &mut bool) {
        loop {
            let enough = if self.mode.mergeable {
                self.rxs.cap >= want
            } else {
                !self.rxs.chains.is_empty()
            };
            if enough {
                return;
            }
            let chain = match guest_queue::pop(&mut self.rx.queue, &self.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => return,
                Err(fault @ QueueFault::HeadOutOfRange { .. }) => {
                    bump(&self.rx.counters.errors, 1);
                    self.rxs.skipped = Some(fault);
                    continue;
                }
                Err(fault) => {
                    self.rxs.fault = Some(fault);
                    return;
                }
            };
            let head = chain.head_index();
            let before = self.rxs.segs.len();
            let result = chain::collect(
                chain,
                true,
                u32::MAX as usize,
                &mut self.rxs.segs,
                Some(&mut self.rxs.addrs),
            );
            let error = match result {
                Ok(cap) if cap >= VNET_HDR_LEN => {
                    self.rxs.chains.push_back(RxChain {
                        head,
                        nsegs: self.rxs.segs.len() - before,
                        cap,
                    });
                    self.rxs.cap += cap;
                    continue;
                }
                Ok(_) => {
                    // No room even for the header.
                    self.rxs.segs.truncate(before);
                    self.rxs.addrs.truncate(before);
                    ChainError::TooLong
                }
                Err(e) => e,
            };
            tracing::trace!(pair = self.pair, "rx chain refused: {error}");
            bump(&self.rx.counters.errors, 1);
            self.rx.add_used(&self.mem, head, 0);
            *used = true;
        }
    }

    /// Completes a frame of `len` bytes (header included) that is in the reserve's first
    /// chains (or, `from_bounce`, in the bounce buffer: it is copied there first); `len` 0
    /// returns the first chain empty.
    fn finish_frame(&mut self, len: usize, from_bounce: bool, used: &mut bool) {
        // How many chains the frame takes.
        let mut left = len;
        let mut count = 0;
        for c in &self.rxs.chains {
            count += 1;
            left = left.saturating_sub(c.cap);
            if left == 0 || !self.mode.mergeable {
                break;
            }
        }
        if from_bounce {
            let mut offset = 0;
            let mut seg_at = 0;
            for c in self.rxs.chains.iter().take(count) {
                let take = (len - offset).min(c.cap);
                let segs = &self.rxs.segs[seg_at..seg_at + c.nsegs];
                let addrs = &self.rxs.addrs[seg_at..seg_at + c.nsegs];
                if !chain::write_at(
                    &self.mem,
                    segs,
                    addrs,
                    0,
                    &self.rxs.bounce[offset..offset + take],
                ) {
                    bump(&self.rx.counters.errors, 1);
                }
                offset += take;
                seg_at += c.nsegs;
            }
        }
        if len >= VNET_HDR_LEN {
            let first = &self.rxs.chains[0];
            let segs = &self.rxs.segs[..first.nsegs];
            let addrs = &self.rxs.addrs[..first.nsegs];
            // At most the queue size (a u16) of chains.
            let num_buffers = u16::try_from(count).unwrap_or(u16::MAX).to_le_bytes();
            let mut ok = chain::write_at(&self.mem, segs, addrs, HDR_NUM_BUFFERS, &num_buffers);
            if !self.mode.guest_csum {
                // Without GUEST_CSUM the flags must be zero; the kernel may have set
                // DATA_VALID (NEEDS_CSUM it cannot: it was given no TUN_F_CSUM).
                ok &= chain::write_at(&self.mem, segs, addrs, 0, &[0]);
            }
            if !ok {
                bump(&self.rx.counters.errors, 1);
            }
            bump(&self.rx.counters.frames, 1);
            bump(&self.rx.counters.bytes, (len - VNET_HDR_LEN) as u64);
        }
        let mut left = len;
        let mut nsegs = 0;
        for _ in 0..count {
            let c = self.rxs.chains.pop_front().expect("counted above");
            let take = left.min(c.cap);
            left -= take;
            nsegs += c.nsegs;
            self.rxs.cap -= c.cap;
            // At most one frame (64 KiB and a header).
            self.rx
                .add_used(&self.mem, c.head, u32::try_from(take).unwrap_or(u32::MAX));
        }
        self.rxs.segs.drain(..nsegs);
        self.rxs.addrs.drain(..nsegs);
        *used = true;
    }

    fn has_work_left(&self) -> bool {
        self.tx_more || self.rxs.more || self.ctrl_more
    }

    /// Guest buffers held in the receive reserve (for tests).
    #[cfg(test)]
    pub(crate) fn rx_reserved(&self) -> usize {
        self.rxs.chains.len()
    }

    /// Whether the receive side waits for guest buffers (for tests).
    #[cfg(test)]
    pub(crate) fn rx_blocked(&self) -> bool {
        self.rxs.blocked
    }
}

impl DeviceWorker for PairWorker {
    fn start(&mut self, ctx: &mut LoopContext) {
        let mut fds = vec![
            (self.rx.notifier.as_raw_fd(), TOKEN_RX),
            (self.tx.notifier.as_raw_fd(), TOKEN_TX),
            (self.wake.as_raw_fd(), TOKEN_WAKE),
        ];
        if let Some(ctrl) = &self.ctrl {
            fds.push((ctrl.vring.notifier.as_raw_fd(), TOKEN_CTRL));
        }
        for (fd, token) in fds {
            if let Err(e) = ctx.watch(fd, token, EventSet::IN) {
                tracing::error!("net pair {}: epoll_ctl: {e}", self.pair);
            }
        }
        // The driver may have queued work before the thread started.
        self.tx_turn(ctx);
        self.rx_turn(ctx);
        self.ctrl_turn(ctx);
        self.update_tap_interest(ctx);
    }

    fn event(&mut self, _ctx: &mut LoopContext, token: u64, events: EventSet) {
        match token {
            TOKEN_RX => {
                let _ = self.rx.notifier.read();
                self.rxs.blocked = false;
                self.rxs.more = true;
            }
            TOKEN_TX => {
                let _ = self.tx.notifier.read();
                self.tx_more = true;
            }
            TOKEN_TAP => {
                if events.contains(EventSet::OUT) {
                    self.tx_blocked = false;
                    self.tx_more = true;
                }
                if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // Not something a tap queue does; stop polling it rather than spin.
                    tracing::error!(pair = self.pair, "tap queue reports an error");
                    self.tap_failed = true;
                } else if events.contains(EventSet::IN) {
                    self.rxs.more = true;
                }
            }
            TOKEN_CTRL => {
                if let Some(c) = &self.ctrl {
                    let _ = c.vring.notifier.read();
                }
                self.ctrl_more = true;
            }
            _ => {
                let _ = self.wake.read();
            }
        }
    }

    fn turn_done(&mut self, ctx: &mut LoopContext) {
        // The events only mark what needs serving: each queue gets one budgeted turn per wait.
        if self.tx_more {
            self.tx_turn(ctx);
        }
        if self.rxs.more {
            self.rx_turn(ctx);
        }
        if self.ctrl_more {
            self.ctrl_turn(ctx);
        }
        self.update_tap_interest(ctx);
    }

    fn has_more(&self) -> bool {
        self.has_work_left()
    }
}
