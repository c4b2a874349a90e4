//! The virtio-net driver and its workload, run on the BSP: set the number of queue pairs
//! through the control queue, send frames on every tx queue, and take the host harness's
//! frames on every rx queue (the tap spreads them over its queues by flow hash).

use super::buf::{dma_addr, read_byte, write_bytes, DmaBufs};
use super::queue::{Virtq, QUEUE_SIZE_CAP};
use super::{idle, mmio, settle, IrqPacer};
use crate::arch::{self, Deadline};
use pulse_probe::cmdline::NetPlan;
use pulse_probe::devreport::{NetResult, MAX_NET_PAIRS};
use pulse_probe::net_spec::{self as ns, NET_HDR_LEN, PROBE_FRAME_LEN};
use pulse_probe::virtio_spec::ring;

const RX_PER_QUEUE: usize = QUEUE_SIZE_CAP as usize / 2;
const RX_BUF: usize = 2048;
const TX_PER_QUEUE: usize = QUEUE_SIZE_CAP as usize / 2;
const TX_BUF: usize = 128;
const WORKLOAD_MS: u64 = 30_000;

#[repr(C, align(4096))]
struct Buffers {
    rx: [[[u8; RX_BUF]; RX_PER_QUEUE]; MAX_NET_PAIRS],
    tx: [[[u8; TX_BUF]; TX_PER_QUEUE]; MAX_NET_PAIRS],
    ctrl: [u8; 16],
}

#[link_section = ".noinit.net_bufs"]
static BUFS: DmaBufs<Buffers> = DmaBufs::new();

fn rx_addr(pair: usize, slot: usize) -> u64 {
    dma_addr!(BUFS, rx[pair][slot])
}

fn tx_addr(pair: usize, slot: usize) -> u64 {
    dma_addr!(BUFS, tx[pair][slot])
}

fn ctrl_addr() -> u64 {
    dma_addr!(BUFS, ctrl)
}

/// One queue: its ring, doorbell and pacer slot.
#[derive(Clone, Copy)]
pub struct Queue {
    pub vq: Virtq,
    pub doorbell: (u64, u32),
}

impl Queue {
    fn kick(&self) {
        mmio::ring_doorbell(self.doorbell.0, self.doorbell.1);
    }
}

/// The device's queues as the transport set them up.
#[derive(Clone, Copy)]
pub struct Queues {
    pub pairs: usize,
    pub rx: [Option<Queue>; MAX_NET_PAIRS],
    pub tx: [Option<Queue>; MAX_NET_PAIRS],
    pub ctrl: Option<Queue>,
    pub mac: [u8; 6],
}

/// Runs the net workload on the BSP with interrupts off (they come in while it halts).
/// `pacers[2p]`, `pacers[2p + 1]` pace pair p's rx and tx queues, `pacers[2 * pairs]` the
/// control queue.
pub fn run(q: &Queues, plan: NetPlan, pacers: &mut [IrqPacer]) -> NetResult {
    let mut r = NetResult {
        pairs: q.pairs as u16,
        frames_per_pair: plan.frames,
        rx_expected_per_pair: plan.rx,
        ..NetResult::default()
    };
    let mut deadline = Deadline::after_ms(WORKLOAD_MS);

    // Queue pairs beyond the first only carry traffic once the driver asks for them.
    if let (Some(ctrl), true) = (q.ctrl, q.pairs > 1) {
        let a = ctrl_addr();
        write_bytes(a, &[ns::ctrl::CLASS_MQ, ns::ctrl::MQ_VQ_PAIRS_SET]);
        write_bytes(a + 2, &(q.pairs as u16).to_le_bytes());
        write_bytes(a + 8, &[0xff]);
        ctrl.vq.set_desc(0, a, 2, ring::DESC_F_NEXT, 1);
        ctrl.vq.set_desc(1, a + 2, 2, ring::DESC_F_NEXT, 2);
        ctrl.vq.set_desc(2, a + 8, 1, ring::DESC_F_WRITE, 0);
        ctrl.vq.put_avail(0, 0);
        ctrl.vq.publish(1);
        ctrl.kick();
        while ctrl.vq.used_idx() == 0 && !deadline.expired() {
            idle();
        }
        let ok = ctrl.vq.used_idx() != 0 && read_byte(a + 8) == ns::ctrl::OK;
        r.mq_set = Some(ok);
        arch::interrupt_window();
        pacers[2 * q.pairs].rearm(&ctrl.vq, ctrl.vq.used_idx());
    }

    let mut rx_avail = [0u16; MAX_NET_PAIRS];
    let mut rx_used = [0u16; MAX_NET_PAIRS];
    let mut tx_used = [0u16; MAX_NET_PAIRS];
    let tx_frames = (plan.frames as usize).min(TX_PER_QUEUE);
    for (p, avail) in rx_avail.iter_mut().enumerate().take(q.pairs) {
        let (Some(rx), Some(tx)) = (q.rx[p], q.tx[p]) else {
            continue;
        };
        for slot in 0..RX_PER_QUEUE {
            rx.vq
                .post_writable(avail, slot as u16, rx_addr(p, slot), RX_BUF as u32);
        }
        rx.vq.publish(*avail);
        rx.kick();
        // The frames of one pair go out as one batch: one avail-index store, one doorbell.
        for i in 0..tx_frames {
            let a = tx_addr(p, i);
            write_bytes(a, &[0u8; NET_HDR_LEN]);
            write_bytes(
                a + NET_HDR_LEN as u64,
                &ns::probe_frame(q.mac, p as u16, i as u32),
            );
            let len = (NET_HDR_LEN + PROBE_FRAME_LEN) as u32;
            tx.vq.set_desc(i as u16, a, len, 0, 0);
            tx.vq.put_avail(i as u16, i as u16);
        }
        tx.vq.publish(tx_frames as u16);
        tx.kick();
    }

    loop {
        let mut progress = false;
        for p in 0..q.pairs {
            let (Some(rx), Some(tx)) = (q.rx[p], q.tx[p]) else {
                continue;
            };
            while tx.vq.pop_used(&mut tx_used[p]).is_some() {
                r.tx_done[p] += 1;
                progress = true;
            }
            let mut reposted = false;
            while let Some((id, len)) = rx.vq.pop_used(&mut rx_used[p]) {
                progress = true;
                let slot = id as usize;
                if slot >= RX_PER_QUEUE || (len as usize) < NET_HDR_LEN {
                    r.bad_buffers += 1;
                    continue;
                }
                let frame_len = (len as usize - NET_HDR_LEN).min(RX_BUF - NET_HDR_LEN);
                let mut head = [0u8; ns::UDP_PAYLOAD_OFFSET + 6];
                let n = frame_len.min(head.len());
                for (k, b) in head[..n].iter_mut().enumerate() {
                    *b = read_byte(rx_addr(p, slot) + (NET_HDR_LEN + k) as u64);
                }
                if ns::is_host_frame(&head[..n]) {
                    r.rx_host[p] += 1;
                } else {
                    r.rx_other += 1;
                }
                rx.vq.push_avail(&mut rx_avail[p], slot as u16);
                reposted = true;
            }
            if reposted {
                rx.vq.publish(rx_avail[p]);
                rx.kick();
            }
        }
        arch::interrupt_window();
        for p in 0..q.pairs {
            if let (Some(rx), Some(tx)) = (q.rx[p], q.tx[p]) {
                pacers[2 * p].rearm(&rx.vq, rx_used[p]);
                pacers[2 * p + 1].rearm(&tx.vq, tx_used[p]);
            }
        }
        let done =
            (0..q.pairs).all(|p| r.tx_done[p] >= tx_frames as u32 && r.rx_host[p] >= plan.rx);
        if done || deadline.expired() {
            break;
        }
        if !progress {
            idle();
        }
    }
    settle();
    r
}
