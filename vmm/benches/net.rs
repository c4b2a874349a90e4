//! Host-side cost of virtio-net frames through the device model and a real tap: driver threads
//! play the guest (rings in guest memory, doorbell eventfds as KVM's ioeventfds would write
//! them), the device's own pair workers serve them, and the host side of the tap is the kernel
//! (transmitted frames enter the host stack and are dropped there; received frames are sent
//! into the tap through an AF_PACKET socket before the clock starts). No VM is involved, so
//! this is the VMM's cost plus the tap's, per frame.
//!
//! - `net_tx/{64,1500}`: one frame per doorbell, to completion (latency of a lone frame).
//! - `net_tx_batch/{64,1500}`: 64 frames per doorbell; criterion reports frames per second.
//! - `net_rx_batch/{64,1500}`: 64 frames waiting in the tap, then 64 buffers posted with one
//!   doorbell, until all are used.
//! - `net_tx_pairs/N`, `net_rx_pairs/N`: N queue pairs, each with its own driver thread, 1500-byte
//!   frames in batches of 64.
//!
//! Needs root and /dev/net/tun (it creates taps named `pnb<pid><n>`); skipped otherwise.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use pulse_vmm::devices::driver_ring::{desc_len, lay_out_queues, CountingInterrupt, DriverQueue};
use pulse_vmm::devices::net::ctrl::cmd;
use pulse_vmm::devices::net::packet_socket::PacketSocket;
use pulse_vmm::devices::net::{MacAddr, Net, NetConfig, F_CTRL_VQ, F_MQ};
use pulse_vmm::devices::virtio::{features, Activation, VirtioDevice};
use pulse_vmm::memory::{create_guest_memory, GuestMemoryMmap};
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 256;
const BATCH: u16 = 64;
const BUF_LEN: u32 = 2048;
const HDR: usize = 12;
const GUEST_MAC: [u8; 6] = [0x02, 0x50, 0x55, 0x4c, 0x53, 0x45];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// An IPv4/UDP frame of `len` bytes in flow `port`: the tap picks an rx queue per flow.
fn udp_frame(dst: [u8; 6], src: [u8; 6], port: u16, len: usize) -> Vec<u8> {
    let len = len.max(60);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = u16::try_from(len - 14).unwrap();
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 98, 0, 2, 10, 98, 0, 1,
    ];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = u16::try_from((sum & 0xffff) + (sum >> 16)).unwrap();
    ip[10..12].copy_from_slice(&(!folded).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(len, 0x5a);
    f
}

/// Brings a link up (SIOCSIFFLAGS), after its IPv6 chatter is switched off.
fn quiet_link_up(ifname: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is integers, arrays and a union of such; zeroes are valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    // SAFETY: `ifr` is a valid ifreq for both calls; SIOCGIFFLAGS fills the flags member,
    // which is then read.
    unsafe {
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr),
            0
        );
        ifr.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap();
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr),
            0
        );
    }
}

/// Guest side of one queue.
struct Driver {
    q: DriverQueue,
    mem: GuestMemoryMmap,
}

impl Driver {
    fn wait(&self, target: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Yield rather than spin: with more threads than host CPUs a spinning driver would
        // starve the worker it waits for (a real guest vCPU halts instead).
        while self.q.ring.used_idx() != target {
            assert!(Instant::now() < deadline, "device stalled");
            std::thread::yield_now();
        }
    }

    /// Writes `frame` behind a zero header into each of the first `count` buffers.
    fn fill(&self, count: u16, frame: &[u8]) {
        for i in 0..u64::from(count) {
            let at = self.q.buffers + i * u64::from(BUF_LEN);
            self.mem.write_slice(&[0u8; HDR], GuestAddress(at)).unwrap();
            self.mem
                .write_slice(frame, GuestAddress(at + HDR as u64))
                .unwrap();
        }
    }

    /// Publishes `count` chains over the first buffers, rings, waits until all are used.
    fn round(&mut self, count: u16, len: u32, writable: bool) {
        self.q.ring.recycle();
        let mut heads = Vec::with_capacity(usize::from(count));
        for i in 0..u64::from(count) {
            let at = self.q.buffers + i * u64::from(BUF_LEN);
            heads.push(self.q.ring.add_chain(&[(at, len, writable)]));
        }
        let target = self.q.ring.avail_idx().wrapping_add(count);
        self.q.ring.publish(&heads);
        self.q.doorbell.write(1).unwrap();
        self.wait(target);
    }
}

struct Pair {
    rx: Driver,
    tx: Driver,
}

struct Rig {
    net: Net,
    pairs: Vec<Pair>,
    injector: PacketSocket,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
}

/// A device with `pairs` queue pairs on a fresh tap, activated and with all pairs in use.
fn setup(pairs: u16) -> Rig {
    let name = format!(
        "pnb{}{}",
        std::process::id() % 1_000_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut cfg = NetConfig::new(&name);
    cfg.queue_pairs = pairs;
    cfg.queue_size = QUEUE_SIZE;
    cfg.mac = Some(MacAddr(GUEST_MAC));
    cfg.link_up = false;
    let mut net = Net::new(cfg).unwrap();
    quiet_link_up(&name);
    let mem = create_guest_memory(256).unwrap();
    let negotiated = features::VERSION_1 | F_CTRL_VQ | if pairs > 1 { F_MQ } else { 0 };
    let ctrl_index = if pairs > 1 { 2 * pairs } else { 2 };
    let (active, queues) = lay_out_queues(&mem, (0..2 * pairs).chain([ctrl_index]), QUEUE_SIZE);
    let mut drivers: Vec<Driver> = queues
        .into_iter()
        .map(|q| Driver {
            q,
            mem: mem.clone(),
        })
        .collect();
    net.activate(Activation::new(
        mem.clone(),
        negotiated,
        active,
        Arc::new(CountingInterrupt::default()),
    ))
    .unwrap();
    let mut ctrl = drivers.pop().unwrap();
    if pairs > 1 {
        let at = ctrl.q.buffers;
        let mut command = vec![cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET];
        command.extend_from_slice(&pairs.to_le_bytes());
        mem.write_slice(&command, GuestAddress(at)).unwrap();
        let head = ctrl.q.ring.add_chain(&[(at, 4, false), (at + 64, 1, true)]);
        ctrl.q.ring.publish(&[head]);
        ctrl.q.doorbell.write(1).unwrap();
        ctrl.wait(1);
        let ack: u8 = mem.read_obj(GuestAddress(at + 64)).unwrap();
        assert_eq!(ack, cmd::OK);
        assert_eq!(net.active_queue_pairs(), pairs);
    }
    let mut it = drivers.into_iter();
    let mut all = Vec::new();
    while let (Some(rx), Some(tx)) = (it.next(), it.next()) {
        all.push(Pair { rx, tx });
    }
    let injector = PacketSocket::sender(&name);
    Rig {
        net,
        pairs: all,
        injector,
    }
}

impl Rig {
    /// Puts `count` frames of `len` bytes for each pair into the tap, steered to the pair's
    /// queue: the tap sends a flow to the queue that last transmitted it, so each pair first
    /// sends one frame of its flow.
    fn preload(&mut self, count: u16, len: usize) {
        if self.pairs.len() > 1 {
            for (p, port) in self.pairs.iter_mut().zip(7000u16..) {
                let f = udp_frame(PEER_MAC, GUEST_MAC, port, 60);
                p.tx.fill(1, &f);
                p.tx.round(1, desc_len(HDR + f.len()), false);
            }
        }
        // An AF_PACKET send runs the tap's transmit synchronously: once it returns, the frame
        // waits in the tap queue. (No sleep here: it would only let the CPUs fall into deep
        // idle and time their wake-up.)
        for port in (7000u16..).take(self.pairs.len()) {
            let f = udp_frame(GUEST_MAC, PEER_MAC, port, len);
            for _ in 0..count {
                self.injector.send(&f);
            }
        }
    }

    fn received(&self) -> u64 {
        (0..self.pairs.len())
            .map(|p| self.net.counters()[2 * p].frames.load(Ordering::Relaxed))
            .sum()
    }
}

/// A group measured for 3 s after 1 s of warm-up, `frames` frames an iteration.
fn frames_group<'c>(
    c: &'c mut Criterion,
    name: &str,
    frames: u16,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(u64::from(frames)));
    group
}

/// Transmit rounds of `count` frames of 64 and 1500 bytes, as group `name`.
fn tx_rounds_of(c: &mut Criterion, name: &str, count: u16) {
    let mut group = frames_group(c, name, count);
    for len in [64usize, 1500] {
        let mut rig = setup(1);
        let frame = udp_frame(PEER_MAC, GUEST_MAC, 1, len);
        rig.pairs[0].tx.fill(count, &frame);
        let chain = desc_len(HDR + frame.len());
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| rig.pairs[0].tx.round(count, chain, false))
        });
    }
    group.finish();
}

fn single_frames(c: &mut Criterion) {
    if usable() {
        tx_rounds_of(c, "net_tx", 1);
    }
}

fn batches(c: &mut Criterion) {
    if !usable() {
        return;
    }
    tx_rounds_of(c, "net_tx_batch", BATCH);
    let mut group = frames_group(c, "net_rx_batch", BATCH);
    for len in [64usize, 1500] {
        let mut rig = setup(1);
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rig.preload(BATCH, len);
                    let start = Instant::now();
                    rig.pairs[0].rx.round(BATCH, BUF_LEN, true);
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

/// Transmit frames per second over about `time`.
fn tx_rate(rig: &mut Rig, time: Duration) -> f64 {
    // Calibrate the round count, then measure.
    let probe = tx_rounds(rig, 20);
    let rounds = (20 * time.as_nanos() / probe.as_nanos().max(1)).max(20);
    let rounds = u64::try_from(rounds).unwrap_or(u64::MAX);
    let took = tx_rounds(rig, rounds);
    (rounds * u64::from(BATCH) * rig.pairs.len() as u64) as f64 / took.as_secs_f64()
}

/// Receive frames per second, timed over about `time` of receive work.
fn rx_rate(rig: &mut Rig, time: Duration) -> f64 {
    let mut timed = Duration::ZERO;
    let mut frames = 0u64;
    let before = rig.received();
    while timed < time {
        timed += rx_round(rig);
        frames += u64::from(BATCH) * rig.pairs.len() as u64;
    }
    assert_eq!(rig.received() - before, frames, "every frame delivered");
    frames as f64 / timed.as_secs_f64()
}

/// One round of receive work on every pair: frames put into the tap (untimed), then every
/// pair's driver posts buffers for them; returns the time from the doorbells until all are
/// used (thread start-up is not timed: the drivers start together from a barrier).
fn rx_round(rig: &mut Rig) -> Duration {
    rig.preload(BATCH, 1500);
    if rig.pairs.len() == 1 {
        let start = Instant::now();
        rig.pairs[0].rx.round(BATCH, BUF_LEN, true);
        return start.elapsed();
    }
    let barrier = Barrier::new(rig.pairs.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = rig
            .pairs
            .iter_mut()
            .map(|p| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    p.rx.round(BATCH, BUF_LEN, true);
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}

/// `rounds` batches on every pair's transmit queue, one driver thread per pair.
fn tx_rounds(rig: &mut Rig, rounds: u64) -> Duration {
    let frame = udp_frame(PEER_MAC, GUEST_MAC, 1, 1500);
    let chain = desc_len(HDR + frame.len());
    for p in &rig.pairs {
        p.tx.fill(BATCH, &frame);
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in rig.pairs.iter_mut() {
            s.spawn(move || {
                for _ in 0..rounds {
                    p.tx.round(BATCH, chain, false);
                }
            });
        }
    });
    start.elapsed()
}

fn scaling(c: &mut Criterion) {
    if !usable() {
        return;
    }
    for (name, rx) in [("net_tx_pairs", false), ("net_rx_pairs", true)] {
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
        group.warm_up_time(Duration::from_secs(1));
        for pairs in [1u16, 2, 4] {
            let mut rig = setup(pairs);
            group.throughput(Throughput::Elements(u64::from(pairs) * u64::from(BATCH)));
            group.bench_with_input(BenchmarkId::from_parameter(pairs), &pairs, |b, _| {
                b.iter_custom(|iters| {
                    if rx {
                        (0..iters).map(|_| rx_round(&mut rig)).sum()
                    } else {
                        tx_rounds(&mut rig, iters)
                    }
                })
            });
        }
        group.finish();
    }
}

/// The scaling table: frames per second against the queue pairs, and the gain over one pair.
fn scaling_table() {
    if !usable() {
        println!("net benchmarks skipped: they need root and /dev/net/tun");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "virtio-net host throughput through a tap, 1500-byte frames, batches of {BATCH} per \
         doorbell, one worker thread per queue pair, {cpus} host CPUs"
    );
    println!();
    println!("| pairs | tx frames/s | tx Gbit/s | tx vs 1 | rx frames/s | rx Gbit/s | rx vs 1 |");
    println!("|-------|-------------|-----------|---------|-------------|-----------|---------|");
    let (mut tx1, mut rx1) = (None, None);
    for pairs in [1u16, 2, 4] {
        let mut rig = setup(pairs);
        let tx = tx_rate(&mut rig, Duration::from_secs(2));
        let rx = rx_rate(&mut rig, Duration::from_secs(1));
        let (tb, rb) = (*tx1.get_or_insert(tx), *rx1.get_or_insert(rx));
        let gbit = |fps: f64| fps * 1500.0 * 8.0 / 1e9;
        println!(
            "| {pairs:>5} | {tx:>11.0} | {:>9.2} | {:>7.2} | {rx:>11.0} | {:>9.2} | {:>7.2} |",
            gbit(tx),
            tx / tb,
            gbit(rx),
            rx / rb
        );
    }
    println!();
    println!(
        "Each pair keeps two threads busy (its driver, standing in for a vCPU, and its worker), \
         so with {cpus} host CPUs the pairs share cores once there are more than {} of them. \
         tx frames are not addressed to the host: its stack drops them on arrival. rx is timed \
         from the doorbell until every waiting frame is in a guest buffer; the frames are put \
         into the tap beforehand, untimed.",
        (cpus / 2).max(1)
    );
}

criterion_group!(benches, single_frames, batches, scaling);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    scaling_table();
}
