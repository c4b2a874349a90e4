//! The vsock device's hostile chains, connects to ports nobody listens on and stray RSTs.

use super::chains::{run_chains, Chains};
use super::device::HDev;
use super::{page, Tally, FAR, F_INDIRECT, F_NEXT, F_WRITE, SCRATCH_RAM, WAIT_MS};
use crate::virtio::buf::{read_bytes, write_bytes};
use pulse_probe::vsock_spec::{self as vs, Header, HEADER_SIZE, HOST_CID, TYPE_STREAM};
const VS_RX: u16 = 0;
const VS_TX: u16 = 1;
/// Receive buffers: header plus a little payload.
const VS_RX_BUF: u64 = 128;
const GUEST_CID: u64 = 3;

fn vs_header(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// Sends `count` packets made by `make(i)` in batches on the tx queue; returns how many went.
fn vs_send(dev: &mut HDev, count: u32, make: impl Fn(u32) -> Header) -> u32 {
    let hdrs = page(dev.d, 4);
    let batch = (dev.qsize - 1).min(63) as u32;
    let mut sent = 0;
    while sent < count {
        let m = batch.min(count - sent);
        let mut heads = [0u16; 64];
        for j in 0..m {
            let at = hdrs + 64 * j as u64;
            write_bytes(at, &make(sent + j).encode());
            dev.desc(VS_TX, j as u16, at, HEADER_SIZE as u32, 0, 0);
            heads[j as usize] = j as u16;
        }
        dev.publish(VS_TX, &heads[..m as usize]);
        let got = dev.wait_used(VS_TX, m as u16, WAIT_MS);
        for _ in 0..got {
            dev.take(VS_TX);
        }
        if got < m as u16 {
            break;
        }
        sent += m;
    }
    sent
}

/// Posts 31 receive buffers, waits (up to `wait_ms`) until `want` of them are used, and takes
/// the packets there are; calls `seen(header)` for each. Returns how many came.
fn vs_receive(dev: &mut HDev, want: u16, wait_ms: u64, mut seen: impl FnMut(&Header)) -> u32 {
    let bufs = page(dev.d, 5);
    let m = (dev.qsize - 1).min(31);
    let mut heads = [0u16; 32];
    for j in 0..m {
        let at = bufs + VS_RX_BUF * j as u64;
        dev.desc(VS_RX, j, at, VS_RX_BUF as u32, F_WRITE, 0);
        heads[j as usize] = j;
    }
    dev.publish(VS_RX, &heads[..m as usize]);
    let got = dev.wait_used(VS_RX, want.min(m), wait_ms);
    // The buffers not used stay posted: take them back with a reset later; count what came.
    for _ in 0..got {
        let (id, len) = dev.take(VS_RX);
        if id < m as u32 && len as usize >= HEADER_SIZE {
            let raw: [u8; HEADER_SIZE] = read_bytes(bufs + VS_RX_BUF * id as u64);
            seen(&Header::decode(&raw));
        }
    }
    got as u32
}

/// What a hostile header has wrong, done to a well-formed one.
type Fault = fn(&mut Header);

pub(super) fn vsock(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let pk = page(d, 2);
    // Hostile transmit chains: the headers they carry, 0x80 bytes apart from `pk`, each one's
    // op and what is wrong with it (ports 40000 + i to 50000 + i).
    let faults: [(u16, Fault); 7] = [
        // well formed: the chains around it are not
        (vs::op::REQUEST, |_| {}),
        // longer than the device accepts
        (vs::op::RW, |h| h.len = 0x10001),
        // longer than the chain
        (vs::op::RW, |h| h.len = 100),
        // not the guest's CID
        (vs::op::REQUEST, |h| h.src_cid = 9),
        // not to the host
        (vs::op::REQUEST, |h| h.dst_cid = 5),
        // seqpacket
        (vs::op::REQUEST, |h| h.kind = 2),
        // an unknown op
        (99, |_| {}),
    ];
    for (i, (op, fault)) in (0u16..).zip(faults) {
        let mut h = vs_header(40000 + u32::from(i), 50000 + u32::from(i), op);
        fault(&mut h);
        write_bytes(pk + 0x80 * u64::from(i), &h.encode());
    }

    let q = VS_TX;
    let mut chains = Chains::new();
    dev.desc(q, 0, pk, HEADER_SIZE as u32, F_NEXT, 0); // a looping REQUEST
    chains.add(0, true);
    dev.desc(q, 1, pk, HEADER_SIZE as u32, F_WRITE, 0); // writable
    chains.add(1, true);
    dev.desc(q, 2, pk, 20, 0, 0); // shorter than a header
    chains.add(2, true);
    dev.desc(q, 3, pk + 0x80, HEADER_SIZE as u32, F_NEXT, 4); // a payload beyond the maximum
    dev.desc(q, 4, SCRATCH_RAM, 0x1_0001, 0, 0);
    chains.add(3, true);
    dev.desc(q, 5, pk + 0x100, HEADER_SIZE as u32, 0, 0); // len beyond what is there
    chains.add(5, true);
    for (i, off) in [(6u16, 0x180u64), (7, 0x200), (8, 0x280), (9, 0x300)] {
        dev.desc(q, i, pk + off, HEADER_SIZE as u32, 0, 0);
        chains.add(i, true);
    }
    dev.desc(q, 10, FAR, 32, F_INDIRECT, 0);
    chains.add(10, true);
    dev.desc(q, 11, pk, HEADER_SIZE as u32, F_NEXT, 400);
    chains.add(11, true);
    chains.add(3000, false);
    let (used, k) = run_chains(dev, t, q, &chains);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: a transmit chain came back with a length",
    );

    // Floods with no receive buffer posted: connects to host ports nobody listens on (each
    // answered with an RST the device must queue, up to its cap, and drop beyond), then RSTs
    // for connections that do not exist (never answered).
    let connects = vs_send(dev, 5000, |i| {
        vs_header(41000 + i, 20000 + i, vs::op::REQUEST)
    });
    let rsts = vs_send(dev, 2000, |i| vs_header(46000 + i, 30000 + i, vs::op::RST));
    t.r.flood += connects + rsts;
    t.check(
        connects == 5000 && rsts == 2000,
        "hostile: a flood was not taken",
    );
    // Now take the replies: every one an RST to this guest.
    let mut answers = 0u32;
    let mut wrong = 0u32;
    loop {
        let got = vs_receive(dev, 31, 200, |h| {
            if h.op != vs::op::RST || h.dst_cid != GUEST_CID || h.src_cid != HOST_CID {
                wrong += 1;
            }
        });
        answers += got;
        if got == 0 || answers > 10_000 {
            break;
        }
    }
    t.r.flood_answers += answers;
    t.check(wrong == 0, "hostile: a reply to the flood was not an RST");
    t.check(
        answers > 0 && answers < connects + 16,
        "hostile: the flood's replies did not come back, or more came than were asked for",
    );
    // Receive buffers the wrong way round, looping, too small: returned empty once there is
    // something to deliver (an RST for a connect to a port nobody listens on).
    dev.reset();
    if let Err(e) = dev.bring_up(0, true) {
        t.errors.push(e);
        return;
    }
    let rx = page(d, 6);
    dev.desc(VS_RX, 0, rx, 256, 0, 0);
    dev.desc(VS_RX, 1, rx, 256, F_WRITE | F_NEXT, 1);
    dev.desc(VS_RX, 2, rx, 16, F_WRITE, 0);
    dev.desc(VS_RX, 3, rx + 0x800, 256, F_WRITE, 0);
    let chains = Chains::returning(4);
    vs_send(dev, 1, |_| vs_header(47000, 20999, vs::op::REQUEST));
    let (used, k) = run_chains(dev, t, VS_RX, &chains);
    t.check(
        used[..k]
            .iter()
            .all(|e| (e.0 == 3) == (e.1 as usize >= HEADER_SIZE)),
        "hostile: a malformed receive chain got a packet",
    );
}

pub(super) fn vsock_alive(dev: &mut HDev, _t: &mut Tally) -> bool {
    // A connect to a port nobody listens on: the device must answer it with an RST.
    if vs_send(dev, 1, |_| vs_header(48000, 21999, vs::op::REQUEST)) != 1 {
        return false;
    }
    let mut rst = false;
    vs_receive(dev, 1, WAIT_MS, |h| {
        rst |= h.op == vs::op::RST && h.src_port == 21999 && h.dst_port == 48000;
    });
    rst
}

// ---- console ---------------------------------------------------------------------------
