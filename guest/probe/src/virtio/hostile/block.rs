//! The block device's hostile chains, notification storms and a queue broken on purpose.

use super::chains::{run_chains, Chains};
use super::device::HDev;
use super::{page, Tally, CONFIG_VECTOR, FAR, F_INDIRECT, F_NEXT, F_WRITE, TOP};
use crate::arch::{self, Deadline};
use crate::idt;
use crate::virtio::buf::{read_byte, write_bytes};
use crate::virtio::cpus;
use pulse_probe::virtio_spec::blk::{kind as request, STATUS_IOERR, STATUS_OK, STATUS_UNSET};
use pulse_probe::virtio_spec::reg;
fn blk_header(at: u64, kind: u32, sector: u64) {
    write_bytes(at, &kind.to_le_bytes());
    write_bytes(at + 4, &0u32.to_le_bytes());
    write_bytes(at + 8, &sector.to_le_bytes());
}

/// One block request on queue `q` with descriptors `first..first + 3`: header, 512 bytes of
/// data at `data`, status. Returns the status (None: not completed in time).
fn blk_request(
    dev: &mut HDev,
    q: u16,
    first: u16,
    kind: u32,
    sector: u64,
    data: u64,
) -> Option<u8> {
    let (hdr, st) = (
        page(dev.d, 0) + 0x800 + 32 * first as u64,
        page(dev.d, 1) + 0x800 + first as u64,
    );
    blk_header(hdr, kind, sector);
    write_bytes(st, &[STATUS_UNSET]);
    let data_flags = if kind == request::IN { F_WRITE } else { 0 };
    dev.desc(q, first, hdr, 16, F_NEXT, first + 1);
    dev.desc(q, first + 1, data, 512, F_NEXT | data_flags, first + 2);
    dev.desc(q, first + 2, st, 1, F_WRITE, 0);
    dev.roundtrip(q, first).then(|| read_byte(st))
}

/// A write and a read back on queue `q`: both OK and the data the same.
pub(super) fn blk_roundtrip(dev: &mut HDev, q: u16, sector: u64, tag: u8) -> bool {
    let (wpage, rpage) = (page(dev.d, 6), page(dev.d, 7));
    for i in 0..512u64 {
        write_bytes(wpage + i, &[tag ^ i as u8]);
        write_bytes(rpage + i, &[0]);
    }
    if blk_request(dev, q, 0, request::OUT, sector, wpage) != Some(STATUS_OK) {
        return false;
    }
    if blk_request(dev, q, 0, request::IN, sector, rpage) != Some(STATUS_OK) {
        return false;
    }
    (0..512u64).all(|i| read_byte(rpage + i) == tag ^ i as u8)
}

pub(super) fn block(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let (hdrs, stat, data, tables) = (page(d, 0), page(d, 1), page(d, 2), page(d, 4));
    let hdr = |k: u64| hdrs + 32 * k;
    let st = |k: u64| stat + k;
    for k in 0..16 {
        blk_header(hdr(k), request::IN, 0);
        write_bytes(st(k), &[STATUS_UNSET]);
    }
    for i in 0..512 {
        write_bytes(data + i, &[STATUS_UNSET]);
    }
    blk_header(hdr(5), request::IN, 1 << 40); // beyond the disk
    blk_header(hdr(6), request::OUT, 0);
    // An indirect table longer than the queue: header, 198 data buffers, status.
    let long = page(d, 5);
    let entry = |table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let at = table + 16 * i;
        write_bytes(at, &addr.to_le_bytes());
        write_bytes(at + 8, &len.to_le_bytes());
        write_bytes(at + 12, &flags.to_le_bytes());
        write_bytes(at + 14, &next.to_le_bytes());
    };
    let long_len = 200u64;
    entry(long, 0, hdr(7), 16, F_NEXT, 1);
    for i in 1..long_len - 1 {
        entry(long, i, page(d, 3), 8, F_NEXT | F_WRITE, i as u16 + 1);
    }
    entry(long, long_len - 1, st(7), 1, F_WRITE, 0);
    // A nested indirect table, and a misaligned one.
    entry(tables, 0, tables + 0x100, 48, F_INDIRECT, 0);
    entry(tables, 8, hdr(8), 16, F_NEXT, 1);

    let q = 0;
    let mut chains = Chains::new();
    // A loop: a writable buffer whose next is itself.
    dev.desc(q, 0, hdr(0), 16, F_NEXT, 1);
    dev.desc(q, 1, data, 512, F_WRITE | F_NEXT, 1);
    chains.add(0, true);
    // A length of u32::MAX.
    dev.desc(q, 2, hdr(1), 16, F_NEXT, 3);
    dev.desc(q, 3, data, u32::MAX, F_WRITE | F_NEXT, 4);
    dev.desc(q, 4, st(1), 1, F_WRITE, 0);
    chains.add(2, true);
    // Zero-length data (a valid read of nothing).
    dev.desc(q, 5, hdr(2), 16, F_NEXT, 6);
    dev.desc(q, 6, data, 0, F_WRITE | F_NEXT, 7);
    dev.desc(q, 7, st(2), 1, F_WRITE, 0);
    chains.add(5, true);
    // Indirect table outside guest memory; nested; misaligned; longer than the queue.
    dev.desc(q, 8, FAR, 48, F_INDIRECT, 0);
    chains.add(8, true);
    dev.desc(q, 9, tables, 16, F_INDIRECT, 0);
    chains.add(9, true);
    dev.desc(q, 10, tables + 0x80, 40, F_INDIRECT, 0);
    chains.add(10, true);
    dev.desc(q, 11, long, (16 * long_len) as u32, F_INDIRECT, 0);
    chains.add(11, true);
    // A writable header (read needed); a read-only status; data outside memory; a sector
    // beyond the disk; a status at the top of the address space; a next beyond the table.
    dev.desc(q, 12, hdr(3), 16, F_NEXT | F_WRITE, 13);
    dev.desc(q, 13, st(3), 1, F_WRITE, 0);
    chains.add(12, true);
    dev.desc(q, 14, hdr(4), 16, F_NEXT, 15);
    dev.desc(q, 15, data, 512, F_NEXT | F_WRITE, 16);
    dev.desc(q, 16, st(4), 1, 0, 0);
    chains.add(14, true);
    dev.desc(q, 17, hdr(5), 16, F_NEXT, 18);
    dev.desc(q, 18, data, 512, F_NEXT | F_WRITE, 19);
    dev.desc(q, 19, st(5), 1, F_WRITE, 0);
    chains.add(17, true);
    dev.desc(q, 20, hdr(6), 16, F_NEXT, 21);
    dev.desc(q, 21, FAR, 512, F_NEXT, 22);
    dev.desc(q, 22, st(6), 1, F_WRITE, 0);
    chains.add(20, true);
    dev.desc(q, 23, hdr(2), 16, F_NEXT, 24);
    dev.desc(q, 24, TOP, 16, F_WRITE, 0);
    chains.add(23, true);
    dev.desc(q, 25, hdr(2), 16, F_NEXT, 500);
    chains.add(25, true);
    // A head beyond the table: skipped, never returned.
    chains.add(1000, false);
    let (_, _) = run_chains(dev, t, q, &chains);
    let ioerr = |k: u64| read_byte(st(k)) == STATUS_IOERR;
    t.check(
        read_byte(data + 511) == STATUS_IOERR,
        "hostile: a looping request did not fail",
    );
    t.check(
        read_byte(st(2)) == STATUS_OK,
        "hostile: a zero-length read failed",
    );
    t.check(
        ioerr(3) && ioerr(5) && ioerr(6) && ioerr(7),
        "hostile: a malformed request did not fail with IOERR",
    );
    t.check(
        read_byte(st(4)) == STATUS_UNSET,
        "hostile: a read-only status byte was written",
    );

    // The healthy queue serves, queue 0 is broken on purpose (its avail index far past the
    // ring), the healthy one still serves, the device asks for a reset with one config
    // interrupt. Single-queue devices skip the healthy part.
    let healthy = dev.nq > 1;
    let mut healthy_ok = !healthy || blk_roundtrip(dev, 1, 64, 0x5a);
    let cpu = cpus()[0].0;
    let config_vector = CONFIG_VECTOR + d as u8;
    let irqs_before = idt::count(cpu, config_vector);
    t.r.broken_queue_seen = Some(dev.break_queue(0, 40));
    arch::sti();
    Deadline::after_ms(2000).wait_for(|| idt::count(cpu, config_vector) > irqs_before);
    // A little longer: a second one would be a duplicate.
    Deadline::after_ms(20).wait();
    arch::cli();
    t.r.config_interrupts = idt::count(cpu, config_vector) - irqs_before;
    t.check(
        t.r.config_interrupts == 1,
        "hostile: not exactly one config interrupt for a broken queue",
    );
    // Notification storms: the broken queue, the healthy one with nothing new, absent queues.
    for _ in 0..5000 {
        dev.kick(0);
    }
    for _ in 0..2000 {
        dev.kick(1 % dev.nq);
    }
    for _ in 0..500 {
        dev.w.write32(reg::QUEUE_NOTIFY, 77);
    }
    t.r.flood += 7500;
    healthy_ok &= !healthy || blk_roundtrip(dev, 1, 72, 0xa5);
    if healthy {
        t.r.healthy_queue = Some(healthy_ok);
    }
    // Busy workers: a ring of 16 MiB write-zeroes on the healthy queue, reset at once.
    let zq = if healthy { 1 } else { 0 };
    if healthy {
        let seg = page(d, 8);
        write_bytes(seg, &0u64.to_le_bytes());
        write_bytes(seg + 8, &(32768u32).to_le_bytes());
        write_bytes(seg + 12, &0u32.to_le_bytes());
        blk_header(hdr(9), request::WRITE_ZEROES, 0);
        let mut heads = [0u16; 20];
        for (k, head) in heads.iter_mut().enumerate() {
            let i = 3 * k as u16;
            dev.desc(zq, i, hdr(9), 16, F_NEXT, i + 1);
            dev.desc(zq, i + 1, seg, 16, F_NEXT, i + 2);
            dev.desc(zq, i + 2, st(10), 1, F_WRITE, 0);
            *head = i;
        }
        dev.publish(zq, &heads);
        t.r.flood += heads.len() as u32;
        // The reset comes with the next bring-up, while the worker is at it.
    }
}
