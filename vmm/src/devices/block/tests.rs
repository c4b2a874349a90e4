//! virtio-blk driven through a hand-built split ring in guest memory: every request type, and
//! malformed chains that must fail their request, not the device.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, SECTOR_SIZE};
use super::request::{kind, STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use super::worker::{QueueCounters, QueueWorker};
use crate::devices::driver_ring::{
    assert_broken_once, assert_resets, wait_until, CountingInterrupt, DriverRing,
    DESC_F_NEXT as F_NEXT, DESC_F_WRITE as F_WRITE,
};
use crate::devices::virtio::{features, Activation, VirtioDevice};
use crate::devices::worker::{FaultLog, GuestFault, LoopContext};
use crate::memory::{create_guest_memory, GuestMemoryMmap};

const QSIZE: u16 = 16;
const RING: u64 = 0x1_0000;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Rig {
    mem: GuestMemoryMmap,
    worker: QueueWorker,
    ctx: LoopContext,
    irq: Arc<CountingInterrupt>,
    ring: DriverRing,
    _disk: tempfile::NamedTempFile,
}

fn rig_with(read_only: bool, disk_bytes: usize) -> Rig {
    let mem = create_guest_memory(16).unwrap();
    let disk = tempfile::NamedTempFile::new().unwrap();
    let pattern: Vec<u8> = (0..disk_bytes)
        .map(|i| u8::try_from(i / 512).unwrap())
        .collect();
    std::fs::write(disk.path(), &pattern).unwrap();
    let backend = Backend::open(disk.path(), read_only).unwrap();
    let ring = DriverRing::new(&mem, GuestAddress(RING), QSIZE);
    let queue = ring.queue();
    let irq = Arc::new(CountingInterrupt::default());
    let mut id = [0u8; 20];
    id[..5].copy_from_slice(b"disk0");
    let worker = QueueWorker {
        index: 0,
        queue,
        notifier: EventFd::new(0).unwrap(),
        mem: mem.clone(),
        media: Arc::new(super::Media::with_backend(
            backend,
            disk.path().to_path_buf(),
        )),
        id,
        counters: Arc::new(QueueCounters::default()),
        more: false,
    };
    let ctx = LoopContext::new(irq.clone(), Arc::new(FaultLog::new("block"))).unwrap();
    Rig {
        mem,
        worker,
        ctx,
        irq,
        ring,
        _disk: disk,
    }
}

fn rig() -> Rig {
    rig_with(false, 64 * 512)
}

impl Rig {
    /// Writes a chain of (addr, len, flags) descriptors and publishes it.
    fn push_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let buffers: Vec<(u64, u32, bool)> = descs
            .iter()
            .map(|(a, l, f)| (*a, *l, f & F_WRITE != 0))
            .collect();
        let head = self.ring.add_chain(&buffers);
        self.ring.publish(&[head]);
        head
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    /// A standard three-part request; returns the status byte.
    fn request(&mut self, kind: u32, sector: u64, data_len: u32) -> u8 {
        self.header(HEADER, kind, sector);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let data_flags = if kind == super::request::kind::IN || kind == super::request::kind::GET_ID
        {
            F_WRITE
        } else {
            0
        };
        self.push_chain(&[
            (HEADER, 16, 0),
            (DATA, data_len, data_flags),
            (STATUS, 1, F_WRITE),
        ]);
        self.process();
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn process(&mut self) {
        self.worker.process(&mut self.ctx);
    }

    fn used_len(&self, slot: u16) -> u32 {
        self.ring.used_elem(slot).1
    }

    fn used_idx(&self) -> u16 {
        self.ring.used_idx()
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        buf
    }
}

#[test]
fn read_returns_disk_contents() {
    let mut r = rig();
    assert_eq!(r.request(kind::IN, 3, 1024), STATUS_OK);
    let data = r.data(1024);
    assert!(data[..512].iter().all(|b| *b == 3));
    assert!(data[512..].iter().all(|b| *b == 4));
    assert_eq!(r.used_len(0), 1024 + 1);
    assert_eq!(r.irq.total(), 1);
}

#[test]
fn write_then_read_back() {
    let mut r = rig();
    r.mem
        .write_slice(&[0xabu8; 4096], GuestAddress(DATA))
        .unwrap();
    assert_eq!(r.request(kind::OUT, 8, 4096), STATUS_OK);
    r.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(r.request(kind::IN, 8, 4096), STATUS_OK);
    assert!(r.data(4096).iter().all(|b| *b == 0xab));
    assert_eq!(r.request(kind::FLUSH, 0, 0), STATUS_OK);
}

#[test]
fn get_id_discard_and_write_zeroes() {
    let mut r = rig();
    assert_eq!(r.request(kind::GET_ID, 0, 20), STATUS_OK);
    assert_eq!(&r.data(5), b"disk0");
    // Discard sectors 1..3, write-zeroes sector 5 (no unmap).
    for (k, sector, count, flags) in [
        (kind::DISCARD, 1u64, 2u32, 0u32),
        (kind::WRITE_ZEROES, 5, 1, 0),
    ] {
        r.mem.write_obj(sector, GuestAddress(DATA)).unwrap();
        r.mem.write_obj(count, GuestAddress(DATA + 8)).unwrap();
        r.mem.write_obj(flags, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(r.request(k, 0, 16), STATUS_OK);
    }
    assert_eq!(r.request(kind::IN, 0, 6 * 512), STATUS_OK);
    let data = r.data(6 * 512);
    assert!(data[..512].iter().all(|b| *b == 0));
    assert!(data[512..1536].iter().all(|b| *b == 0), "discarded");
    assert!(data[1536..2048].iter().all(|b| *b == 3));
    // Discard with flags is invalid.
    r.mem.write_obj(1u32, GuestAddress(DATA + 12)).unwrap();
    assert_eq!(r.request(kind::DISCARD, 0, 16), STATUS_IOERR);
}

#[test]
fn read_only_disks_refuse_writes() {
    let mut r = rig_with(true, 8 * 512);
    assert_eq!(r.request(kind::OUT, 0, 512), STATUS_IOERR);
    assert_eq!(r.request(kind::IN, 0, 512), STATUS_OK);
}

#[test]
fn out_of_bounds_and_unknown_types() {
    let mut r = rig();
    assert_eq!(r.request(kind::IN, 64, 512), STATUS_IOERR);
    assert_eq!(r.request(kind::IN, 63, 1024), STATUS_IOERR);
    assert_eq!(r.request(kind::IN, u64::MAX / 2, 512), STATUS_IOERR);
    assert_eq!(r.request(99, 0, 512), STATUS_UNSUPP);
    assert_eq!(r.worker.counters.failed.load(Ordering::SeqCst), 4);
}

#[test]
fn malformed_chains_fail_their_request() {
    let mut r = rig();
    // Header marked device-writable.
    r.header(HEADER, kind::IN, 0);
    r.push_chain(&[
        (HEADER, 16, F_WRITE),
        (DATA, 512, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    // A read whose data buffer is device-readable (wrong direction).
    r.push_chain(&[(HEADER, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
    // A data buffer outside guest memory.
    r.push_chain(&[
        (HEADER, 16, 0),
        (0xffff_0000, 512, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    // No status descriptor at all.
    r.push_chain(&[(HEADER, 16, 0)]);
    // Header outside guest memory.
    r.push_chain(&[(0x7fff_0000, 16, 0), (STATUS, 1, F_WRITE)]);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    r.process();
    assert_eq!(r.used_idx(), 5, "every chain completed");
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        STATUS_IOERR
    );
    assert_eq!(r.used_len(3), 0, "no status byte: nothing written");
    assert_eq!(r.worker.counters.failed.load(Ordering::SeqCst), 5);
    assert_eq!(r.irq.total(), 1, "one interrupt for the batch");
}

#[test]
fn looping_and_overlong_chains_end() {
    let mut r = rig();
    // Two descriptors pointing at each other: the chain ends after the queue size.
    r.header(HEADER, kind::OUT, 0);
    r.ring.write_desc(0, HEADER, 16, F_NEXT, 1);
    r.ring.write_desc(1, DATA, 512, F_NEXT, 0);
    r.ring.publish(&[0]);
    // A descriptor index beyond the table.
    r.ring.write_desc(2, HEADER, 16, F_NEXT, 200);
    r.ring.publish(&[2]);
    // A head index beyond the table.
    r.ring.publish(&[500]);
    r.process();
    assert!(r.used_idx() >= 2);
    // The device still works afterwards.
    r.ring.recycle();
    r.ring.add_chain(&[(0, 0, false); 3]);
    assert_eq!(r.request(kind::IN, 0, 512), STATUS_OK);
}

#[test]
fn a_chain_that_loops_is_refused_even_when_its_start_parses() {
    // Found by the block_chains fuzz target: header, then a writable buffer whose next is
    // itself. The walk stops after the queue size with "next" still set; what it yielded
    // looked like a read into 14 copies of one buffer with its last byte as status, and the
    // device ran it.
    let mut r = rig();
    r.header(HEADER, kind::IN, 0);
    r.mem.write_obj(0xffu8, GuestAddress(DATA + 511)).unwrap();
    r.ring.write_desc(0, HEADER, 16, F_NEXT, 1);
    r.ring.write_desc(1, DATA, 512, F_WRITE | F_NEXT, 1);
    r.ring.publish(&[0]);
    // A next index beyond the table: cut short the same way.
    r.ring.write_desc(2, HEADER, 16, F_NEXT, 3);
    r.ring.write_desc(3, STATUS, 1, F_WRITE | F_NEXT, 200);
    r.ring.publish(&[2]);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    r.process();
    assert_eq!(r.used_idx(), 2, "both returned");
    assert_eq!(r.worker.counters.failed.load(Ordering::SeqCst), 2);
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(),
        STATUS_IOERR,
        "the looping one failed through what would have been its status byte"
    );
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        STATUS_IOERR
    );
    assert_eq!(r.used_len(0), 1, "only the status byte written");
    assert_eq!(r.ctx.faults().count(GuestFault::MalformedChain), 2);
}

#[test]
fn one_interrupt_per_batch() {
    let mut r = rig();
    for sector in 0..4u64 {
        r.header(HEADER + sector * 16, kind::IN, sector);
        r.push_chain(&[
            (HEADER + sector * 16, 16, 0),
            (DATA + sector * 512, 512, F_WRITE),
            (STATUS + sector, 1, F_WRITE),
        ]);
    }
    r.process();
    assert_eq!(r.used_idx(), 4);
    assert_eq!(r.irq.total(), 1);
    assert_eq!(r.worker.counters.completed.load(Ordering::SeqCst), 4);
}

#[test]
fn config_space_reports_capacity_and_queues() {
    let disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        disk.path(),
        vec![0u8; usize::try_from(10 * SECTOR_SIZE).unwrap()],
    )
    .unwrap();
    let block = super::Block::new(super::BlockConfig {
        path: disk.path().to_path_buf(),
        read_only: false,
        queues: 4,
        queue_size: 128,
        serial: None,
    })
    .unwrap();
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 10);
    let mut nq = [0u8; 2];
    block.read_config(34, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 4);
    assert_eq!(block.queue_max_sizes(), vec![128; 4]);
    assert_ne!(block.features() & super::F_MQ, 0);
}

#[test]
fn bad_configurations_are_refused() {
    let cfg = |queues, queue_size, path: &str| super::BlockConfig {
        path: path.into(),
        read_only: false,
        queues,
        queue_size,
        serial: None,
    };
    let disk = tempfile::NamedTempFile::new().unwrap();
    let p = disk.path().to_str().unwrap();
    assert!(super::Block::new(cfg(0, 128, p)).is_err());
    assert!(super::Block::new(cfg(2, 100, p)).is_err());
    let err = super::Block::new(cfg(1, 128, "/nonexistent/disk.img"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
}

/// A whole device with one queue, activated, and the driver's side of it.
struct ActiveBlock {
    block: super::Block,
    mem: GuestMemoryMmap,
    ring: DriverRing,
    doorbell: EventFd,
    irq: Arc<CountingInterrupt>,
}

/// A read-write device on the image at `path`, activated with `features`.
fn active_block(path: &std::path::Path, serial: Option<&str>, features: u64) -> ActiveBlock {
    let mut block = super::Block::new(super::BlockConfig {
        path: path.to_path_buf(),
        read_only: false,
        queues: 1,
        queue_size: QSIZE,
        serial: serial.map(Into::into),
    })
    .unwrap();
    let mem = create_guest_memory(16).unwrap();
    let ring = DriverRing::new(&mem, GuestAddress(RING), QSIZE);
    let (queue, doorbell) = ring.active_queue(0);
    let irq = Arc::new(CountingInterrupt::default());
    let activation = Activation::new(mem.clone(), features, vec![queue], irq.clone());
    block.activate(activation).unwrap();
    ActiveBlock {
        block,
        mem,
        ring,
        doorbell,
        irq,
    }
}

#[test]
fn an_image_written_into_a_slot_shows_up_with_a_config_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let slot = dir.path().join("slot0.img");
    // An empty placeholder, as the shim attaches at boot.
    std::fs::write(&slot, b"").unwrap();
    let ActiveBlock {
        mut block,
        mem,
        mut ring,
        doorbell,
        irq,
    } = active_block(&slot, Some("slot0"), features::VERSION_1);
    let handle = block.handle();
    let capacity = |b: &super::Block| {
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        u64::from_le_bytes(cap)
    };
    assert_eq!(capacity(&block), 0);
    let generation = block.config_generation();

    // The host writes a 4-sector image into the slot (a new file renamed over it: the open
    // descriptor still sees the old, empty one until the reload).
    let image = dir.path().join("rootfs.img");
    let sector = usize::try_from(SECTOR_SIZE).unwrap();
    let contents: Vec<u8> = (1..=4u8).flat_map(|s| vec![s; sector]).collect();
    std::fs::write(&image, &contents).unwrap();
    std::fs::rename(&image, &slot).unwrap();
    assert_eq!(handle.reload(None).unwrap(), 4 * SECTOR_SIZE);
    assert_eq!(capacity(&block), 4);
    assert_ne!(block.config_generation(), generation);
    assert_eq!(irq.config(), 1, "one config-change interrupt");

    // A read through the queue sees the new image.
    mem.write_obj(kind::IN, GuestAddress(HEADER)).unwrap();
    mem.write_obj(3u64, GuestAddress(HEADER + 8)).unwrap();
    let head = ring.add_chain(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    ring.publish(&[head]);
    doorbell.write(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || ring.used_idx() != 0),
        "request not completed"
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), STATUS_OK);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 4);

    // A path that cannot be opened changes nothing.
    assert!(handle
        .reload(Some(&dir.path().join("missing.img")))
        .is_err());
    assert_eq!(capacity(&block), 4);
    assert_eq!(handle.path(), slot);
    block.reset();
}

/// The available ring's idx field of the test ring (after 16 descriptors of 16 bytes).
const AVAIL_IDX: u64 = RING + 16 * QSIZE as u64 + 2;

#[test]
fn an_avail_index_past_the_ring_breaks_the_queue_and_the_device_still_stops() {
    let disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(disk.path(), vec![0u8; 8 * 512]).unwrap();
    let ActiveBlock {
        block,
        mem,
        ring,
        doorbell,
        irq,
    } = active_block(disk.path(), None, features::VERSION_1);
    // The hostile guest: its index runs queue size + 5 ahead of the device.
    mem.write_obj(QSIZE + 5, GuestAddress(AVAIL_IDX)).unwrap();
    doorbell.write(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || irq.needs_reset_requests() != 0),
        "no DEVICE_NEEDS_RESET"
    );
    // More doorbells change nothing, and the reset (which joins the worker) returns.
    doorbell.write(1).unwrap();
    let faults = block.faults().clone();
    assert_resets(block);
    assert_broken_once(&irq, &faults);
    assert_eq!(irq.config(), 1, "one configuration interrupt");
    assert_eq!(ring.used_idx(), 0);
}

#[test]
fn a_broken_queue_is_not_served_again() {
    let mut r = rig();
    r.mem.write_obj(QSIZE + 5, GuestAddress(AVAIL_IDX)).unwrap();
    r.process();
    assert!(r.ctx.is_broken(0));
    assert!(!r.worker.more, "nothing left to retry");
    // Even a sane index afterwards is ignored until the reset.
    r.mem.write_obj(1u16, GuestAddress(AVAIL_IDX)).unwrap();
    r.process();
    assert_eq!(r.used_idx(), 0);
    assert_eq!(r.irq.needs_reset_requests(), 1);
}

#[test]
fn a_full_ring_is_served_a_budget_at_a_time() {
    let mut r = rig();
    for _ in 0..QSIZE {
        r.push_chain(&[(HEADER, 16, 0), (STATUS, 1, F_WRITE)]);
    }
    r.header(HEADER, kind::FLUSH, 0);
    r.process();
    assert_eq!(r.used_idx(), QSIZE, "16 chains fit in one budget");
    assert!(!r.worker.more);
}

/// A discard/write-zeroes request whose one data descriptor holds `segments` segments of
/// `sectors` sectors each.
fn range_request(r: &mut Rig, k: u32, segments: u32, sectors: u32) -> u8 {
    for i in 0..u64::from(segments) {
        r.mem.write_obj(0u64, GuestAddress(DATA + 16 * i)).unwrap();
        r.mem
            .write_obj(sectors, GuestAddress(DATA + 16 * i + 8))
            .unwrap();
        r.mem
            .write_obj(0u32, GuestAddress(DATA + 16 * i + 12))
            .unwrap();
    }
    r.request(k, 0, 16 * segments)
}

#[test]
fn discard_and_write_zeroes_beyond_the_advertised_limits_are_refused() {
    use super::request::{MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS};
    // A disk large enough that the sector counts are in bounds.
    let mut r = rig_with(false, 64 * 512);
    for k in [kind::DISCARD, kind::WRITE_ZEROES] {
        assert_eq!(range_request(&mut r, k, 4096, 1), STATUS_IOERR, "{k}");
        assert_eq!(range_request(&mut r, k, 2, 1), STATUS_IOERR, "{k}");
        assert_eq!(
            range_request(&mut r, k, 1, MAX_RANGE_SECTORS + 1),
            STATUS_IOERR
        );
        assert_eq!(range_request(&mut r, k, 1, 2), STATUS_OK, "{k}");
    }
    // The config space says so.
    let field = |offset: usize| {
        let space = super::build_config_space(&r.worker.media.backend(), 1);
        u32::from_le_bytes(space[offset..offset + 4].try_into().unwrap())
    };
    assert_eq!(field(36), MAX_RANGE_SECTORS, "max_discard_sectors");
    assert_eq!(field(40), MAX_RANGE_SEGMENTS, "max_discard_seg");
    assert_eq!(field(48), MAX_RANGE_SECTORS, "max_write_zeroes_sectors");
    assert_eq!(field(52), MAX_RANGE_SEGMENTS, "max_write_zeroes_seg");
}

#[test]
fn a_status_descriptor_at_the_top_of_the_address_space_does_not_wrap() {
    let mut r = rig();
    r.mem.write_obj(0xaau8, GuestAddress(0)).unwrap();
    r.header(HEADER, kind::IN, 0);
    r.push_chain(&[(HEADER, 16, 0), (u64::MAX, 2, F_WRITE)]);
    r.process();
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used_len(0), 0, "no usable status byte");
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(0)).unwrap(),
        0xaa,
        "guest address 0 untouched"
    );
}

thread_local! {
    /// Records the `log` crate (virtio-queue's logger) emitted on this thread.
    static LOG_RECORDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, _: &log::Record) {
        LOG_RECORDS.with(|c| c.set(c.get() + 1));
    }
    fn flush(&self) {}
}

/// Log lines from the `log` crate on this thread so far (a logger is installed once).
fn log_records() -> u64 {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if log::set_logger(&CountingLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
    LOG_RECORDS.with(|c| c.get())
}

#[test]
fn a_flood_of_bad_chains_writes_a_bounded_number_of_log_lines() {
    let before = log_records();
    let mut r = rig();
    for round in 0..200u16 {
        r.ring.recycle();
        let mut heads = Vec::new();
        for i in 0..QSIZE / 2 {
            // No status descriptor, and a head beyond the table.
            heads.push(r.ring.add_chain(&[(HEADER, 16, false)]));
            heads.push(100 + (round + i) % 100);
        }
        r.ring.publish(&heads);
        r.process();
    }
    assert_eq!(r.ctx.faults().count(GuestFault::MalformedChain), 200 * 8);
    assert_eq!(r.ctx.faults().count(GuestFault::HeadOutOfRange), 200 * 8);
    // A broken ring: before, every turn of the spinning worker logged.
    r.mem
        .write_obj(
            r.ring.avail_idx().wrapping_add(QSIZE + 5),
            GuestAddress(AVAIL_IDX),
        )
        .unwrap();
    for _ in 0..1000 {
        r.process();
    }
    r.ctx.faults().flush();
    assert!(
        r.ctx.faults().lines() <= 5,
        "{} lines",
        r.ctx.faults().lines()
    );
    assert_eq!(
        log_records() - before,
        0,
        "nothing reaches virtio-queue's logger"
    );
}

/// Every request type, served by the device's own worker thread: `activate` starts it through
/// `crate::confine`, so it runs under the block filter (these calls are what the filter must
/// allow: pread64, pwrite64, fdatasync, fallocate).
#[test]
fn a_confined_worker_serves_every_request_type() {
    let disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(disk.path(), vec![7u8; 64 * 512]).unwrap();
    let features = features::VERSION_1 | super::F_FLUSH | super::F_DISCARD | super::F_WRITE_ZEROES;
    let ActiveBlock {
        mut block,
        mem,
        mut ring,
        doorbell,
        ..
    } = active_block(disk.path(), Some("confined"), features);
    // Every thread of that name (other tests' too) is a block worker under its filter.
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        if std::fs::read_to_string(task.join("comm")).unwrap_or_default() == "blk-q0\n" {
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
        }
    }
    let mut done = 0u16;
    let mut request = |kind: u32, sector: u64, data_len: u32, device_writes: bool| -> u8 {
        mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = ring.add_chain(&[
            (HEADER, 16, false),
            (DATA, data_len, device_writes),
            (STATUS, 1, true),
        ]);
        ring.publish(&[head]);
        doorbell.write(1).unwrap();
        done += 1;
        assert!(
            wait_until(Duration::from_secs(10), || ring.used_idx() == done),
            "request {kind} not completed"
        );
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    };
    mem.write_slice(&[0xabu8; 1024], GuestAddress(DATA))
        .unwrap();
    assert_eq!(request(kind::OUT, 2, 1024, false), STATUS_OK);
    assert_eq!(request(kind::FLUSH, 0, 0, false), STATUS_OK);
    for k in [kind::DISCARD, kind::WRITE_ZEROES] {
        // One segment: sector 2, one sector, no flags.
        mem.write_obj(2u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(1u32, GuestAddress(DATA + 8)).unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(request(k, 0, 16, false), STATUS_OK, "{k}");
    }
    assert_eq!(request(kind::IN, 2, 1024, true), STATUS_OK);
    let mut data = [0u8; 1024];
    mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data[..512].iter().all(|b| *b == 0), "zeroed");
    assert!(data[512..].iter().all(|b| *b == 0xab), "written");
    assert_eq!(request(kind::GET_ID, 0, 20, true), STATUS_OK);
    block.reset();
}

#[test]
fn a_disk_is_named_in_reports_by_its_whole_serial_or_its_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, b"").unwrap();
    let block = |serial: Option<&str>| {
        super::Block::new(super::BlockConfig {
            path: image.clone(),
            read_only: false,
            queues: 1,
            queue_size: QSIZE,
            serial: serial.map(String::from),
        })
        .unwrap()
    };
    let long = "a-serial-longer-than-twenty-bytes";
    assert_eq!(
        block(Some(long)).id(),
        long,
        "GET_ID cuts it, reports do not"
    );
    assert_eq!(block(None).id(), "disk.img");
}
