//! virtio-net with `driver_ring` playing the guest.
//!
//! - Device-model tests run a pair worker over a stand-in tap (a `SOCK_SEQPACKET` socket pair,
//!   which keeps frame boundaries like a tap queue): hostile chains, receive layouts,
//!   interrupts. They need no privileges.
//! - Tap tests use real taps (root and `/dev/net/tun`; skipped otherwise), named
//!   `ptst<pid><n>`. Taps Pulse creates go away with the device even when a test panics
//!   (unwinding drops it); persistent taps a test makes are removed by a guard.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::ctrl::{cmd, Ctrl, Shared};
use super::packet_socket::{recv_frame, PacketSocket};
use super::tap::{self, Tap, TapError, TapOrigin, VNET_HDR_LEN};
use super::worker::{PairParts, PairWorker, QueueCounters, RxMode, Vring, MAX_CHAIN_LEN};
use super::*;
use crate::devices::driver_ring::{
    desc_len, wait_until, CountingInterrupt, DriverRing, DESC_F_NEXT, DESC_F_WRITE,
};
use crate::devices::virtio::{features as vf, Activation, ActiveQueue, VirtioDevice};
use crate::interrupts::Interrupt;
use crate::memory::{create_guest_memory, GuestMemoryMmap};

const QSIZE: u16 = 256;
const MEM_MIB: u64 = 64;
const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];
const GUEST_MAC: [u8; 6] = [0x02, 0x50, 0x55, 0x4c, 0x53, 0x45];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xaa];
const WAIT: Duration = Duration::from_secs(5);

fn ring_base(q: u16) -> u64 {
    0x10_0000 + u64::from(q) * 0x1_0000
}

fn buf_base(q: u16) -> u64 {
    0x100_0000 + u64::from(q) * 0x20_0000
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

/// A test frame: EtherType 0x88b5, then "PT", a tag and a sequence number, then a pattern.
fn marker_frame(dst: [u8; 6], tag: u8, seq: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ETHERTYPE_TEST);
    f.extend_from_slice(&[b'P', b'T', tag, seq]);
    while f.len() < len.max(60) {
        f.push(f.len().to_le_bytes()[0].wrapping_mul(7) ^ tag);
    }
    f
}

fn marker_of(frame: &[u8]) -> Option<(u8, u8)> {
    (frame.len() >= 18 && frame[12..14] == ETHERTYPE_TEST && &frame[14..16] == b"PT")
        .then(|| (frame[16], frame[17]))
}

/// An IPv4/UDP frame of flow `port` (for the kernel's per-flow queue choice), with a marker.
fn udp_frame(dst: [u8; 6], src: [u8; 6], port: u16, seq: u8) -> Vec<u8> {
    let [_, port_low] = port.to_be_bytes();
    let payload = [b'P', b'T', port_low, seq, 0, 0, 0, 0];
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(20 + 8 + payload.len()).unwrap();
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 2, 10, 99, 0, 1,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !u16::try_from((sum & 0xffff) + (sum >> 16)).unwrap();
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

fn udp_marker_of(frame: &[u8]) -> Option<(u16, u8)> {
    (frame.len() >= 46
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 17
        && &frame[42..44] == b"PT")
        .then(|| (u16::from_be_bytes([frame[34], frame[35]]), frame[45]))
}

// ---------------------------------------------------------------------------------------------
// Device-model rig: one pair worker over a socket pair.

struct FakeRig {
    mem: GuestMemoryMmap,
    worker: PairWorker,
    rx: DriverRing,
    tx: DriverRing,
    ctrl: Option<DriverRing>,
    peer: OwnedFd,
    irq: Arc<CountingInterrupt>,
    /// Doorbells of rx and tx, and the kill eventfd, for a worker running in a thread.
    bells: [EventFd; 3],
    shared: Arc<Shared>,
    rx_counters: Arc<QueueCounters>,
    tx_counters: Arc<QueueCounters>,
    next_buf: u64,
}

/// Received frames may span buffers (MRG_RXBUF), checksums are not passed on.
const MERGEABLE: RxMode = RxMode {
    mergeable: true,
    guest_csum: false,
};

fn fake_rig(mode: RxMode, event_idx: bool, with_ctrl: bool, features: u64) -> FakeRig {
    let mem = create_guest_memory(MEM_MIB).unwrap();
    let (tap, peer) = Tap::fake_pair("fake0");
    let tap = Arc::new(tap);
    let ring = |q: u16| {
        let r = DriverRing::new(&mem, GuestAddress(ring_base(q)), QSIZE);
        let mut queue = r.queue();
        virtio_queue::QueueT::set_event_idx(&mut queue, event_idx);
        (r, queue)
    };
    let (rx, rxq) = ring(0);
    let (tx, txq) = ring(1);
    let config = Arc::new(Mutex::new(ConfigSpace::new(MacAddr(GUEST_MAC), 1, 0)));
    let shared = Arc::new(Shared::new(
        tap.clone(),
        features,
        1,
        config,
        vec![EventFd::new(0).unwrap()],
    ));
    let rx_counters = Arc::new(QueueCounters::default());
    let tx_counters = Arc::new(QueueCounters::default());
    let (ctrl_ring, ctrl) = if with_ctrl {
        let (r, q) = ring(2);
        let ctrl = Ctrl {
            vring: Vring {
                index: 2,
                queue: q,
                notifier: EventFd::new(0).unwrap(),
                counters: Arc::default(),
            },
            shared: shared.clone(),
        };
        (Some(r), Some(ctrl))
    } else {
        (None, None)
    };
    let irq = Arc::new(CountingInterrupt::default());
    let bells = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    let worker = PairWorker::new(PairParts {
        pair: 0,
        mem: mem.clone(),
        rx: Vring {
            index: 0,
            queue: rxq,
            notifier: bells[0].try_clone().unwrap(),
            counters: rx_counters.clone(),
        },
        tx: Vring {
            index: 1,
            queue: txq,
            notifier: bells[1].try_clone().unwrap(),
            counters: tx_counters.clone(),
        },
        ctrl,
        tap: tap.queue(0).unwrap().clone(),
        kill: bells[2].try_clone().unwrap(),
        wake: EventFd::new(0).unwrap(),
        interrupt: irq.clone(),
        shared: shared.clone(),
        mode,
    })
    .unwrap();
    FakeRig {
        bells,
        shared,
        mem,
        worker,
        rx,
        tx,
        ctrl: ctrl_ring,
        peer,
        irq,
        rx_counters,
        tx_counters,
        next_buf: buf_base(0),
    }
}

impl FakeRig {
    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len as u64 + 63) & !63;
        at
    }

    /// Publishes a transmit chain holding a zero header and `frame` in one descriptor.
    fn send(&mut self, frame: &[u8]) {
        let at = self.alloc(VNET_HDR_LEN + frame.len());
        self.tx.publish_readable(at, &[&[0u8; VNET_HDR_LEN], frame]);
    }

    /// Posts `count` receive buffers of `len` bytes; returns (head, address) of each.
    fn post_rx(&mut self, count: usize, len: u32) -> Vec<(u16, u64)> {
        let mut posted = Vec::new();
        for _ in 0..count {
            let at = self.alloc(len as usize);
            let head = self.rx.add_chain(&[(at, len, true)]);
            posted.push((head, at));
        }
        let heads: Vec<u16> = posted.iter().map(|p| p.0).collect();
        self.rx.publish(&heads);
        posted
    }

    /// What the peer (the "host") read from the stand-in tap.
    fn peer_frames(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| recv_frame(self.peer.as_fd(), None)).collect()
    }

    /// The "host" sends a frame (header + data) into the stand-in tap.
    fn inject(&self, hdr: [u8; VNET_HDR_LEN], frame: &[u8]) {
        let mut rec = hdr.to_vec();
        rec.extend_from_slice(frame);
        // SAFETY: `rec` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                self.peer.as_raw_fd(),
                rec.as_ptr().cast(),
                rec.len(),
                libc::MSG_DONTWAIT,
            )
        };
        assert_eq!(
            n.cast_unsigned(),
            rec.len(),
            "{}",
            std::io::Error::last_os_error()
        );
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }
}

#[test]
fn tx_frames_go_to_the_tap_with_their_header() {
    let mut r = fake_rig(RxMode::default(), false, false, 0);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| marker_frame([0xff; 6], 0, i, 60 + 300 * usize::from(i)))
        .collect();
    for f in &frames {
        r.send(f);
    }
    r.worker.process_tx();
    let got = r.peer_frames();
    assert_eq!(got.len(), 5);
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(&g[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&g[VNET_HDR_LEN..], &f[..]);
    }
    assert_eq!(r.tx.used_idx(), 5);
    assert_eq!(load(&r.tx_counters.frames), 5);
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(load(&r.tx_counters.bytes), bytes as u64);
    assert_eq!(r.irq.queue(1), 1, "one interrupt for the batch");
    assert_eq!(load(&r.tx_counters.interrupts), 1);
}

#[test]
fn tx_waits_for_a_full_tap_and_loses_nothing() {
    let mut r = fake_rig(RxMode::default(), true, false, 0);
    let count = 200u16;
    for seq in 0..count {
        r.send(&marker_frame(
            [0xff; 6],
            4,
            u8::try_from(seq).unwrap(),
            1500,
        ));
    }
    // The stand-in tap's socket buffer holds far fewer than 200 frames of 1.5 KB: the worker
    // must stop on EAGAIN, wait for the tap to be writable, and go on.
    let FakeRig {
        worker,
        bells,
        peer,
        tx,
        tx_counters,
        ..
    } = r;
    let thread = std::thread::spawn(move || worker.run());
    bells[1].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stuck = tx.used_idx();
    assert!(
        stuck > 0 && stuck < count,
        "the tap took {stuck} frames, then refused"
    );
    let mut got = 0u16;
    let mut seqs = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got < count && Instant::now() < deadline {
        let Some(buf) = recv_frame(peer.as_fd(), None) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        seqs.push(marker_of(&buf[VNET_HDR_LEN..]).unwrap().1);
        got += 1;
    }
    assert_eq!(got, count, "all frames written");
    let want: Vec<u8> = (0..count).map(|s| u8::try_from(s).unwrap()).collect();
    assert_eq!(seqs, want, "in order, none lost or doubled");
    assert!(wait_until(WAIT, || tx.used_idx() == count));
    assert_eq!(load(&tx_counters.dropped), 0);
    bells[2].write(1).unwrap();
    thread.join().unwrap();
}

#[test]
fn tx_header_and_frame_may_be_split_anyhow() {
    let mut r = fake_rig(RxMode::default(), false, false, 0);
    let frame = marker_frame([0xff; 6], 1, 1, 200);
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes[0] = 1; // NEEDS_CSUM, passed to the kernel as is
    bytes.extend_from_slice(&frame);
    // Pieces of 5, 9, 1, then the rest: the header straddles descriptors.
    let cuts = [0usize, 5, 14, 15, bytes.len()];
    let at = r.alloc(bytes.len() + 64 * 4);
    let mut descs = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let addr = at + (i as u64) * 0x400;
        r.mem
            .write_slice(&bytes[w[0]..w[1]], GuestAddress(addr))
            .unwrap();
        descs.push((addr, desc_len(w[1] - w[0]), false));
    }
    let head = r.tx.add_chain(&descs);
    r.tx.publish(&[head]);
    r.worker.process_tx();
    let got = r.peer_frames();
    assert_eq!(got, vec![bytes]);
}

#[test]
fn hostile_tx_chains_are_counted_and_the_worker_goes_on() {
    let mut r = fake_rig(RxMode::default(), false, false, 0);
    let good = marker_frame([0xff; 6], 9, 9, 100);
    let at = r.alloc(2048);
    // 1. A loop: descriptors 0 and 1 point at each other.
    r.tx.write_desc(0, at, 64, DESC_F_NEXT, 1);
    r.tx.write_desc(1, at, 64, DESC_F_NEXT, 0);
    r.tx.publish(&[0]);
    // 2. A next index outside the table.
    r.tx.write_desc(2, at, 64, DESC_F_NEXT, 999);
    r.tx.publish(&[2]);
    // 3. A head index outside the table.
    r.tx.publish(&[4000]);
    // 4. A buffer outside guest memory.
    r.tx.write_desc(3, 0xff_0000_0000, 100, 0, 0);
    r.tx.publish(&[3]);
    // 5. A device-writable descriptor on transmit.
    r.tx.write_desc(4, at, 100, DESC_F_WRITE, 0);
    r.tx.publish(&[4]);
    // 6. Shorter than a header plus an Ethernet header.
    r.tx.write_desc(5, at, 20, 0, 0);
    r.tx.publish(&[5]);
    // 7. Longer than 64 KiB plus headers: 40 descriptors of 2 KiB.
    for i in 0..40u16 {
        let flags = if i < 39 { DESC_F_NEXT } else { 0 };
        r.tx.write_desc(6 + i, at, 2048, flags, 7 + i);
    }
    r.tx.publish(&[6]);
    // 8. A zero-length chain.
    r.tx.write_desc(46, at, 0, 0, 0);
    r.tx.publish(&[46]);
    r.worker.process_tx();
    // All but the one with a head outside the table (which has no used entry to go to).
    assert_eq!(r.tx.used_idx(), 7, "hostile chains are returned");
    assert_eq!(load(&r.tx_counters.errors), 8);
    assert_eq!(load(&r.tx_counters.frames), 0);
    assert!(r.peer_frames().is_empty(), "nothing reached the tap");
    // The worker still works.
    let frame_at = r.alloc(VNET_HDR_LEN + good.len());
    r.mem
        .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(frame_at))
        .unwrap();
    r.mem
        .write_slice(&good, GuestAddress(frame_at + VNET_HDR_LEN as u64))
        .unwrap();
    r.tx.write_desc(47, frame_at, desc_len(VNET_HDR_LEN + good.len()), 0, 0);
    r.tx.publish(&[47]);
    r.worker.process_tx();
    assert_eq!(r.peer_frames().len(), 1);
    assert_eq!(load(&r.tx_counters.frames), 1);
}

#[test]
fn rx_frame_lands_in_one_buffer_with_num_buffers_one() {
    let mut r = fake_rig(RxMode::default(), false, false, 0);
    let posted = r.post_rx(4, 1526 + 12);
    let frame = marker_frame(GUEST_MAC, 3, 1, 1000);
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = 2; // DATA_VALID: cleared, the guest did not negotiate GUEST_CSUM
    hdr[10] = 0x55; // garbage where num_buffers goes
    r.inject(hdr, &frame);
    r.worker.process_rx();
    assert_eq!(r.rx.used_idx(), 1);
    let (id, len) = r.rx.used_elem(0);
    assert_eq!(id, u32::from(posted[0].0));
    assert_eq!(len as usize, VNET_HDR_LEN + frame.len());
    let got = r.read(posted[0].1, len as usize);
    assert_eq!(got[0], 0, "flags cleared without GUEST_CSUM");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);
    assert_eq!(load(&r.rx_counters.frames), 1);
    assert_eq!(load(&r.rx_counters.bytes), frame.len() as u64);
    assert_eq!(r.irq.queue(0), 1);
    // The other three buffers wait in the reserve? Without MRG_RXBUF, at most one is taken.
    assert!(r.worker.rx_reserved() <= 1);
}

#[test]
fn rx_keeps_header_flags_with_guest_csum() {
    let mode = RxMode {
        mergeable: false,
        guest_csum: true,
    };
    let mut r = fake_rig(mode, false, false, 0);
    let posted = r.post_rx(1, 2048);
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = 2;
    r.inject(hdr, &marker_frame(GUEST_MAC, 0, 0, 100));
    r.worker.process_rx();
    assert_eq!(r.read(posted[0].1, 1)[0], 2);
}

#[test]
fn rx_too_large_for_the_buffer_is_dropped_and_the_buffer_returned() {
    let mut r = fake_rig(RxMode::default(), false, false, 0);
    let posted = r.post_rx(2, 200);
    r.inject([0; VNET_HDR_LEN], &marker_frame(GUEST_MAC, 0, 0, 1000));
    // Exactly the buffer's size fits.
    r.inject(
        [0; VNET_HDR_LEN],
        &marker_frame(GUEST_MAC, 0, 1, 200 - VNET_HDR_LEN),
    );
    r.worker.process_rx();
    assert_eq!(r.rx.used_idx(), 2);
    assert_eq!(r.rx.used_elem(0), (u32::from(posted[0].0), 0));
    assert_eq!(r.rx.used_elem(1), (u32::from(posted[1].0), 200));
    assert_eq!(load(&r.rx_counters.dropped), 1);
    assert_eq!(load(&r.rx_counters.frames), 1);
}

#[test]
fn rx_mergeable_spans_buffers_directly_and_through_the_bounce_buffer() {
    for (buffers, label) in [(80usize, "direct"), (40, "bounce")] {
        let mut r = fake_rig(MERGEABLE, false, false, 0);
        let posted = r.post_rx(buffers, 1024);
        let frame = marker_frame(GUEST_MAC, 5, 5, 3000);
        r.inject([0; VNET_HDR_LEN], &frame);
        r.inject([0; VNET_HDR_LEN], &marker_frame(GUEST_MAC, 5, 6, 64));
        r.worker.process_rx();
        assert_eq!(r.rx.used_idx(), 4, "{label}: 3 buffers + 1");
        let total = VNET_HDR_LEN + frame.len();
        let mut got = Vec::new();
        for slot in 0..3u16 {
            let (id, len) = r.rx.used_elem(slot);
            assert_eq!(
                id,
                u32::from(posted[usize::from(slot)].0),
                "{label}: in order"
            );
            got.extend(r.read(posted[usize::from(slot)].1, len as usize));
        }
        assert_eq!(got.len(), total, "{label}");
        assert_eq!(
            u16::from_le_bytes([got[10], got[11]]),
            3,
            "{label}: num_buffers"
        );
        assert_eq!(&got[VNET_HDR_LEN..], &frame[..], "{label}");
        let (_, len) = r.rx.used_elem(3);
        let second = r.read(posted[3].1, len as usize);
        assert_eq!(u16::from_le_bytes([second[10], second[11]]), 1);
        assert_eq!(marker_of(&second[VNET_HDR_LEN..]), Some((5, 6)), "{label}");
        assert_eq!(load(&r.rx_counters.frames), 2);
    }
}

#[test]
fn rx_mergeable_frame_waits_for_enough_buffers() {
    let mut r = fake_rig(MERGEABLE, false, false, 0);
    r.post_rx(2, 1024);
    let frame = marker_frame(GUEST_MAC, 7, 7, 5000);
    r.inject([0; VNET_HDR_LEN], &frame);
    r.worker.process_rx();
    assert_eq!(r.rx.used_idx(), 0, "2 KiB posted, 5 KiB needed: it waits");
    assert!(r.worker.rx_blocked());
    assert_eq!(load(&r.rx_counters.no_buffers), 1);
    r.post_rx(4, 1024);
    r.worker.process_rx();
    assert_eq!(r.rx.used_idx(), 5);
    assert_eq!(load(&r.rx_counters.dropped), 0, "nothing lost");
    assert_eq!(load(&r.rx_counters.frames), 1);
}

#[test]
fn hostile_rx_chains_are_returned_unused() {
    let mut r = fake_rig(RxMode::default(), false, false, 0);
    let at = r.alloc(4096);
    // A readable descriptor, a loop, a buffer outside memory, a buffer too small for a header.
    r.rx.write_desc(0, at, 2048, 0, 0);
    r.rx.write_desc(1, at, 2048, DESC_F_WRITE | DESC_F_NEXT, 2);
    r.rx.write_desc(2, at, 2048, DESC_F_WRITE | DESC_F_NEXT, 1);
    r.rx.write_desc(3, 0xff_0000_0000, 2048, DESC_F_WRITE, 0);
    r.rx.write_desc(4, at, 8, DESC_F_WRITE, 0);
    r.rx.write_desc(5, at, 2048, DESC_F_WRITE, 0);
    r.rx.publish(&[0, 1, 3, 4, 5]);
    r.inject([0; VNET_HDR_LEN], &marker_frame(GUEST_MAC, 1, 2, 100));
    r.worker.process_rx();
    assert_eq!(r.rx.used_idx(), 5);
    for slot in 0..4 {
        assert_eq!(r.rx.used_elem(slot).1, 0, "bad chain {slot} returned empty");
    }
    assert_eq!(r.rx.used_elem(4), (5, desc_len(VNET_HDR_LEN + 100)));
    assert_eq!(load(&r.rx_counters.errors), 4);
    assert_eq!(load(&r.rx_counters.frames), 1);
}

#[test]
fn rx_without_buffers_pauses_then_resumes() {
    let mut r = fake_rig(RxMode::default(), true, false, 0);
    for seq in 0..3 {
        r.inject([0; VNET_HDR_LEN], &marker_frame(GUEST_MAC, 0, seq, 80));
    }
    r.worker.process_rx();
    assert!(r.worker.rx_blocked(), "no buffers: waits for the guest");
    assert_eq!(load(&r.rx_counters.no_buffers), 1);
    assert_eq!(load(&r.rx_counters.dropped), 0);
    let posted = r.post_rx(8, 2048);
    r.worker.process_rx();
    assert_eq!(r.rx.used_idx(), 3, "all three frames kept and delivered");
    for seq in 0..3u8 {
        let got = r.read(posted[usize::from(seq)].1, 12 + 80);
        assert_eq!(marker_of(&got[VNET_HDR_LEN..]), Some((0, seq)));
    }
    assert!(!r.worker.rx_blocked());
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut r = fake_rig(RxMode::default(), true, false, 0);
    // The driver wants an interrupt once used passes index 3 (the 4th chain).
    r.tx.set_used_event(3);
    for i in 0..3 {
        r.send(&marker_frame([0xff; 6], 0, i, 60));
    }
    r.worker.process_tx();
    assert_eq!(r.irq.queue(1), 0, "used_event not reached");
    r.send(&marker_frame([0xff; 6], 0, 3, 60));
    r.worker.process_tx();
    assert_eq!(r.irq.queue(1), 1);
    assert_eq!(r.peer_frames().len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Control queue, on the stand-in tap.

impl FakeRig {
    /// Sends one control command; returns the ack byte (0xff: none written) and the used
    /// length.
    fn command(&mut self, class: u8, command: u8, data: &[u8]) -> (u8, u32) {
        let mut bytes = vec![class, command];
        bytes.extend_from_slice(data);
        let cmd_at = self.alloc(bytes.len());
        let ack_at = self.alloc(1);
        self.mem.write_slice(&bytes, GuestAddress(cmd_at)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(ack_at)).unwrap();
        let ring = self.ctrl.as_mut().unwrap();
        let head = ring.add_chain(&[(cmd_at, desc_len(bytes.len()), false), (ack_at, 1, true)]);
        ring.publish(&[head]);
        let before = ring.used_idx();
        self.worker.process_ctrl();
        let ring = self.ctrl.as_ref().unwrap();
        assert_eq!(ring.used_idx(), before.wrapping_add(1));
        let (_, len) = ring.used_elem(before);
        (self.mem.read_obj(GuestAddress(ack_at)).unwrap(), len)
    }
}

#[test]
fn control_commands_are_acked_or_refused() {
    let features = F_CTRL_VQ | F_CTRL_MAC_ADDR | F_CTRL_GUEST_OFFLOADS | F_GUEST_CSUM | F_MQ;
    let mut r = fake_rig(RxMode::default(), false, true, features);
    // One pair served here: 1 is fine, 0 and 2 are not.
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &1u16.to_le_bytes()),
        (cmd::OK, 1)
    );
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &0u16.to_le_bytes())
            .0,
        cmd::ERR
    );
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &2u16.to_le_bytes())
            .0,
        cmd::ERR
    );
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &[1]).0,
        cmd::ERR
    );
    // MAC: unicast accepted, multicast refused, table refused (no CTRL_RX).
    let new_mac = [0x02, 1, 2, 3, 4, 5];
    assert_eq!(
        r.command(cmd::CLASS_MAC, cmd::MAC_ADDR_SET, &new_mac).0,
        cmd::OK
    );
    assert_eq!(r.worker_config_mac(), MacAddr(new_mac));
    assert_eq!(
        r.command(cmd::CLASS_MAC, cmd::MAC_ADDR_SET, &[0x01, 0, 0x5e, 0, 0, 1])
            .0,
        cmd::ERR
    );
    assert_eq!(
        r.command(cmd::CLASS_MAC, cmd::MAC_TABLE_SET, &[0; 8]).0,
        cmd::ERR
    );
    // Offloads: a subset of the negotiated ones only.
    assert_eq!(
        r.command(
            cmd::CLASS_GUEST_OFFLOADS,
            cmd::GUEST_OFFLOADS_SET,
            &F_GUEST_CSUM.to_le_bytes()
        )
        .0,
        cmd::OK
    );
    assert_eq!(
        r.command(
            cmd::CLASS_GUEST_OFFLOADS,
            cmd::GUEST_OFFLOADS_SET,
            &F_GUEST_TSO4.to_le_bytes()
        )
        .0,
        cmd::ERR
    );
    // Receive modes, announce, VLAN, unknown classes.
    assert_eq!(r.command(cmd::CLASS_RX, 0, &[1]).0, cmd::ERR);
    assert_eq!(r.command(cmd::CLASS_ANNOUNCE, 0, &[]).0, cmd::ERR);
    assert_eq!(r.command(cmd::CLASS_VLAN, 0, &[0, 1]).0, cmd::ERR);
    assert_eq!(r.command(200, 7, &[]).0, cmd::ERR);
    assert_eq!(
        r.irq.queue(2),
        13,
        "no EVENT_IDX: an interrupt per batch of one"
    );
}

#[test]
fn control_commands_need_their_features() {
    let mut r = fake_rig(RxMode::default(), false, true, F_CTRL_VQ);
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &1u16.to_le_bytes())
            .0,
        cmd::ERR
    );
    assert_eq!(
        r.command(cmd::CLASS_MAC, cmd::MAC_ADDR_SET, &[2, 0, 0, 0, 0, 1])
            .0,
        cmd::ERR
    );
}

#[test]
fn malformed_control_chains() {
    let mut r = fake_rig(RxMode::default(), false, true, F_CTRL_VQ | F_MQ);
    let at = r.alloc(8192);
    let ring = r.ctrl.as_mut().unwrap();
    // No ack byte.
    r.mem.write_slice(&[4, 0, 1, 0], GuestAddress(at)).unwrap();
    ring.write_desc(0, at, 4, 0, 0);
    // Only one byte of command.
    ring.write_desc(1, at, 1, DESC_F_NEXT, 2);
    ring.write_desc(2, at + 100, 1, DESC_F_WRITE, 0);
    // Readable data after the ack.
    ring.write_desc(3, at + 200, 1, DESC_F_WRITE | DESC_F_NEXT, 4);
    ring.write_desc(4, at, 4, 0, 0);
    // A loop.
    ring.write_desc(5, at, 4, DESC_F_NEXT, 6);
    ring.write_desc(6, at + 300, 1, DESC_F_WRITE | DESC_F_NEXT, 5);
    // Longer than a command may be.
    ring.write_desc(7, at, 5000, DESC_F_NEXT, 8);
    ring.write_desc(8, at + 400, 1, DESC_F_WRITE, 0);
    ring.publish(&[0, 1, 3, 5, 7]);
    r.worker.process_ctrl();
    let ring = r.ctrl.as_ref().unwrap();
    assert_eq!(ring.used_idx(), 5);
    assert_eq!(ring.used_elem(0).1, 0, "no ack: nothing written");
    for (slot, ack) in [(1u16, 100u64), (2, 200), (3, 300), (4, 400)] {
        assert_eq!(ring.used_elem(slot).1, 1);
        assert_eq!(r.read(at + ack, 1)[0], cmd::ERR, "chain {slot}");
    }
}

impl FakeRig {
    fn worker_config_mac(&self) -> MacAddr {
        // The device's config space, as the control queue changed it.
        self.shared.config.lock().unwrap().mac()
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn config_strings_parse() {
    let c: NetConfig = "tap=tap0,queues=4,mac=02:aa:bb:cc:dd:ee".parse().unwrap();
    assert_eq!(c.tap, TapSource::Name("tap0".into()));
    assert_eq!(c.queue_pairs, 4);
    assert_eq!(c.mac, Some(MacAddr([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])));
    assert_eq!(c.queue_size, DEFAULT_QUEUE_SIZE);
    assert!(c.link_up);
    let c: NetConfig = "tap1".parse().unwrap();
    assert_eq!(c, NetConfig::new("tap1"));
    let c: NetConfig = "fd=7,queue_size=1024,mtu=9000,up=off".parse().unwrap();
    assert_eq!(c.tap, TapSource::Fd(7));
    assert_eq!((c.queue_size, c.mtu, c.link_up), (1024, Some(9000), false));
    for (bad, needle) in [
        ("queues=2", "without a tap"),
        ("tap=a,fd=3", "both"),
        ("tap=a,queues=x", "'x' is not a number"),
        ("tap=a,mac=02:00:00:00:00", "not a MAC"),
        ("tap=a,mac=zz:00:00:00:00:00", "not a MAC"),
        ("tap=a,colour=red", "unknown net option 'colour=red'"),
        ("tap=a,up=maybe", "not on/off"),
        ("", "without a tap"),
    ] {
        let err = bad.parse::<NetConfig>().unwrap_err().to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

#[test]
fn config_deserializes_from_string_or_table() {
    #[derive(serde::Deserialize)]
    struct File {
        net: Vec<NetConfig>,
    }
    let f: File = toml::from_str(
        r#"
        net = ["tap=tap0,queues=2", { tap = "tap1", queues = 4, mac = "02:00:00:00:00:01" }, { fd = 5 }]
        "#,
    )
    .unwrap();
    assert_eq!(f.net[0].queue_pairs, 2);
    assert_eq!(f.net[1].tap, TapSource::Name("tap1".into()));
    assert_eq!(f.net[1].mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
    assert_eq!(f.net[2].tap, TapSource::Fd(5));
    let err = toml::from_str::<File>(r#"net = [{ tap = "t", queus = 2 }]"#)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("queus"), "{err}");
    let err = toml::from_str::<File>(r#"net = [{ tap = "t", mac = "nope" }]"#)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a MAC"), "{err}");
}

#[test]
fn mac_addresses() {
    let m: MacAddr = "02-AA-bb-cc-dd-0e".parse().unwrap();
    assert_eq!(m.to_string(), "02:aa:bb:cc:dd:0e");
    for _ in 0..16 {
        let r = MacAddr::random();
        assert!(!r.is_multicast());
        assert_eq!(r.0[0] & 2, 2, "locally administered");
    }
}

#[test]
fn tap_names_are_checked() {
    for (name, needle) in [
        ("", "empty"),
        ("sixteen-chars-xx", "longer than 15"),
        ("a/b", "contains"),
        ("a b", "contains"),
        ("eth0:1", "contains"),
        ("..", "reserved"),
        ("tap%s", "'%'"),
        ("t%d%d", "'%'"),
    ] {
        let err = tap::validate_name(name).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "{name}: {text}");
        assert!(text.contains(&format!("'{name}'")), "names the tap: {text}");
    }
    for ok in ["tap0", "fifteen-chars-x", "pulse%d", "a.b-c_d"] {
        tap::validate_name(ok).unwrap();
    }
    // The device refuses them before touching /dev/net/tun.
    let err = Net::new(NetConfig::new("much-too-long-name"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("much-too-long-name"), "{err}");
}

#[test]
fn bad_device_configurations_are_refused() {
    let mut c = NetConfig::new("x");
    c.queue_pairs = 0;
    assert!(matches!(
        Net::new(c.clone()),
        Err(NetError::QueuePairs { .. })
    ));
    c.queue_pairs = MAX_QUEUE_PAIRS + 1;
    assert!(matches!(
        Net::new(c.clone()),
        Err(NetError::QueuePairs { .. })
    ));
    c.queue_pairs = 1;
    c.queue_size = 100;
    assert!(matches!(
        Net::new(c.clone()),
        Err(NetError::QueueSize { .. })
    ));
    c.queue_size = 256;
    c.mac = Some(MacAddr([1, 0, 0x5e, 0, 0, 1]));
    assert!(matches!(
        Net::new(c.clone()),
        Err(NetError::MulticastMac { .. })
    ));
    c.mac = None;
    c.mtu = Some(10);
    assert!(matches!(Net::new(c.clone()), Err(NetError::Mtu { .. })));
    let mut c = NetConfig::new("x");
    c.tap = TapSource::Fd(0);
    c.queue_pairs = 2;
    assert!(matches!(Net::new(c), Err(NetError::FdQueuePairs { .. })));
}

#[test]
fn tun_offload_flags_follow_dependencies() {
    assert_eq!(tun_offload(F_GUEST_TSO4), 0, "TSO without checksum offload");
    assert_eq!(tun_offload(F_GUEST_CSUM), libc::TUN_F_CSUM);
    assert_eq!(
        tun_offload(F_GUEST_CSUM | F_GUEST_ECN),
        libc::TUN_F_CSUM,
        "ECN needs TSO"
    );
    assert_eq!(
        tun_offload(GUEST_OFFLOAD_MASK),
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_UFO
    );
}

const _: () = assert!(MAX_CHAIN_LEN == VNET_HDR_LEN + MAX_FRAME_LEN);
const _: () = assert!(MAX_FRAME_LEN >= 65536 + 14);

// ---------------------------------------------------------------------------------------------
// Real taps.

static TAP_SEQ: AtomicU32 = AtomicU32::new(0);

fn tap_name() -> String {
    let n = TAP_SEQ.fetch_add(1, Ordering::SeqCst);
    format!("ptst{}{}", std::process::id() % 1_000_000, n)
}

/// Whether this process can create taps (root and /dev/net/tun); tests that need one skip
/// otherwise.
fn tun_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .is_ok();
    if !ok {
        eprintln!("skipped: needs root and /dev/net/tun");
    }
    ok
}

fn tun_fd(name: &str, flags: libc::c_int) -> OwnedFd {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let fd = OwnedFd::from(f);
    let mut ifr = tap::ifreq_for(name);
    ifr.ifr_ifru.ifru_flags = libc::c_short::try_from(flags).unwrap();
    tap::ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr).unwrap();
    fd
}

fn set_persist(fd: &OwnedFd, on: bool) {
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) };
    assert_eq!(r, 0, "TUNSETPERSIST: {}", std::io::Error::last_os_error());
}

/// A persistent tap made by the test (as `ip tuntap add` would), removed on drop.
struct PersistentTap {
    name: String,
    flags: libc::c_int,
}

impl PersistentTap {
    fn new(flags: libc::c_int) -> Self {
        let name = tap_name();
        let fd = tun_fd(&name, flags);
        set_persist(&fd, true);
        Self { name, flags }
    }
}

impl Drop for PersistentTap {
    fn drop(&mut self) {
        let fd = tun_fd(&self.name, self.flags);
        set_persist(&fd, false);
    }
}

const MQ_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

#[test]
fn created_taps_are_removed_on_drop() {
    if !tun_usable() {
        return;
    }
    let name = tap_name();
    let mut cfg = NetConfig::new(&name);
    cfg.queue_pairs = 3;
    let net = Net::new(cfg).unwrap();
    assert_eq!(net.tap_origin(), TapOrigin::Created);
    assert_eq!(net.tap_name(), name);
    assert!(tap::if_index(&name).is_some());
    assert_eq!(net.tap.queue_count(), 3);
    assert_eq!(net.tap.active_queues(), 1, "only pair 0 attached at first");
    drop(net);
    assert!(tap::if_index(&name).is_none(), "created tap removed");
}

#[test]
fn template_names_become_the_kernels_choice() {
    if !tun_usable() {
        return;
    }
    let mut cfg = NetConfig::new("ptstt%d");
    cfg.queue_pairs = 2;
    let net = Net::new(cfg).unwrap();
    let name = net.tap_name().to_string();
    assert!(name.starts_with("ptstt") && !name.contains('%'), "{name}");
    assert!(tap::if_index(&name).is_some());
    drop(net);
    assert!(tap::if_index(&name).is_none());
}

#[test]
fn persistent_taps_are_kept() {
    if !tun_usable() {
        return;
    }
    let existing = PersistentTap::new(MQ_FLAGS);
    let mut cfg = NetConfig::new(&existing.name);
    cfg.queue_pairs = 2;
    let net = Net::new(cfg).unwrap();
    assert_eq!(net.tap_origin(), TapOrigin::Existing);
    drop(net);
    assert!(
        tap::if_index(&existing.name).is_some(),
        "a tap Pulse did not create stays"
    );
    let name = existing.name.clone();
    drop(existing);
    assert!(tap::if_index(&name).is_none());
}

#[test]
fn an_existing_single_queue_tap_gives_a_clear_error() {
    if !tun_usable() {
        return;
    }
    let existing = PersistentTap::new(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    let err = Net::new(NetConfig::new(&existing.name)).err().unwrap();
    let text = err.to_string();
    assert!(text.contains(&existing.name), "{text}");
    assert!(text.contains("multi_queue"), "{text}");
    assert!(matches!(err, NetError::Tap(TapError::Attach { .. })));
}

#[test]
fn inherited_descriptors() {
    if !tun_usable() {
        return;
    }
    let name = tap_name();
    let fd = tun_fd(&name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    let mut cfg = NetConfig::new("unused");
    cfg.tap = TapSource::Fd(fd.as_raw_fd());
    let net = Net::new(cfg.clone()).unwrap();
    assert_eq!(net.tap_name(), name);
    assert_eq!(net.tap_origin(), TapOrigin::Inherited);
    drop(net);
    assert!(
        tap::if_index(&name).is_some(),
        "the caller's descriptor keeps it"
    );
    drop(fd);
    assert!(tap::if_index(&name).is_none());

    // Not a tap; a tap without a vnet header; a closed descriptor.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    cfg.tap = TapSource::Fd(devnull.as_raw_fd());
    let err = Net::new(cfg.clone()).err().unwrap().to_string();
    assert!(err.contains("not an attached tun/tap"), "{err}");
    let plain = tun_fd(&tap_name(), libc::IFF_TAP | libc::IFF_NO_PI);
    cfg.tap = TapSource::Fd(plain.as_raw_fd());
    let err = Net::new(cfg.clone()).err().unwrap().to_string();
    assert!(err.contains("IFF_VNET_HDR"), "{err}");
    cfg.tap = TapSource::Fd(100_000);
    let err = Net::new(cfg).err().unwrap().to_string();
    assert!(err.contains("tap fd 100000"), "{err}");
}

#[test]
fn inherited_queue_descriptors_of_a_multi_queue_tap() {
    if !tun_usable() {
        return;
    }
    let mq = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
    let name = tap_name();
    let fds = [tun_fd(&name, mq), tun_fd(&name, mq)];
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cfg = NetConfig::new("unused");
    cfg.tap = TapSource::Fds(raw.clone());
    cfg.queue_pairs = 2;
    // The MTU is only offered: the tap is the embedder's (here left at its 1500).
    cfg.mtu = Some(1400);
    let net = Net::new(cfg.clone()).unwrap();
    assert_eq!(net.tap_name(), name);
    assert_eq!(net.tap_origin(), TapOrigin::Inherited);
    assert_eq!(net.tap.queue_count(), 2);
    assert_eq!(net.tap.mtu().unwrap(), 1500);
    drop(net);
    assert!(
        tap::if_index(&name).is_some(),
        "the caller's descriptors keep it"
    );

    // One descriptor per pair; all of one tap; multi-queue when more than one.
    cfg.queue_pairs = 1;
    let err = Net::new(cfg.clone()).err().unwrap();
    assert!(
        matches!(err, NetError::FdsQueuePairs { fds: 2, pairs: 1 }),
        "{err}"
    );
    let other = tun_fd(&tap_name(), mq);
    cfg.tap = TapSource::Fds(vec![raw[0], other.as_raw_fd()]);
    cfg.queue_pairs = 2;
    let err = Net::new(cfg.clone()).err().unwrap().to_string();
    assert!(
        err.contains(&format!("where fd {} is one of {name}", raw[0])),
        "{err}"
    );
    let single = tun_fd(
        &tap_name(),
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    );
    let single2 = tun_fd(
        &tap_name(),
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    );
    cfg.tap = TapSource::Fds(vec![single.as_raw_fd(), single2.as_raw_fd()]);
    let err = Net::new(cfg).err().unwrap().to_string();
    assert!(err.contains("IFF_MULTI_QUEUE"), "{err}");
    drop(fds);
    assert!(tap::if_index(&name).is_none());
}

/// A device on a real tap, activated on driver rings.
struct TapRig {
    mem: GuestMemoryMmap,
    net: Net,
    rings: HashMap<u16, DriverRing>,
    bells: HashMap<u16, EventFd>,
    irq: Arc<CountingInterrupt>,
    /// Guest address of each posted rx buffer, by (queue, head).
    bufs: HashMap<(u16, u16), u64>,
    next_buf: HashMap<u16, u64>,
    seen: HashMap<u16, u16>,
    ctrl_q: u16,
}

fn tap_rig(pairs: u16, negotiated: u64) -> TapRig {
    let name = tap_name();
    let mut cfg = NetConfig::new(&name);
    cfg.queue_pairs = pairs;
    cfg.mac = Some(MacAddr(GUEST_MAC));
    cfg.link_up = false;
    let mut net = Net::new(cfg).unwrap();
    // Keep IPv6 autoconfiguration chatter off the test tap, then bring it up.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    net.tap.set_link_up().unwrap();
    let mem = create_guest_memory(MEM_MIB).unwrap();
    let negotiated = negotiated | vf::VERSION_1;
    assert_eq!(negotiated & !net.features(), 0, "only offered features");
    let used_pairs = if negotiated & F_MQ != 0 { pairs } else { 1 };
    let ctrl_q = if negotiated & F_MQ != 0 { 2 * pairs } else { 2 };
    let mut indexes: Vec<u16> = (0..2 * used_pairs).collect();
    if negotiated & F_CTRL_VQ != 0 {
        indexes.push(ctrl_q);
    }
    let mut rings = HashMap::new();
    let mut bells = HashMap::new();
    let mut active = Vec::new();
    for q in indexes {
        let ring = DriverRing::new(&mem, GuestAddress(ring_base(q)), QSIZE);
        let mut queue = ring.queue();
        virtio_queue::QueueT::set_event_idx(&mut queue, negotiated & vf::RING_EVENT_IDX != 0);
        let bell = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        active.push(ActiveQueue {
            index: q,
            queue,
            notifier: bell.try_clone().unwrap(),
        });
        rings.insert(q, ring);
        bells.insert(q, bell);
    }
    let irq = Arc::new(CountingInterrupt::default());
    net.activate(Activation::new(
        mem.clone(),
        negotiated,
        active,
        irq.clone(),
    ))
    .unwrap();
    TapRig {
        mem,
        net,
        rings,
        bells,
        irq,
        bufs: HashMap::new(),
        next_buf: HashMap::new(),
        seen: HashMap::new(),
        ctrl_q,
    }
}

impl TapRig {
    fn alloc(&mut self, q: u16, len: usize) -> u64 {
        let next = self.next_buf.entry(q).or_insert_with(|| buf_base(q));
        let at = *next;
        *next += (len as u64 + 63) & !63;
        assert!(*next < buf_base(q + 1), "test buffer space");
        at
    }

    fn kick(&self, q: u16) {
        self.bells[&q].write(1).unwrap();
    }

    fn wait_used(&self, q: u16, n: u16) -> bool {
        wait_until(WAIT, || self.rings[&q].used_idx() >= n)
    }

    fn send(&mut self, pair: u16, frames: &[Vec<u8>]) {
        let q = 2 * pair + 1;
        let mut heads = Vec::new();
        for f in frames {
            let at = self.alloc(q, VNET_HDR_LEN + f.len());
            self.mem
                .write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(at))
                .unwrap();
            self.mem
                .write_slice(f, GuestAddress(at + VNET_HDR_LEN as u64))
                .unwrap();
            let ring = self.rings.get_mut(&q).unwrap();
            heads.push(ring.add_chain(&[(at, desc_len(VNET_HDR_LEN + f.len()), false)]));
        }
        let ring = self.rings.get_mut(&q).unwrap();
        let target = ring
            .avail_idx()
            .wrapping_add(u16::try_from(heads.len()).unwrap());
        ring.publish(&heads);
        self.kick(q);
        assert!(self.wait_used(q, target), "tx queue {q} stalled");
    }

    fn post_rx(&mut self, pair: u16, count: usize, len: u32) {
        let q = 2 * pair;
        let mut heads = Vec::new();
        for _ in 0..count {
            let at = self.alloc(q, len as usize);
            let head = self
                .rings
                .get_mut(&q)
                .unwrap()
                .add_chain(&[(at, len, true)]);
            self.bufs.insert((q, head), at);
            heads.push(head);
        }
        self.rings.get_mut(&q).unwrap().publish(&heads);
        self.kick(q);
    }

    /// Frames the guest received on `pair` since the last call (one buffer per frame).
    fn received(&mut self, pair: u16) -> Vec<Vec<u8>> {
        let q = 2 * pair;
        let ring = &self.rings[&q];
        let seen = self.seen.entry(q).or_insert(0);
        let mut out = Vec::new();
        while *seen != ring.used_idx() {
            let (id, len) = ring.used_elem(*seen);
            let at = self.bufs[&(q, u16::try_from(id).unwrap())];
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
            if buf.len() >= VNET_HDR_LEN {
                out.push(buf[VNET_HDR_LEN..].to_vec());
            }
            *seen = seen.wrapping_add(1);
        }
        out
    }

    fn command(&mut self, class: u8, command: u8, data: &[u8]) -> u8 {
        let q = self.ctrl_q;
        let mut bytes = vec![class, command];
        bytes.extend_from_slice(data);
        let at = self.alloc(q, bytes.len());
        let ack = self.alloc(q, 1);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(ack)).unwrap();
        let ring = self.rings.get_mut(&q).unwrap();
        let head = ring.add_chain(&[(at, desc_len(bytes.len()), false), (ack, 1, true)]);
        let target = ring.avail_idx().wrapping_add(1);
        ring.publish(&[head]);
        self.kick(q);
        assert!(self.wait_used(q, target), "control queue stalled");
        self.mem.read_obj(GuestAddress(ack)).unwrap()
    }

    fn set_pairs(&mut self, pairs: u16) {
        assert_eq!(
            self.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &pairs.to_le_bytes()),
            cmd::OK
        );
        assert_eq!(self.net.active_queue_pairs(), pairs);
        assert_eq!(self.net.tap.active_queues(), usize::from(pairs));
    }
}

#[test]
fn frames_sent_on_every_tx_queue_arrive_on_the_tap() {
    if !tun_usable() {
        return;
    }
    let mut r = tap_rig(4, F_MQ | F_CTRL_VQ | vf::RING_EVENT_IDX);
    r.set_pairs(4);
    let sock = PacketSocket::bind(r.net.tap_name());
    for pair in 0..4u16 {
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|seq| {
                marker_frame(
                    [0xff; 6],
                    u8::try_from(pair).unwrap(),
                    seq,
                    60 + 500 * usize::from(seq),
                )
            })
            .collect();
        r.send(pair, &frames);
    }
    let got = sock.collect(WAIT, |f| {
        f.iter().filter(|f| marker_of(f).is_some()).count() >= 12
    });
    let mut markers: Vec<(u8, u8)> = got.iter().filter_map(|f| marker_of(f)).collect();
    markers.sort();
    let want: Vec<(u8, u8)> = (0..4).flat_map(|p| (0..3).map(move |s| (p, s))).collect();
    assert_eq!(markers, want);
    for pair in 0..4u16 {
        let c = &r.net.counters()[usize::from(2 * pair + 1)];
        assert_eq!(load(&c.frames), 3, "tx{pair}");
        assert_eq!(load(&c.errors) + load(&c.dropped), 0);
        assert_eq!(load(&c.interrupts), r.irq.queue(2 * pair + 1));
        assert!(load(&c.interrupts) >= 1);
    }
    assert_eq!(r.net.completed_requests().len(), 9);
}

#[test]
fn frames_from_the_tap_reach_rx_queue_zero_until_pairs_are_set() {
    if !tun_usable() {
        return;
    }
    let mut r = tap_rig(2, F_MQ | F_CTRL_VQ);
    assert_eq!(r.net.active_queue_pairs(), 1);
    assert_eq!(r.net.tap.active_queues(), 1);
    for pair in 0..2 {
        r.post_rx(pair, 64, 2048);
    }
    let sock = PacketSocket::bind(r.net.tap_name());
    for port in 0..16u16 {
        sock.send(&udp_frame(GUEST_MAC, HOST_MAC, 5000 + port, 0));
    }
    let mut got = Vec::new();
    assert!(wait_until(WAIT, || {
        got.extend(r.received(0));
        got.iter().filter(|f| udp_marker_of(f).is_some()).count() == 16
    }));
    assert!(r.received(1).is_empty(), "pair 1 not in use");
    let rx0 = &r.net.counters()[0];
    assert!(load(&rx0.frames) >= 16);
    assert!(load(&rx0.interrupts) >= 1);
}

#[test]
fn each_rx_queue_gets_the_flows_its_tx_queue_sent() {
    if !tun_usable() {
        return;
    }
    let pairs = 4u16;
    let mut r = tap_rig(pairs, F_MQ | F_CTRL_VQ | F_MRG_RXBUF | vf::RING_EVENT_IDX);
    r.set_pairs(pairs);
    for pair in 0..pairs {
        r.post_rx(pair, 128, 1536);
    }
    let sock = PacketSocket::bind(r.net.tap_name());
    // The tap steers a flow to the queue that last sent it: each pair sends its flow first.
    for pair in 0..pairs {
        r.send(pair, &[udp_frame(HOST_MAC, GUEST_MAC, 6000 + pair, 0)]);
    }
    for seq in 1..=5 {
        for pair in 0..pairs {
            sock.send(&udp_frame(GUEST_MAC, HOST_MAC, 6000 + pair, seq));
        }
    }
    let mut by_pair: Vec<Vec<(u16, u8)>> = vec![Vec::new(); usize::from(pairs)];
    assert!(
        wait_until(WAIT, || {
            for pair in 0..pairs {
                let frames = r.received(pair);
                by_pair[usize::from(pair)].extend(frames.iter().filter_map(|f| udp_marker_of(f)));
            }
            by_pair.iter().map(Vec::len).sum::<usize>() == 20
        }),
        "{by_pair:?}"
    );
    for (pair, got) in (0u16..).zip(&by_pair) {
        let want: Vec<(u16, u8)> = (1..=5).map(|s| (6000 + pair, s)).collect();
        assert_eq!(got, &want, "rx{pair}");
    }
}

#[test]
fn rx_pauses_without_buffers_and_loses_nothing() {
    if !tun_usable() {
        return;
    }
    let mut r = tap_rig(1, F_CTRL_VQ | vf::RING_EVENT_IDX);
    let sock = PacketSocket::bind(r.net.tap_name());
    for seq in 0..20 {
        sock.send(&marker_frame(GUEST_MAC, 1, seq, 200));
    }
    std::thread::sleep(Duration::from_millis(200));
    let rx0 = r.net.counters()[0].clone();
    let stalls = load(&rx0.no_buffers);
    assert!(
        (1..=3).contains(&stalls),
        "paused once, not spinning: {stalls}"
    );
    assert_eq!(load(&rx0.frames), 0);
    r.post_rx(0, 32, 2048);
    let mut got = Vec::new();
    assert!(wait_until(WAIT, || {
        got.extend(r.received(0).iter().filter_map(|f| marker_of(f)));
        got.len() == 20
    }));
    assert_eq!(got, (0..20).map(|s| (1, s)).collect::<Vec<_>>());
    assert_eq!(load(&rx0.dropped), 0);
}

#[test]
fn control_queue_changes_the_active_pairs() {
    if !tun_usable() {
        return;
    }
    let mut r = tap_rig(4, F_MQ | F_CTRL_VQ | F_CTRL_MAC_ADDR);
    r.set_pairs(3);
    r.set_pairs(4);
    r.set_pairs(1);
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &5u16.to_le_bytes()),
        cmd::ERR
    );
    assert_eq!(r.net.active_queue_pairs(), 1);
    assert_eq!(
        r.command(cmd::CLASS_MAC, cmd::MAC_ADDR_SET, &[2, 9, 9, 9, 9, 9]),
        cmd::OK
    );
    assert_eq!(r.net.mac(), MacAddr([2, 9, 9, 9, 9, 9]));
    let mut m = [0u8; 6];
    r.net.read_config(0, &mut m);
    assert_eq!(m, [2, 9, 9, 9, 9, 9]);
    let ctrl = r.net.counters().last().unwrap().clone();
    assert_eq!(load(&ctrl.frames), 4);
    assert_eq!(load(&ctrl.errors), 1);
    // A reset restores one pair and the original MAC.
    r.net.reset();
    assert_eq!(r.net.mac(), MacAddr(GUEST_MAC));
    assert_eq!(r.net.tap.active_queues(), 1);
    assert_eq!(r.net.active_queue_pairs(), 0);
}

#[test]
fn control_queue_without_mq_sits_at_index_two() {
    if !tun_usable() {
        return;
    }
    let mut r = tap_rig(4, F_CTRL_VQ | F_CTRL_MAC_ADDR);
    assert_eq!(r.ctrl_q, 2);
    assert_eq!(
        r.command(cmd::CLASS_MAC, cmd::MAC_ADDR_SET, &[2, 1, 1, 1, 1, 1]),
        cmd::OK
    );
    assert_eq!(
        r.command(cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET, &2u16.to_le_bytes()),
        cmd::ERR,
        "MQ not negotiated"
    );
}

#[test]
fn offloads_are_set_on_the_tap() {
    if !tun_usable() {
        return;
    }
    // A driver that takes every offload the device offers, and the means to switch them.
    let all = OFFLOADS | F_MRG_RXBUF | F_CTRL_VQ | F_CTRL_GUEST_OFFLOADS;
    let mut r = tap_rig(1, all);
    // The kernel accepted every combination the guest may switch to.
    for offloads in [
        0,
        F_GUEST_CSUM,
        F_GUEST_CSUM | F_GUEST_TSO4,
        GUEST_OFFLOAD_MASK,
    ] {
        assert_eq!(
            r.command(
                cmd::CLASS_GUEST_OFFLOADS,
                cmd::GUEST_OFFLOADS_SET,
                &offloads.to_le_bytes()
            ),
            cmd::OK,
            "{offloads:#x}"
        );
    }
    // A TSO frame from the guest: the kernel takes it.
    let sock = PacketSocket::bind(r.net.tap_name());
    let mut frame = udp_frame([0xff; 6], GUEST_MAC, 7000, 1);
    frame.resize(1400, 0);
    r.send(0, &[frame]);
    let got = sock.collect(WAIT, |f| f.iter().any(|f| udp_marker_of(f).is_some()));
    assert!(got.iter().any(|f| udp_marker_of(f) == Some((7000, 1))));
}

#[test]
fn config_space_features_and_queues() {
    if !tun_usable() {
        return;
    }
    let name = tap_name();
    let mut cfg = NetConfig::new(&name);
    cfg.queue_pairs = 4;
    cfg.mac = Some(MacAddr(GUEST_MAC));
    cfg.mtu = Some(1400);
    cfg.queue_size = 512;
    let net = Net::new(cfg).unwrap();
    let mut c = [0u8; CONFIG_LEN];
    net.read_config(0, &mut c);
    assert_eq!(&c[0..6], &GUEST_MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), STATUS_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 4);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
    let mut two = [0u8; 2];
    net.read_config(8, &mut two);
    assert_eq!(u16::from_le_bytes(two), 4, "partial reads");
    assert_eq!(net.tap.mtu().unwrap(), 1400, "MTU set on the tap");
    let f = net.features();
    for bit in [
        vf::VERSION_1,
        vf::RING_EVENT_IDX,
        F_MQ,
        F_CTRL_VQ,
        F_MAC,
        F_MTU,
        F_STATUS,
        F_MRG_RXBUF,
        F_CSUM,
        F_GUEST_CSUM,
        F_HOST_TSO4,
        F_GUEST_TSO6,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x} offered");
    }
    for bit in [vf::RING_RESET, vf::NOTIF_CONFIG_DATA, F_CTRL_RX] {
        assert_eq!(f & bit, 0, "{bit:#x} not offered");
    }
    let sizes = net.queue_max_sizes();
    assert_eq!(sizes.len(), 9);
    assert_eq!(&sizes[..8], &[512; 8]);
    assert_eq!(sizes[8], CTRL_QUEUE_SIZE);
    assert_eq!(net.queue_name(0), "input.0");
    assert_eq!(net.queue_name(7), "output.3");
    assert_eq!(net.queue_name(8), "control");
    assert_eq!(net.device_type(), 1);
    // One pair: no MQ, no MTU.
    let single = Net::new(NetConfig::new(&tap_name())).unwrap();
    assert_eq!(single.features() & (F_MQ | F_MTU), 0);
    assert_eq!(single.queue_max_sizes().len(), 3);
}

#[test]
fn activation_needs_pair_zero_and_survives_resets() {
    if !tun_usable() {
        return;
    }
    let mem = create_guest_memory(MEM_MIB).unwrap();
    let mut net = Net::new(NetConfig::new(&tap_name())).unwrap();
    let irq: Arc<dyn Interrupt> = Arc::new(CountingInterrupt::default());
    let err = net
        .activate(Activation::new(
            mem.clone(),
            vf::VERSION_1,
            Vec::new(),
            irq.clone(),
        ))
        .err()
        .unwrap();
    assert!(matches!(
        err,
        crate::devices::virtio::ActivateError::QueueNotReady(0)
    ));
    for round in 0..3 {
        let queues: Vec<ActiveQueue> = (0..2)
            .map(|q| ActiveQueue {
                index: q,
                queue: DriverRing::new(&mem, GuestAddress(ring_base(q)), QSIZE).queue(),
                notifier: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        net.activate(Activation::new(
            mem.clone(),
            vf::VERSION_1,
            queues,
            irq.clone(),
        ))
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(net.active_queue_pairs(), 1);
        net.reset();
    }
}

#[test]
fn an_avail_index_past_the_transmit_ring_breaks_the_queue_and_the_worker_still_stops() {
    let r = fake_rig(RxMode::default(), true, false, 0);
    let FakeRig {
        worker,
        bells,
        mem,
        irq,
        shared,
        ..
    } = r;
    // The transmit ring's avail idx: after QSIZE descriptors of 16 bytes, plus 2.
    let avail_idx = GuestAddress(ring_base(1) + 16 * u64::from(QSIZE) + 2);
    mem.write_obj(QSIZE + 5, avail_idx).unwrap();
    let thread = std::thread::spawn(move || worker.run());
    bells[1].write(1).unwrap();
    assert!(wait_until(WAIT, || irq.needs_reset_requests() == 1));
    bells[1].write(1).unwrap();
    bells[2].write(1).unwrap();
    crate::devices::driver_ring::join_within(thread, Duration::from_secs(30))
        .expect("the worker stops");
    assert_eq!(irq.needs_reset_requests(), 1);
    assert_eq!(
        shared
            .faults
            .count(crate::devices::worker::GuestFault::AvailIndexTooFar),
        1
    );
}
