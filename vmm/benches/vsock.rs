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
use std::time::Instant;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use pulse_vmm::devices::virtio::features;
use pulse_vmm::devices::vsock::driver::{rx_buf, VsockRig};
use pulse_vmm::devices::vsock::packet::{op, Header, HEADER_SIZE};

const CID: u64 = 3;
const PORT: u32 = 1024;
const QSIZE: u16 = 256;

/// The device, the fake driver in front of it, and the guest's echo bookkeeping.
struct Rig {
    vsock: VsockRig,
    /// Bytes consumed per connection (the `fwd_cnt` told to the device).
    consumed: std::collections::HashMap<u32, u32>,
}

impl Rig {
    fn send(&mut self, peer: u32, op: u16, payload_from: Option<(u64, u32)>) {
        let h = Header {
            buf_alloc: 1 << 20,
            fwd_cnt: self.consumed.get(&peer).copied().unwrap_or(0),
            ..self.vsock.guest.header(PORT, peer, op)
        };
        self.vsock.guest.send_in_place(h, payload_from);
    }

    /// Accepts one host connection (REQUEST -> RESPONSE); returns the host's port.
    fn accept(&mut self) -> u32 {
        loop {
            let (h, _, head) = self.vsock.guest.next_rx();
            self.vsock.guest.give_back(head);
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
            let (h, len, head) = self.vsock.guest.next_rx();
            if h.op == op::RW {
                got += len;
                *self.consumed.entry(h.src_port).or_default() += len;
                let at = rx_buf(head) + HEADER_SIZE as u64;
                self.send(h.src_port, op::RW, Some((at, len)));
            }
            self.vsock.guest.give_back(head);
        }
    }

    /// Receives `bytes` of data from any connection, acknowledging it with credit updates.
    fn sink(&mut self, bytes: u64) {
        let mut got = 0u64;
        while got < bytes {
            let (h, len, head) = self.vsock.guest.next_rx();
            if h.op == op::RW {
                got += u64::from(len);
                let c = self.consumed.entry(h.src_port).or_default();
                *c += len;
                if *c % (256 * 1024) < len {
                    self.send(h.src_port, op::CREDIT_UPDATE, None);
                }
            }
            self.vsock.guest.give_back(head);
        }
    }
}

fn rig() -> Rig {
    Rig {
        vsock: VsockRig::new(CID, 128, QSIZE, features::VERSION_1, QSIZE),
        consumed: Default::default(),
    }
}

fn host_connect(r: &mut Rig) -> UnixStream {
    let mut s = UnixStream::connect(&r.vsock.path).unwrap();
    s.write_all(pulse_hvsock::request(PORT).as_bytes()).unwrap();
    // The bench plays the guest: it accepts before the VMM can answer.
    r.accept();
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
                r.echo(bytes);
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
        r.sink((conns * per_conn) as u64);
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
