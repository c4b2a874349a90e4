//! The one loop every device worker thread runs. It waits on the worker's descriptors
//! (doorbells, host sockets, timers) and its stop request, and hands ready descriptors to the
//! device's [`DeviceWorker`]. The stop request is looked at before anything else on every
//! turn, and a worker with work left after its budget is called again without sleeping, so a
//! guest that keeps a device busy cannot keep it from stopping.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::fault_log::{FaultLog, GuestFault};
use super::guest_queue::QueueFault;
use crate::interrupts::Interrupt;

/// The token of the stop request; devices use any other.
pub const STOP_TOKEN: u64 = u64::MAX;

/// Most events taken from one wait.
const EVENTS_PER_WAIT: usize = 64;

/// A device's side of the loop.
pub trait DeviceWorker {
    /// Before the first wait: register descriptors, serve what the driver queued before the
    /// worker started.
    fn start(&mut self, ctx: &mut LoopContext);
    /// A descriptor registered with `token` is ready.
    fn event(&mut self, ctx: &mut LoopContext, token: u64, events: EventSet);
    /// After the events of one wait (and after a wait that timed out): deadlines, interest
    /// changes, budgeted work that is left.
    fn turn_done(&mut self, _ctx: &mut LoopContext) {}
    /// Work is left over from a budgeted turn: wait without sleeping.
    fn has_more(&self) -> bool {
        false
    }
    /// Longest sleep (for the worker's deadlines); `None`: until an event.
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// What the loop gives a worker: its epoll set, its interrupt, its broken queues and the
/// device's fault log.
pub struct LoopContext {
    epoll: Epoll,
    interrupt: Arc<dyn Interrupt>,
    faults: Arc<FaultLog>,
    broken: BTreeSet<u16>,
}

impl LoopContext {
    /// A context for a worker of the device whose mistakes go to `faults`.
    pub fn new(interrupt: Arc<dyn Interrupt>, faults: Arc<FaultLog>) -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            interrupt,
            faults,
            broken: BTreeSet::new(),
        })
    }

    /// Waits for `events` on `fd`, reported with `token`.
    pub fn watch(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Changes what `fd` is waited for.
    pub fn rewatch(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stops waiting on `fd` (a descriptor already closed has left the set by itself).
    pub fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &dyn Interrupt {
        self.interrupt.as_ref()
    }

    /// The device's fault log.
    pub fn faults(&self) -> &Arc<FaultLog> {
        &self.faults
    }

    /// Records a guest mistake that does not break a queue.
    pub fn guest_fault(&self, fault: GuestFault, detail: &dyn Display) {
        self.faults.record(fault, detail);
    }

    /// The guest broke queue `queue`: the device stops serving it and asks for a reset (the
    /// driver sees DEVICE_NEEDS_RESET and gets a configuration interrupt). Once per queue.
    pub fn queue_fault(&mut self, queue: u16, fault: QueueFault) {
        if self.broken.insert(queue) {
            self.faults
                .record(fault.kind(), &format_args!("queue {queue}: {fault}"));
            self.interrupt.needs_reset();
        }
    }

    /// Whether the guest broke `queue`.
    pub fn is_broken(&self, queue: u16) -> bool {
        self.broken.contains(&queue)
    }
}

/// Why the loop ended other than by the stop request.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The stop request could not be watched.
    #[error("cannot watch the stop request: {0}")]
    Watch(io::Error),
    /// Waiting failed.
    #[error("epoll_wait: {0}")]
    Wait(io::Error),
}

/// Runs `worker` until `stop` is written (or epoll fails).
pub fn run<W: DeviceWorker>(
    worker: &mut W,
    ctx: &mut LoopContext,
    stop: &EventFd,
) -> Result<(), LoopError> {
    ctx.watch(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)
        .map_err(LoopError::Watch)?;
    worker.start(ctx);
    let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
    let result = loop {
        let timeout = if worker.has_more() {
            0
        } else {
            worker.timeout().map_or(-1, |t| {
                i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX)
            })
        };
        let n = match ctx.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(LoopError::Wait(e)),
        };
        // The stop request first: nothing a device has to do is worth delaying a stop.
        if events[..n].iter().any(|e| e.data() == STOP_TOKEN) {
            break Ok(());
        }
        for e in &events[..n] {
            worker.event(ctx, e.data(), e.event_set());
        }
        worker.turn_done(ctx);
    };
    // Summed up if due; what is left is logged later (a guest resetting in a loop must not
    // get a line per stop).
    ctx.faults.flush_due();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::driver_ring::{join_within, CountingInterrupt};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Always has more to do, as a device under a guest that never stops posting.
    struct Busy {
        turns: Arc<AtomicU64>,
    }

    impl DeviceWorker for Busy {
        fn start(&mut self, _ctx: &mut LoopContext) {}
        fn event(&mut self, _ctx: &mut LoopContext, _token: u64, _events: EventSet) {}
        fn turn_done(&mut self, _ctx: &mut LoopContext) {
            self.turns.fetch_add(1, Ordering::Relaxed);
        }
        fn has_more(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_worker_that_always_has_more_still_stops() {
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stopper = stop.try_clone().unwrap();
        let turns = Arc::new(AtomicU64::new(0));
        let seen = turns.clone();
        let thread = std::thread::spawn(move || {
            let irq = Arc::new(CountingInterrupt::default());
            let mut ctx = LoopContext::new(irq, Arc::new(FaultLog::new("test"))).unwrap();
            run(&mut Busy { turns: seen }, &mut ctx, &stop)
        });
        while turns.load(Ordering::Relaxed) < 100 {
            std::thread::yield_now();
        }
        stopper.write(1).unwrap();
        join_within(thread, Duration::from_secs(10))
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_broken_queue_asks_for_one_reset() {
        let irq = Arc::new(CountingInterrupt::default());
        let log = Arc::new(FaultLog::new("test"));
        let mut ctx = LoopContext::new(irq.clone(), log.clone()).unwrap();
        ctx.queue_fault(1, QueueFault::RingAccess);
        ctx.queue_fault(1, QueueFault::RingAccess);
        assert!(ctx.is_broken(1) && !ctx.is_broken(0));
        assert_eq!(irq.needs_reset_requests(), 1);
        assert_eq!(log.count(GuestFault::RingAccess), 1);
    }
}
