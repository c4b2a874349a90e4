//! The vsock device against the fake guest driver ([`super::driver`]: rings in guest memory,
//! played from the host) and real unix sockets on the host side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::driver::{rx_buf, VsockRig, RX_BUF};
use super::packet::{op, Header, HEADER_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::{Vsock, VsockConfig};
use crate::devices::driver_ring::{
    assert_broken_once, assert_resets, desc_len, wait_until, DESC_F_NEXT,
};
use crate::devices::virtio::{features, VirtioDevice};

const CID: u64 = 42;
const QSIZE: u16 = 64;

fn rig() -> VsockRig {
    rig_with(features::VERSION_1, QSIZE)
}

/// A rig whose driver negotiated `negotiated` and posted `rx_buffers` receive buffers.
fn rig_with(negotiated: u64, rx_buffers: u16) -> VsockRig {
    VsockRig::new(CID, 32, QSIZE, negotiated, rx_buffers)
}

fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// The guest connects from its port `src` to host port `dst`, where `listener` accepts, and
/// sends "ping"; returns the host's end of the connection, the ping read.
fn guest_connects(r: &mut VsockRig, listener: &UnixListener, src: u32, dst: u32) -> UnixStream {
    r.guest.send(r.guest.header(src, dst, op::REQUEST), b"");
    let (resp, _) = r.guest.recv_op();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (op::RESPONSE, dst, src)
    );
    let (mut s, _) = listener.accept().unwrap();
    r.guest.send(r.guest.header(src, dst, op::RW), b"ping");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s
}

/// A host process connects to guest port `port`: its stream and the REQUEST the guest got.
fn host_request(r: &mut VsockRig, port: u32) -> (UnixStream, Header) {
    let mut s = UnixStream::connect(&r.path).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let (req, _) = r.guest.recv_op();
    (s, req)
}

/// Host connects to guest port `port` and the guest accepts.
fn host_connect(r: &mut VsockRig, port: u32) -> (UnixStream, u32) {
    let (mut s, req) = host_request(r, port);
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid, req.src_cid),
        (op::REQUEST, port, CID, HOST_CID)
    );
    let local = req.src_port;
    assert!(local >= 1 << 30);
    r.guest.send(r.guest.header(port, local, op::RESPONSE), b"");
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    (s, local)
}

#[test]
fn refuses_before_the_driver_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let dev = Vsock::new(VsockConfig {
        guest_cid: CID,
        uds_path: path.clone(),
    })
    .unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    assert_eq!(read_line(&mut s), "ERR guest vsock driver not ready");
    drop(dev);
    assert!(!path.exists(), "the socket file is removed with the device");
}

#[test]
fn host_initiated_stream_both_ways() {
    let mut r = rig();
    let (mut s, local) = host_connect(&mut r, 1024);
    s.write_all(b"hello").unwrap();
    let (h, data) = r.guest.recv_op();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"hello"[..]));
    assert_eq!((h.src_port, h.dst_port), (local, 1024));
    r.guest.send(r.guest.header(1024, local, op::RW), b"world");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");
    // The guest resets: the host sees end of file.
    r.guest.send(r.guest.header(1024, local, op::RST), b"");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn guest_refusal_and_bad_lines_are_reported() {
    let mut r = rig();
    let (mut s, req) = host_request(&mut r, 7);
    r.guest.send(r.guest.header(7, req.src_port, op::RST), b"");
    assert_eq!(read_line(&mut s), "ERR connection refused by guest port 7");
    for (line, want) in [
        (
            &b"HELLO\n"[..],
            "ERR malformed request, expected 'CONNECT <port>'",
        ),
        (&[b'X'; 64][..], "ERR request line too long"),
        (
            &b"CONNECT -1\n"[..],
            "ERR malformed request, expected 'CONNECT <port>'",
        ),
    ] {
        let mut s = UnixStream::connect(&r.path).unwrap();
        s.write_all(line).unwrap();
        assert_eq!(read_line(&mut s), want);
    }
    // The device still works.
    host_connect(&mut r, 1024);
}

#[test]
fn guest_initiated_connections_reach_the_forward_socket() {
    let mut r = rig();
    let listener = UnixListener::bind(format!("{}_52", r.path.display())).unwrap();
    let mut s = guest_connects(&mut r, &listener, 5000, 52);
    s.write_all(b"pong").unwrap();
    let (h, data) = r.guest.recv_op();
    assert_eq!((h.op, data.as_slice()), (op::RW, &b"pong"[..]));
    // Host side closes: the guest is told, and a guest SHUTDOWN then finishes the connection.
    drop(s);
    let (h, _) = r.guest.recv_op();
    assert_eq!(
        (h.op, h.flags & SHUTDOWN_SEND),
        (op::SHUTDOWN, SHUTDOWN_SEND)
    );
    let mut sd = r.guest.header(5000, 52, op::SHUTDOWN);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    r.guest.send(sd, b"");
    let (h, _) = r.guest.recv_op();
    assert_eq!(h.op, op::RST);
    // Nobody listens on port 53.
    r.guest.send(r.guest.header(5001, 53, op::REQUEST), b"");
    let (h, _) = r.guest.recv_op();
    assert_eq!((h.op, h.dst_port), (op::RST, 5001));
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut r = rig();
    let (mut s, req) = host_request(&mut r, 9);
    let local = req.src_port;
    let mut resp = r.guest.header(9, local, op::RESPONSE);
    resp.buf_alloc = 100;
    r.guest.send(resp, b"");
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    s.write_all(&[7u8; 1000]).unwrap();
    let mut received = 0;
    while received < 100 {
        let (h, data) = r.guest.recv_op();
        assert_eq!(h.op, op::RW);
        received += data.len();
    }
    assert_eq!(received, 100, "never more than the credit");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        r.guest.rx.used_idx(),
        r.guest.rx_seen,
        "nothing more without credit"
    );
    // The guest consumed it all: 100 more may come.
    let mut up = r.guest.header(9, local, op::CREDIT_UPDATE);
    up.buf_alloc = 100;
    up.fwd_cnt = 100;
    r.guest.send(up, b"");
    let (h, data) = r.guest.recv_op();
    assert_eq!((h.op, data.len() <= 100), (op::RW, true));
}

#[test]
fn hostile_packets_do_not_hurt() {
    let mut r = rig();
    // Wrong source CID: dropped.
    let mut bad = r.guest.header(1, 2, op::REQUEST);
    bad.src_cid = 7;
    r.guest.send(bad, b"");
    // Data for a connection that does not exist: RST.
    r.guest.send(r.guest.header(11, 12, op::RW), b"junk");
    let (h, _) = r.guest.recv_op();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 12, 11));
    // A header cut short.
    let head = r.guest.tx.add_chain(&[(0x190_0000, 10, false)]);
    r.guest.tx.publish(&[head]);
    // A length beyond what the chain holds.
    let mut liar = r.guest.header(11, 12, op::RW);
    liar.len = 60_000;
    let head = r.guest.add_header_chain(0x191_0000, &liar);
    r.guest.tx.publish(&[head]);
    r.guest.tx_evt.write(1).unwrap();
    let counters = r.dev.counters();
    let bad = || {
        counters
            .bad_packets
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(wait_until(Duration::from_secs(5), || bad() >= 3));
    host_connect(&mut r, 1024);
}

#[test]
fn a_looping_chain_is_not_a_packet() {
    // Found by the vsock_chains fuzz target: a transmit descriptor whose next is itself. The
    // walk yields it until the queue size runs out (still saying "next"), and the device read
    // the header at its start as a packet: here a REQUEST, which it forwarded.
    let mut r = rig();
    let listener = UnixListener::bind(format!("{}_52", r.path.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let at = 0x1f0_0000;
    let h = r.guest.header(5000, 52, op::REQUEST);
    let head = r.guest.add_header_chain(at, &h);
    r.guest
        .tx
        .write_desc(head, at, desc_len(HEADER_SIZE), DESC_F_NEXT, head);
    r.guest.tx.publish(&[head]);
    r.guest.tx_evt.write(1).unwrap();
    // A well-formed REQUEST after it: its RESPONSE is the first packet back.
    r.guest.send(r.guest.header(5001, 52, op::REQUEST), b"");
    let (resp, _) = r.guest.recv_op();
    assert_eq!((resp.op, resp.dst_port), (op::RESPONSE, 5001));
    let bad = r
        .dev
        .counters()
        .bad_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bad, 1);
    assert!(listener.accept().is_ok(), "the well-formed connect");
    assert!(listener.accept().is_err(), "and nothing for the loop");
}

#[test]
fn many_connections_at_once() {
    let mut r = rig();
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(host_connect(&mut r, 1024));
    }
    for (i, (s, _)) in streams.iter_mut().enumerate() {
        s.write_all(format!("conn{i:02}").as_bytes()).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 20 {
        let (h, data) = r.guest.recv_op();
        assert_eq!(h.op, op::RW);
        let local = h.src_port;
        let i = streams.iter().position(|(_, l)| *l == local).unwrap();
        assert_eq!(data, format!("conn{i:02}").into_bytes());
        seen.insert(i);
    }
}

#[test]
fn reset_refuses_again() {
    let mut r = rig();
    let (mut s, _) = host_connect(&mut r, 1024);
    r.dev.reset();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "connections die with the driver"
    );
    let mut s = UnixStream::connect(&r.path).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    assert_eq!(read_line(&mut s), "ERR guest vsock driver not ready");
}

#[test]
fn transport_reset_drops_connections_and_tells_the_guest() {
    let mut r = rig();
    let handle = r.dev.handle().unwrap();
    let (mut s, _) = host_connect(&mut r, 1024);
    // No event buffer posted yet: the event is owed until the guest posts one.
    handle.transport_reset().unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "host side closed");
    const EVENT_BUF: u64 = 0x130_0000;
    r.guest
        .mem
        .write_obj(0xffff_ffffu32, GuestAddress(EVENT_BUF))
        .unwrap();
    let head = r.guest.ev.add_chain(&[(EVENT_BUF, 8, true)]);
    r.guest.ev.publish(&[head]);
    r.guest.ev_evt.write(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || r.guest.ev.used_idx() != 0),
        "no event delivered"
    );
    assert_eq!(r.guest.ev.used_elem(0), (u32::from(head), 4));
    let id: u32 = r.guest.mem.read_obj(GuestAddress(EVENT_BUF)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(
        handle
            .counters()
            .events
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The device keeps working: a new connection goes through.
    let (_s2, _) = host_connect(&mut r, 1024);
}

#[test]
fn an_avail_index_past_the_transmit_ring_breaks_the_queue_and_the_device_still_stops() {
    let r = rig();
    // tx ring at 0x11_0000: avail idx after QSIZE descriptors of 16 bytes, plus 2.
    let avail_idx = GuestAddress(0x11_0000 + 16 * u64::from(QSIZE) + 2);
    r.guest.mem.write_obj(QSIZE + 5, avail_idx).unwrap();
    r.guest.tx_evt.write(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || r.irq.needs_reset_requests()
            != 0),
        "no DEVICE_NEEDS_RESET"
    );
    r.guest.tx_evt.write(1).unwrap();
    let VsockRig { dev, irq, .. } = r;
    let faults = dev.faults().clone();
    assert_resets(dev);
    assert_broken_once(&irq, &faults);
}

#[test]
fn a_host_listener_that_never_accepts_does_not_stall_other_connections() {
    let mut r = rig();
    let _full = super::unix::listener_with_full_backlog(std::path::Path::new(&format!(
        "{}_52",
        r.path.display()
    )));
    let live = UnixListener::bind(format!("{}_53", r.path.display())).unwrap();
    // The connect to port 52 cannot complete; it must not hold the device.
    r.guest.send(r.guest.header(5000, 52, op::REQUEST), b"");
    let _s = guest_connects(&mut r, &live, 5001, 53);
    // A host-initiated connection works too.
    let (mut h, _) = host_connect(&mut r, 1024);
    h.write_all(b"x").unwrap();
    let (p, data) = r.guest.recv_op();
    assert_eq!((p.op, data.as_slice()), (op::RW, &b"x"[..]));
    // And the device stops while the connect still waits.
    assert_resets(r.dev);
}

#[test]
fn replies_the_guest_has_no_buffers_for_are_bounded() {
    use super::muxer::MAX_QUEUED_REPLIES;
    const PACKETS: u64 = 100_000;
    let mut r = rig();
    // One packet for a connection that does not exist, sent over and over: each earns a RST.
    let at = 0x180_0000;
    let h = r.guest.header(5000, 9999, op::RW);
    let mut sent = 0u64;
    while sent < PACKETS {
        let batch = (PACKETS - sent).min(u64::from(QSIZE));
        let heads: Vec<u16> = (0..batch)
            .map(|_| r.guest.add_header_chain(at, &h))
            .collect();
        r.guest.tx.publish(&heads);
        r.guest.tx_evt.write(1).unwrap();
        sent += batch;
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.guest.tx.used_idx() != r.guest.tx.avail_idx() {
            assert!(Instant::now() < deadline, "tx not served");
            std::thread::yield_now();
        }
    }
    let counters = r.dev.counters().clone();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
    let accounted = || load(&counters.replies_queued) + load(&counters.replies_dropped);
    assert!(
        wait_until(Duration::from_secs(30), || accounted() + u64::from(QSIZE)
            >= PACKETS),
        "replies not accounted for"
    );
    assert_eq!(load(&counters.replies_queued), MAX_QUEUED_REPLIES as u64);
    assert_eq!(
        load(&counters.replies_dropped),
        PACKETS - u64::from(QSIZE) - MAX_QUEUED_REPLIES as u64
    );
    // The queued ones still reach the guest once it posts buffers.
    r.guest.rx_seen = r.guest.rx.used_idx();
    r.guest.rx.recycle();
    r.guest.post_rx(QSIZE);
    let (p, _) = r.guest.recv();
    assert_eq!(p.op, op::RST);
}

/// Linux's driver (EVENT_IDX) refills receive buffers without a doorbell unless the device
/// moved avail_event past them: a device that ran dry must ask, or host data waits for good
/// (the embedded pod whose second status call never returned).
#[test]
fn a_device_out_of_receive_buffers_asks_for_the_next_doorbell() {
    let mut r = rig_with(features::VERSION_1 | features::RING_EVENT_IDX, 1);
    // The first CONNECT's REQUEST takes the only buffer.
    let _first = UnixStream::connect(&r.path).map(|mut s| {
        s.write_all(b"CONNECT 1024\n").unwrap();
        s
    });
    assert!(
        wait_until(Duration::from_secs(5), || r.guest.rx.used_idx() == 1),
        "no REQUEST delivered"
    );
    // The second finds none: the device must want a doorbell at the next buffer.
    let _second = UnixStream::connect(&r.path).map(|mut s| {
        s.write_all(b"CONNECT 1025\n").unwrap();
        s
    });
    assert!(
        wait_until(Duration::from_secs(5), || r.guest.rx.avail_event() == 1),
        "avail_event stayed {}: a Linux driver would never kick again",
        r.guest.rx.avail_event()
    );
    // The driver posts one buffer and kicks only as vring_need_event says: it does now.
    let (event, old) = (r.guest.rx.avail_event(), r.guest.rx.avail_idx());
    let head = r.guest.rx.add_chain(&[(0, 0, true)]);
    r.guest.rx.write_desc(head, rx_buf(head), RX_BUF, 2, 0);
    r.guest.rx.publish(&[head]);
    let new = r.guest.rx.avail_idx();
    assert!(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old));
    r.guest.rx_evt.write(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || r.guest.rx.used_idx() == 2),
        "the second REQUEST never came"
    );
}
