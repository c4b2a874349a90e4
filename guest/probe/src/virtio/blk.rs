//! virtio-blk requests on one queue: a batch of write or read requests (header, 4 KiB data,
//! status byte: three descriptors each), published with one avail-index store and one
//! doorbell, then checked when the used index covers them. One CPU owns a queue at a time.

use super::buf::DmaBufs;
use super::queue::{Page, Virtq, MAX_QUEUES};
use pulse_probe::virtio_spec::{blk, ring};
use pulse_probe::workload::{self, Batch, Plan, BLOCK, DESCS_PER_REQUEST, WORDS_PER_BLOCK};

/// Most requests in one batch: a 64-entry queue holds 21 three-descriptor chains.
pub const MAX_BATCH: usize = (super::queue::QUEUE_SIZE_CAP / DESCS_PER_REQUEST) as usize;

/// struct virtio_blk_outhdr.
#[repr(C)]
struct ReqHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// One batch's buffers for one queue: separate pages for writes and for reads, so a read
/// that does nothing cannot pass the check with what the write left behind.
#[repr(C)]
struct QueueBufs {
    write: [Page; MAX_BATCH],
    read: [Page; MAX_BATCH],
    headers: [ReqHeader; MAX_BATCH],
    status: [u8; MAX_BATCH],
}

/// Per queue index, shared by the devices (they run one after the other, and a device is
/// idle once its workload is done). Not zeroed at boot: every field is written before the
/// device sees it.
#[link_section = ".noinit.virtio_bufs"]
static BUFS: DmaBufs<[QueueBufs; MAX_QUEUES]> = DmaBufs::new();

fn bufs(q: u16) -> *mut QueueBufs {
    assert!((q as usize) < MAX_QUEUES);
    // SAFETY: in bounds of the static array; only an address is formed.
    unsafe { BUFS.ptr().cast::<QueueBufs>().add(q as usize) }
}

/// Everything a queue's owner needs and keeps while running it.
#[derive(Clone, Copy)]
pub struct QueueRun {
    pub dev: u8,
    pub q: u16,
    pub vq: Virtq,
    /// Absolute doorbell address and the value written there.
    pub doorbell: u64,
    pub event_idx: bool,
    pub plan: Plan,
    /// Free-running indexes: next avail slot to fill, next used entry to consume.
    next_avail: u16,
    next_used: u16,
    /// The batch in flight.
    in_flight: Option<Batch>,
    pub completed: u32,
    pub batches: u32,
    pub request_errors: u32,
    pub data_errors: u32,
    pub used_len_errors: u32,
    /// Stopped after a timeout or a broken used ring: no more batches.
    pub failed: Option<&'static str>,
}

impl QueueRun {
    pub fn new(dev: u8, q: u16, vq: Virtq, doorbell: u64, event_idx: bool, plan: Plan) -> Self {
        Self {
            dev,
            q,
            vq,
            doorbell,
            event_idx,
            plan,
            next_avail: 0,
            next_used: 0,
            in_flight: None,
            completed: 0,
            batches: 0,
            request_errors: 0,
            data_errors: 0,
            used_len_errors: 0,
            failed: None,
        }
    }

    /// Queues batch `batch`: fills the write data, the three descriptors per request and
    /// the avail entries, asks for one interrupt when the last request completes, publishes
    /// them all at once and rings the doorbell once.
    pub fn submit(&mut self, batch: Batch) {
        let b = bufs(self.q);
        for j in 0..batch.count as usize {
            let i = batch.first + j as u32;
            // SAFETY: `b` points at this queue's buffers, which only the queue's current
            // owner (this CPU) uses; the device reads them only after `publish` below.
            let (hdr, status, data) = unsafe {
                let hdr = core::ptr::addr_of_mut!((*b).headers[j]);
                let status = core::ptr::addr_of_mut!((*b).status[j]);
                let data = if batch.write {
                    core::ptr::addr_of_mut!((*b).write[j])
                } else {
                    core::ptr::addr_of_mut!((*b).read[j])
                };
                hdr.write_volatile(ReqHeader {
                    kind: if batch.write {
                        blk::kind::OUT
                    } else {
                        blk::kind::IN
                    },
                    reserved: 0,
                    sector: self.plan.sector(self.q, i),
                });
                status.write_volatile(blk::STATUS_UNSET);
                if batch.write {
                    workload::fill(
                        &mut *(data as *mut [u64; WORDS_PER_BLOCK]),
                        self.dev,
                        self.q,
                        i,
                    );
                }
                (hdr as u64, status as u64, data as u64)
            };
            let d = j as u16 * DESCS_PER_REQUEST;
            let data_flags = if batch.write { 0 } else { ring::DESC_F_WRITE };
            self.vq.set_desc(d, hdr, 16, ring::DESC_F_NEXT, d + 1);
            self.vq.set_desc(
                d + 1,
                data,
                BLOCK as u32,
                ring::DESC_F_NEXT | data_flags,
                d + 2,
            );
            self.vq.set_desc(d + 2, status, 1, ring::DESC_F_WRITE, 0);
            self.vq.put_avail(self.next_avail.wrapping_add(j as u16), d);
        }
        let n = batch.count as u16;
        if self.event_idx {
            // Interrupt when the used index passes start + n - 1: once, for the last one.
            self.vq.set_used_event(self.next_used.wrapping_add(n - 1));
        }
        self.next_avail = self.next_avail.wrapping_add(n);
        self.vq.publish(self.next_avail);
        super::mmio::ring_doorbell(self.doorbell, self.q as u32);
        self.in_flight = Some(batch);
    }

    /// The device has used every request of the batch in flight.
    pub fn batch_done(&self) -> bool {
        match self.in_flight {
            Some(b) => self.vq.used_idx().wrapping_sub(self.next_used) >= b.count as u16,
            None => true,
        }
    }

    /// Checks the completed batch: one used entry per request, status bytes, and for reads
    /// the data, byte by byte against the pattern the writes stored.
    pub fn finish(&mut self) {
        let Some(batch) = self.in_flight.take() else {
            return;
        };
        let b = bufs(self.q);
        let mut seen: u32 = 0;
        let want_len = if batch.write { 1 } else { BLOCK as u32 + 1 };
        for k in 0..batch.count as u16 {
            let (id, len) = self.vq.used_elem(self.next_used.wrapping_add(k));
            let j = id / DESCS_PER_REQUEST as u32;
            if id % DESCS_PER_REQUEST as u32 != 0 || j >= batch.count || seen & 1 << j != 0 {
                self.failed = Some("virtio: used ring names a request twice or one never sent");
            } else {
                seen |= 1 << j;
            }
            if len != want_len {
                self.used_len_errors += 1;
            }
        }
        self.next_used = self.next_used.wrapping_add(batch.count as u16);
        for j in 0..batch.count as usize {
            let i = batch.first + j as u32;
            // SAFETY: the device wrote the status byte before the used index that
            // `batch_done` read (acquire fence there); this CPU owns the buffers.
            let status = unsafe { core::ptr::addr_of!((*b).status[j]).read_volatile() };
            if status != blk::STATUS_OK {
                self.request_errors += 1;
                continue;
            }
            if !batch.write {
                // SAFETY: as above, for the read page of request j.
                let page = unsafe { core::ptr::addr_of!((*b).read[j]) } as *const u64;
                // SAFETY: word k < 512 of a 4 KiB page; volatile because the device wrote it.
                let word = |k: usize| unsafe { page.add(k).read_volatile() };
                self.data_errors += workload::mismatched_bytes(word, self.dev, self.q, i);
            }
        }
        self.completed += batch.count;
        self.batches += 1;
    }

    /// A single read of request 0's block with an interrupt wanted for it (the mask test).
    /// Not counted in `completed` or `batches`.
    pub fn submit_single_read(&mut self) {
        self.submit(Batch {
            write: false,
            first: 0,
            count: 1,
        });
    }

    /// Consumes the single read; returns whether it succeeded.
    pub fn finish_single(&mut self) -> bool {
        let before = (
            self.completed,
            self.batches,
            self.request_errors,
            self.data_errors,
        );
        self.finish();
        let ok = self.request_errors == before.2 && self.data_errors == before.3;
        (
            self.completed,
            self.batches,
            self.request_errors,
            self.data_errors,
        ) = before;
        ok
    }

    pub fn abandon(&mut self, why: &'static str) {
        self.failed = Some(why);
        self.in_flight = None;
    }
}
