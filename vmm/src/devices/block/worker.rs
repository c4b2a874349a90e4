//! One thread per queue, on the shared device loop: woken by the queue's doorbell, it serves
//! up to a budget of requests, and raises one interrupt for the batch (if the driver wants
//! one). A ring the guest breaks stops the queue (DEVICE_NEEDS_RESET), never the thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::media::Media;
use super::request::{self, ID_BYTES, STATUS_IOERR};
use crate::devices::vsock::packet::chain_buffers;
use crate::devices::worker::{
    self, guest_queue, Chain, DeviceWorker, GuestFault, LoopContext, Served, BUDGET,
};
use crate::memory::GuestMemoryMmap;

/// Counters of one queue.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Requests completed, successfully or not.
    pub completed: AtomicU64,
    /// Requests that failed (malformed chain, bounds, backend error).
    pub failed: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
}

/// The state a queue thread owns.
pub struct QueueWorker {
    /// Queue index.
    pub index: u16,
    /// The virtqueue.
    pub queue: Queue,
    /// Doorbell.
    pub notifier: EventFd,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Disk (shared: the host may swap the image while the guest runs).
    pub media: Arc<Media>,
    /// Device ID string.
    pub id: [u8; ID_BYTES],
    /// Counters.
    pub counters: Arc<QueueCounters>,
    /// The budget ran out with requests left.
    pub more: bool,
}

const TOKEN_QUEUE: u64 = 0;

impl QueueWorker {
    /// Runs on the device loop until `stop` is written.
    pub fn run(mut self, mut ctx: LoopContext, stop: EventFd) {
        if let Err(e) = worker::run(&mut self, &mut ctx, &stop) {
            tracing::error!("block queue {}: {e}", self.index);
        }
    }

    /// Serves up to a budget of requests and signals once for the batch.
    pub fn process(&mut self, ctx: &mut LoopContext) {
        self.more = false;
        if ctx.is_broken(self.index) {
            return;
        }
        let backend = self.media.backend();
        let mut scratch = Vec::new();
        let (mem, id, counters) = (&self.mem, &self.id, &self.counters);
        let (done, result) =
            guest_queue::drain(&mut self.queue, mem, ctx.faults(), BUDGET, |chain| {
                Served::Used(complete(
                    mem,
                    &backend,
                    id,
                    counters,
                    ctx,
                    chain,
                    &mut scratch,
                ))
            });
        self.more = done.more;
        if let Err(fault) = result {
            ctx.queue_fault(self.index, fault);
        }
        if done.used && guest_queue::needs_notification(&mut self.queue, &self.mem) {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            ctx.interrupt().trigger(self.index);
        }
    }
}

impl DeviceWorker for QueueWorker {
    fn start(&mut self, ctx: &mut LoopContext) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.notifier);
        if let Err(e) = ctx.watch(fd, TOKEN_QUEUE, EventSet::IN) {
            tracing::error!("block queue {}: epoll_ctl: {e}", self.index);
        }
        // Requests may have been queued before activation finished.
        self.process(ctx);
    }

    fn event(&mut self, ctx: &mut LoopContext, _token: u64, _events: EventSet) {
        let _ = self.notifier.read();
        self.process(ctx);
    }

    fn turn_done(&mut self, ctx: &mut LoopContext) {
        if self.more {
            self.process(ctx);
        }
    }

    fn has_more(&self) -> bool {
        self.more
    }
}

/// Completes one chain; returns the used length.
fn complete(
    mem: &GuestMemoryMmap,
    backend: &Backend,
    id: &[u8; ID_BYTES],
    counters: &QueueCounters,
    ctx: &LoopContext,
    chain: Chain<'_>,
    scratch: &mut Vec<u8>,
) -> u32 {
    // The walk stops by itself on a loop or an index outside the table: its last descriptor
    // then still says "next". Such a chain is malformed, however well its first part parses.
    let (buffers, terminated) = chain_buffers(chain);
    counters.completed.fetch_add(1, Ordering::Relaxed);
    let parsed = if terminated || buffers.is_empty() {
        request::parse(mem, &buffers)
    } else {
        Err(request::RequestError::Unterminated)
    };
    let (status, written) = match parsed {
        Ok(req) => {
            let (status, written) = request::execute(mem, backend, id, &req, scratch);
            match mem.write_obj(status, req.status) {
                Ok(()) => (status, written),
                Err(_) => (STATUS_IOERR, 0),
            }
        }
        Err(e) => {
            ctx.guest_fault(GuestFault::MalformedChain, &e);
            // Fail it through its status byte when it has one.
            if let Some(addr) = request::status_of(&buffers) {
                let _ = mem.write_obj(STATUS_IOERR, addr);
                (STATUS_IOERR, 0)
            } else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
        }
    };
    if status != request::STATUS_OK {
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }
    written + 1
}
