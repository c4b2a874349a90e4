//! The network device's hostile chains and control-queue commands.

use super::chains::{run_chains, Chains};
use super::device::HDev;
use super::{features_of, page, Tally, FAR, F_INDIRECT, F_NEXT, F_WRITE, SCRATCH_RAM, WAIT_MS};
use crate::virtio::buf::{read_byte, write_bytes};
use crate::virtio::Kind;
use pulse_probe::net_spec as ns;
use pulse_probe::net_spec::ctrl::{CLASS_MAC, CLASS_RX, ERR, MAC_ADDR_SET, MAC_TABLE_SET};
use pulse_probe::virtio_spec::blk::STATUS_UNSET;
use pulse_probe::virtio_spec::reg;
const NET_RX: u16 = 0;
const NET_TX: u16 = 1;
const NET_CTRL: u16 = 2;

/// One control command with its ack; returns the ack (None: not answered in time).
fn net_command(dev: &mut HDev, cmd: &[u8]) -> Option<u8> {
    let (c, ack) = (page(dev.d, 8), page(dev.d, 8) + 0x800);
    write_bytes(c, cmd);
    write_bytes(ack, &[STATUS_UNSET]);
    dev.desc(NET_CTRL, 0, c, cmd.len() as u32, F_NEXT, 1);
    dev.desc(NET_CTRL, 1, ack, 1, F_WRITE, 0);
    dev.roundtrip(NET_CTRL, 0).then(|| read_byte(ack))
}

fn net_mac(dev: &HDev) -> [u8; 6] {
    core::array::from_fn(|i| dev.w.read8(reg::CONFIG_SPACE + ns::NET_CFG_MAC + i as u64))
}

pub(super) fn net_alive(dev: &mut HDev, t: &mut Tally) -> bool {
    let original = net_mac(dev);
    let mac = [0x02, 0x48, 0x4f, 0x53, 0x54, dev.d as u8];
    let mut cmd = [CLASS_MAC, MAC_ADDR_SET, 0, 0, 0, 0, 0, 0];
    cmd[2..].copy_from_slice(&mac);
    let ok = net_command(dev, &cmd) == Some(ns::ctrl::OK) && net_mac(dev) == mac;
    // A reset gives the device its own MAC back.
    dev.reset();
    let back = net_mac(dev) == original;
    t.check(back, "hostile: a reset did not restore the MAC");
    if let Err(e) = dev.bring_up(features_of(Kind::Net), false) {
        t.errors.push(e);
        return false;
    }
    ok
}

pub(super) fn net(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let buf = page(d, 2);
    // A valid frame: a zero virtio-net header and a broadcast frame of the probe's type.
    write_bytes(buf, &[0u8; ns::NET_HDR_LEN]);
    let frame = ns::probe_frame([0x02, 0, 0, 0, 0, 1], 0, 0);
    write_bytes(buf + ns::NET_HDR_LEN as u64, &frame);
    let frame_len = (ns::NET_HDR_LEN + frame.len()) as u32;

    let q = NET_TX;
    let mut chains = Chains::new();
    dev.desc(q, 0, buf, frame_len, F_NEXT, 0); // a loop
    chains.add(0, true);
    dev.desc(q, 1, buf, frame_len, F_WRITE, 0); // writable on transmit
    chains.add(1, true);
    dev.desc(q, 2, SCRATCH_RAM, 0x1_0000, F_NEXT, 3); // longer than any frame
    dev.desc(q, 3, SCRATCH_RAM, 0x1_0000, 0, 0);
    chains.add(2, true);
    dev.desc(q, 4, buf, 0, 0, 0); // zero length: shorter than a header
    chains.add(4, true);
    dev.desc(q, 5, FAR, 32, F_INDIRECT, 0);
    chains.add(5, true);
    dev.desc(q, 6, buf, u32::MAX, 0, 0);
    chains.add(6, true);
    dev.desc(q, 7, buf, 12, F_NEXT, 300); // next beyond the table
    chains.add(7, true);
    chains.add(2000, false);
    dev.desc(q, 8, buf, frame_len, 0, 0); // and one good frame
    chains.add(8, true);
    let (used, k) = run_chains(dev, t, q, &chains);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: a transmit chain came back with a length",
    );

    // Receive buffers the wrong way round, looping, too small, outside memory: each returned
    // empty at once (no frame needed).
    let q = NET_RX;
    let rx = page(d, 3);
    dev.desc(q, 0, rx, 2048, 0, 0);
    dev.desc(q, 1, rx, 2048, F_WRITE | F_NEXT, 1);
    dev.desc(q, 2, rx, 8, F_WRITE, 0);
    dev.desc(q, 3, FAR, 2048, F_WRITE, 0);
    let chains = Chains::returning(4);
    let (used, k) = run_chains(dev, t, q, &chains);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: a malformed receive chain got bytes",
    );

    // Control-queue flood: commands the device refuses (MQ not negotiated, no filtering, a
    // multicast MAC, unknown classes, ack before the command), commands without an ack.
    let cmds = page(d, 4);
    let acks = page(d, 5);
    let batch = dev.qsize / 2;
    let mut answers = 0u32;
    let mut sent = 0u32;
    for round in 0..32u16 {
        let mut heads = [0u16; 32];
        for j in 0..batch.min(32) {
            let c = cmds + 16 * j as u64;
            let ack = acks + j as u64;
            write_bytes(ack, &[STATUS_UNSET]);
            let (class, cmd, data): (u8, u8, &[u8]) = match (round + j) % 6 {
                0 => (ns::ctrl::CLASS_MQ, ns::ctrl::MQ_VQ_PAIRS_SET, &[9, 0]),
                1 => (CLASS_MAC, MAC_TABLE_SET, &[0, 0, 0, 0, 0, 0, 0, 0]),
                2 => (CLASS_MAC, MAC_ADDR_SET, &[0x01, 0, 0x5e, 0, 0, 1]),
                3 => (CLASS_RX, 0, &[1]),
                4 => (77, 3, &[]),
                _ => (CLASS_MAC, MAC_ADDR_SET, &[0x02, 1, 2, 3, 4, 5]),
            };
            write_bytes(c, &[class, cmd]);
            write_bytes(c + 2, data);
            let len = 2 + data.len() as u32;
            let i = 2 * j;
            match (round + j) % 6 {
                // The ack first, then the command: malformed, answered ERR.
                5 => {
                    dev.desc(NET_CTRL, i, ack, 1, F_WRITE | F_NEXT, i + 1);
                    dev.desc(NET_CTRL, i + 1, c, len, 0, 0);
                }
                // No ack at all on every 7th: returned unanswered.
                _ if j % 7 == 3 => dev.desc(NET_CTRL, i, c, len, 0, 0),
                _ => {
                    dev.desc(NET_CTRL, i, c, len, F_NEXT, i + 1);
                    dev.desc(NET_CTRL, i + 1, ack, 1, F_WRITE, 0);
                }
            }
            heads[j as usize] = i;
        }
        let m = batch.min(32);
        dev.publish(NET_CTRL, &heads[..m as usize]);
        let got = dev.wait_used(NET_CTRL, m, WAIT_MS);
        for _ in 0..got {
            dev.take(NET_CTRL);
        }
        sent += m as u32;
        answers += (0..m as u64)
            .filter(|&j| read_byte(acks + j) == ERR)
            .count() as u32;
        if got < m {
            t.errors.push("hostile: control commands were not returned");
            break;
        }
    }
    t.r.flood += sent;
    t.r.flood_answers += answers;
    t.check(answers > 0, "hostile: no control command was refused");
    // A doorbell storm with nothing new.
    for _ in 0..2000 {
        dev.kick(NET_TX);
    }
    t.r.flood += 2000;
}
