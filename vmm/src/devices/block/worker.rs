//! One thread per queue: woken by the queue's doorbell eventfd, it drains the available ring,
//! completes every request, and raises one interrupt for the batch (if the driver wants one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::media::Media;
use super::request::{self, Buffer, ID_BYTES, STATUS_IOERR};
use crate::interrupts::Interrupt;
use crate::memory::GuestMemoryMmap;
use vm_memory::Bytes;

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
    /// Stop request.
    pub kill: EventFd,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Disk (shared: the host may swap the image while the guest runs).
    pub media: Arc<Media>,
    /// Device ID string.
    pub id: [u8; ID_BYTES],
    /// Interrupt.
    pub interrupt: Arc<dyn Interrupt>,
    /// Counters.
    pub counters: Arc<QueueCounters>,
}

const TOKEN_QUEUE: u64 = 0;
const TOKEN_KILL: u64 = 1;

impl QueueWorker {
    /// Runs until `kill` is written.
    pub fn run(mut self) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("block queue {}: epoll: {e}", self.index);
                return;
            }
        };
        for (fd, token) in [(&self.notifier, TOKEN_QUEUE), (&self.kill, TOKEN_KILL)] {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                EpollEvent::new(EventSet::IN, token),
            ) {
                tracing::error!("block queue {}: epoll_ctl: {e}", self.index);
                return;
            }
        }
        // Requests may have been queued before activation finished.
        self.process();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("block queue {}: epoll_wait: {e}", self.index);
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_KILL => return,
                    _ => {
                        let _ = self.notifier.read();
                        self.process();
                    }
                }
            }
        }
    }

    /// Drains the queue and signals once for the whole batch.
    pub fn process(&mut self) {
        let mut scratch = Vec::new();
        let backend = self.media.backend();
        let mut used_any = false;
        loop {
            // With EVENT_IDX, no doorbells while the ring is being drained.
            if self.queue.disable_notification(&self.mem).is_err() {
                break;
            }
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let buffers: Vec<Buffer> = chain
                    .map(|d| Buffer {
                        addr: d.addr(),
                        len: d.len(),
                        writable: d.is_write_only(),
                    })
                    .collect();
                let len = self.complete(&backend, &buffers, &mut scratch);
                if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                    tracing::warn!("block queue {}: add_used: {e}", self.index);
                }
                used_any = true;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue, // more arrived meanwhile
                _ => break,
            }
        }
        if used_any && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
            self.interrupt.trigger(self.index);
        }
    }

    /// Completes one chain; returns the used length.
    fn complete(&mut self, backend: &Backend, buffers: &[Buffer], scratch: &mut Vec<u8>) -> u32 {
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        let (status, written) = match request::parse(&self.mem, buffers) {
            Ok(req) => {
                let (status, written) =
                    request::execute(&self.mem, backend, &self.id, &req, scratch);
                match self.mem.write_obj(status, req.status) {
                    Ok(()) => (status, written),
                    Err(_) => (STATUS_IOERR, 0),
                }
            }
            Err(e) => {
                tracing::debug!("block queue {}: malformed request: {e}", self.index);
                // Fail it through its status byte when it has one.
                if let Some(addr) = request::status_of(buffers) {
                    let _ = self.mem.write_obj(STATUS_IOERR, addr);
                    (STATUS_IOERR, 0)
                } else {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return 0;
                }
            }
        };
        if status != request::STATUS_OK {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        written + 1
    }
}
