//! Host-side cost of vsock messages through the device model: a host process on the hybrid
//! socket and a driver thread playing the guest (rings in guest memory, doorbell eventfds as
//! KVM's ioeventfds would write them). No VM, so this is the VMM's cost alone.
//!
//! - `vsock_echo/{64,4096}`: one message host -> guest -> host (a round trip through the device
//!   twice), per iteration.
//! - then a table: bytes per second host -> guest with 1, 4 and 16 connections streaming at
//!   once (the device serves all connections on one worker thread).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use pulse_vmm::devices::driver_ring::{desc_len, CountingInterrupt, DriverRing};
use pulse_vmm::devices::virtio::{features, Activation, ActiveQueue, VirtioDevice};
use pulse_vmm::devices::vsock::packet::{op, Header, HEADER_SIZE, HOST_CID, TYPE_STREAM};
use pulse_vmm::devices::vsock::{Vsock, VsockConfig};
use pulse_vmm::memory::{create_guest_memory, GuestMemoryMmap};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;
const PORT: u32 = 1024;
const QSIZE: u16 = 256;
const RX_BUF: u32 = 4096;
const RX_BASE: u64 = 0x100_0000;
const TX_BASE: u64 = 0x300_0000;
const TX_SLOT: u64 = 0x1_1000;

/// The guest: rx and tx rings, the echo bookkeeping.
struct Guest {
    mem: GuestMemoryMmap,
    rx: DriverRing,
    tx: DriverRing,
    rx_evt: EventFd,
    tx_evt: EventFd,
    rx_seen: u16,
    tx_slot: u64,
    /// Bytes consumed per connection (the `fwd_cnt` told to the device).
    consumed: std::collections::HashMap<u32, u32>,
}

impl Guest {
    fn new(mem: GuestMemoryMmap) -> (Self, Vec<ActiveQueue>) {
        let rx = DriverRing::new(&mem, GuestAddress(0x10_0000), QSIZE);
        let tx = DriverRing::new(&mem, GuestAddress(0x20_0000), QSIZE);
        let ev = DriverRing::new(&mem, GuestAddress(0x30_0000), 4);
        let (rx_queue, rx_evt) = rx.active_queue(0);
        let (tx_queue, tx_evt) = tx.active_queue(1);
        let queues = vec![rx_queue, tx_queue, ev.active_queue(2).0];
        let mut g = Guest {
            mem,
            rx,
            tx,
            rx_evt,
            tx_evt,
            rx_seen: 0,
            tx_slot: 0,
            consumed: Default::default(),
        };
        let heads: Vec<u16> = (0..QSIZE).collect();
        for &i in &heads {
            g.rx.write_desc(i, RX_BASE + u64::from(i) * u64::from(RX_BUF), RX_BUF, 2, 0);
        }
        g.rx.publish(&heads);
        (g, queues)
    }

    /// The next packet, spinning (with yields) until the device delivers one.
    fn recv(&mut self) -> (Header, u32, u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.rx.used_idx() == self.rx_seen {
            assert!(Instant::now() < deadline, "device stalled");
            std::thread::yield_now();
        }
        let (head, len) = self.rx.used_elem(self.rx_seen);
        let head = u16::try_from(head).unwrap();
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let at = RX_BASE + u64::from(head) * u64::from(RX_BUF);
        let mut raw = [0u8; HEADER_SIZE];
        self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
        (Header::decode(&raw), len - desc_len(HEADER_SIZE), head)
    }

    fn give_back(&mut self, head: u16) {
        self.rx.publish(&[head]);
        self.rx_evt.write(1).unwrap();
    }

    fn send(&mut self, peer: u32, op: u16, payload_from: Option<(u64, u32)>) {
        let len = payload_from.map_or(0, |(_, l)| l);
        let h = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: PORT,
            dst_port: peer,
            len,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            fwd_cnt: self.consumed.get(&peer).copied().unwrap_or(0),
            ..Default::default()
        };
        let at = TX_BASE + (self.tx_slot % u64::from(QSIZE / 2)) * TX_SLOT;
        self.tx_slot += 1;
        self.mem.write_slice(&h.encode(), GuestAddress(at)).unwrap();
        let mut chain = vec![(at, desc_len(HEADER_SIZE), false)];
        if let Some((addr, len)) = payload_from {
            chain.push((addr, len, false));
        }
        let head = self.tx.add_chain(&chain);
        self.tx.publish(&[head]);
        self.tx_evt.write(1).unwrap();
    }

    /// Accepts one host connection (REQUEST -> RESPONSE); returns the host's port.
    fn accept(&mut self) -> u32 {
        loop {
            let (h, _, head) = self.recv();
            self.give_back(head);
            if h.op == op::REQUEST {
                self.send(h.src_port, op::RESPONSE, None);
                return h.src_port;
            }
        }
    }

    /// Receives `bytes` of data from `peer` and echoes each packet straight back.
    fn echo(&mut self, bytes: u32) {
        let mut got = 0;
        while got < bytes {
            let (h, len, head) = self.recv();
            if h.op == op::RW {
                got += len;
                *self.consumed.entry(h.src_port).or_default() += len;
                let at = RX_BASE + u64::from(head) * u64::from(RX_BUF) + HEADER_SIZE as u64;
                self.send(h.src_port, op::RW, Some((at, len)));
            }
            self.give_back(head);
        }
    }

    /// Receives `bytes` of data from any connection, acknowledging it with credit updates.
    fn sink(&mut self, bytes: u64) {
        let mut got = 0u64;
        while got < bytes {
            let (h, len, head) = self.recv();
            if h.op == op::RW {
                got += u64::from(len);
                let c = self.consumed.entry(h.src_port).or_default();
                *c += len;
                if *c % (256 * 1024) < len {
                    self.send(h.src_port, op::CREDIT_UPDATE, None);
                }
            }
            self.give_back(head);
        }
    }
}

struct Rig {
    _dev: Vsock,
    guest: Guest,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut dev = Vsock::new(VsockConfig {
        guest_cid: CID,
        uds_path: path.clone(),
    })
    .unwrap();
    let mem = create_guest_memory(128).unwrap();
    let (guest, queues) = Guest::new(mem.clone());
    dev.activate(Activation::new(
        mem,
        features::VERSION_1,
        queues,
        Arc::new(CountingInterrupt::default()),
    ))
    .unwrap();
    Rig {
        _dev: dev,
        guest,
        path,
        _dir: dir,
    }
}

fn host_connect(r: &mut Rig) -> UnixStream {
    let mut s = UnixStream::connect(&r.path).unwrap();
    s.write_all(pulse_hvsock::request(PORT).as_bytes()).unwrap();
    // The bench plays the guest: it accepts before the VMM can answer.
    r.guest.accept();
    pulse_hvsock::read_reply(PORT, &mut s).unwrap();
    s
}

fn echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("vsock_echo");
    for size in [64usize, 4096 - HEADER_SIZE] {
        let mut r = rig();
        let mut s = host_connect(&mut r);
        let msg = vec![0xa5u8; size];
        let mut back = vec![0u8; size];
        let bytes = u32::try_from(size).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                s.write_all(&msg).unwrap();
                r.guest.echo(bytes);
                s.read_exact(&mut back).unwrap();
            })
        });
    }
    group.finish();
}

/// Host -> guest bytes per second with `conns` connections writing at once.
fn stream(conns: usize, per_conn: usize) -> f64 {
    let mut r = rig();
    let streams: Vec<UnixStream> = (0..conns).map(|_| host_connect(&mut r)).collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for mut s in streams {
            scope.spawn(move || {
                let chunk = vec![0x5au8; 64 * 1024];
                let mut left = per_conn;
                while left > 0 {
                    let n = left.min(chunk.len());
                    s.write_all(&chunk[..n]).unwrap();
                    left -= n;
                }
                s
            });
        }
        r.guest.sink((conns * per_conn) as u64);
    });
    (conns * per_conn) as f64 / start.elapsed().as_secs_f64()
}

fn scaling_table() {
    println!();
    println!("vsock host -> guest streaming through the device model (one worker thread)");
    println!();
    println!("| connections | MiB/s    | vs 1 connection |");
    println!("|-------------|----------|-----------------|");
    let mut one = None;
    for conns in [1usize, 4, 16] {
        let bps = stream(conns, 32 << 20 >> conns.ilog2().min(2));
        let base = *one.get_or_insert(bps);
        println!(
            "| {conns:>11} | {:>8.0} | {:>15.2} |",
            bps / f64::from(1 << 20),
            bps / base
        );
    }
}

criterion_group!(benches, echo);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    scaling_table();
}
