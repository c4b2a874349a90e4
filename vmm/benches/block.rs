//! Host-side cost of virtio-blk requests through the device model: a driver thread plays the
//! guest (rings in guest memory, a doorbell eventfd as KVM's ioeventfd would write it), the
//! device's own queue worker threads serve it. No VM is involved, so this is the VMM's cost alone.
//!
//! - `block_request_4k/{read,write}`: one 4 KiB request at a time, doorbell to completion.
//! - `block_throughput/queues/N`: N driver threads, one per queue, each keeping a batch of 32
//!   4 KiB reads in flight; criterion reports bytes per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use pulse_vmm::devices::block::{Block, BlockConfig};
use pulse_vmm::devices::driver_ring::{lay_out_queues, CountingInterrupt, DriverQueue};
use pulse_vmm::devices::virtio::{features, Activation, VirtioDevice};
use pulse_vmm::interrupts::Interrupt;
use pulse_vmm::memory::{create_guest_memory, GuestMemoryMmap};
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 128;
const BATCH: u16 = 32;
const DISK_BYTES: u64 = 64 << 20;
const REQ_BYTES: u32 = 4096;

/// Guest-side state of one queue: its ring and its buffers.
struct Driver {
    q: DriverQueue,
    mem: GuestMemoryMmap,
}

impl Driver {
    /// Submits `count` requests of type `kind` and waits (spinning) until all are used.
    fn run_batch(&mut self, kind: u32, count: u16, round: u64) {
        self.q.ring.recycle();
        let mut heads = Vec::with_capacity(usize::from(count));
        for i in 0..u64::from(count) {
            let slot = self.q.buffers + i * 8192;
            let (header, data, status) = (slot, slot + 4096, slot + 4095);
            let sector = (u64::from(self.q.index) * 4096 + (round * u64::from(count) + i) % 4096)
                * 8
                % (DISK_BYTES / 512 - 8);
            self.mem.write_obj(kind, GuestAddress(header)).unwrap();
            self.mem
                .write_obj(sector, GuestAddress(header + 8))
                .unwrap();
            heads.push(self.q.ring.add_chain(&[
                (header, 16, false),
                (data, REQ_BYTES, kind == 0),
                (status, 1, true),
            ]));
        }
        let target = self.q.ring.avail_idx().wrapping_add(count);
        self.q.ring.publish(&heads);
        self.q.doorbell.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Yield rather than spin: with more threads than host CPUs a spinning driver would
        // starve the worker it waits for (a real guest vCPU halts instead).
        while self.q.ring.used_idx() != target {
            assert!(Instant::now() < deadline, "device stalled");
            std::thread::yield_now();
        }
    }
}

/// A block device with `queues` queues, activated on rings in fresh guest memory.
fn setup(queues: u16) -> (Block, Vec<Driver>, tempfile::NamedTempFile) {
    let mem = create_guest_memory(256).unwrap();
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(DISK_BYTES).unwrap();
    // Fill the page cache so that reads measure the device model, not the disk.
    std::fs::write(
        disk.path(),
        vec![0x5au8; usize::try_from(DISK_BYTES).unwrap()],
    )
    .unwrap();
    let mut block = Block::new(BlockConfig {
        path: disk.path().to_path_buf(),
        read_only: false,
        queues,
        queue_size: QUEUE_SIZE,
        serial: None,
    })
    .unwrap();
    let (active, queues) = lay_out_queues(&mem, 0..queues, QUEUE_SIZE);
    let drivers = queues
        .into_iter()
        .map(|q| Driver {
            q,
            mem: mem.clone(),
        })
        .collect();
    let irq: Arc<dyn Interrupt> = Arc::new(CountingInterrupt::default());
    block
        .activate(Activation::new(mem, features::VERSION_1, active, irq))
        .unwrap();
    (block, drivers, disk)
}

fn single_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_request_4k");
    group.throughput(Throughput::Bytes(u64::from(REQ_BYTES)));
    for (name, kind) in [("read", 0u32), ("write", 1u32)] {
        let (_block, mut drivers, _disk) = setup(1);
        let mut round = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                round += 1;
                drivers[0].run_batch(kind, 1, round);
            })
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_throughput");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for queues in [1u16, 2, 4] {
        let (_block, drivers, _disk) = setup(queues);
        let drivers: Vec<_> = drivers.into_iter().map(std::sync::Mutex::new).collect();
        let drivers = Arc::new(drivers);
        group.throughput(Throughput::Bytes(
            u64::from(queues) * u64::from(BATCH) * u64::from(REQ_BYTES),
        ));
        group.bench_with_input(BenchmarkId::new("queues", queues), &queues, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for d in drivers.iter() {
                        s.spawn(move || {
                            let mut d = d.lock().unwrap();
                            for round in 0..iters {
                                d.run_batch(0, BATCH, round);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// Bytes per second with `queues` driver threads each keeping a batch in flight, over `time`.
fn measure_throughput(queues: u16, time: Duration) -> f64 {
    let (_block, drivers, _disk) = setup(queues);
    let start = Instant::now();
    let batches: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = drivers
            .into_iter()
            .map(|mut d| {
                s.spawn(move || {
                    let mut round = 0;
                    while start.elapsed() < time {
                        d.run_batch(0, BATCH, round);
                        round += 1;
                    }
                    round
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (batches * u64::from(BATCH) * u64::from(REQ_BYTES)) as f64 / start.elapsed().as_secs_f64()
}

/// The scaling table: throughput against the queue count, and the gain over one queue.
fn scaling_table() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "virtio-blk host throughput, 4 KiB reads from the page cache, batches of {BATCH}, \
         one worker thread per queue, {cpus} host CPUs"
    );
    println!();
    println!("| queues | MiB/s    | vs 1 queue | requests/s |");
    println!("|--------|----------|------------|------------|");
    let mut one = None;
    for queues in [1u16, 2, 4] {
        let bps = measure_throughput(queues, Duration::from_secs(2));
        let base = *one.get_or_insert(bps);
        println!(
            "| {queues:>6} | {:>8.0} | {:>10.2} | {:>10.0} |",
            bps / f64::from(1 << 20),
            bps / base,
            bps / f64::from(REQ_BYTES)
        );
    }
    println!();
    println!(
        "Each queue keeps two threads busy here (the driver standing in for a vCPU, and the \
         device's worker), so with {cpus} host CPUs the queues share cores once there are more \
         than {} of them and the gain levels off.",
        (cpus / 2).max(1)
    );
}

criterion_group!(benches, single_request, throughput);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    scaling_table();
}
