#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets: fuzz/corpus/<target>/seed-<name>.

Each seed is a well-formed (or deliberately hostile) input in the format the target decodes
(see fuzz/README.md and fuzz/src/lib.rs); the fuzzer starts from them and finds the rest.
Run from anywhere: python3 fuzz/seeds.py. Files it does not write are left alone.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

DATA_BASE = 0x1_0000
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def desc(addr, length, flags=0, nxt=0):
    return u64(addr) + u32(length) + u16(flags) + u16(nxt)


def ring(descs, heads, size_log=4, event_idx=True, start=0, count=None, used_event=0):
    """A ring program (Ring::decode): size 1 << size_log, descriptors, published heads."""
    if count is None:
        count = len(heads)
    out = u8(size_log) + u8(1 if event_idx else 0) + u16(start) + u16(count)
    out += u16(used_event) + u16(0) + u8(len(descs))
    out += b"".join(descs)
    n = min(count, 1 << size_log)
    heads = (list(heads) + [0] * n)[:n]
    out += b"".join(u16(h) for h in heads)
    return out


class Blob:
    """The data blob: bytes placed at guest addresses from DATA_BASE on."""

    def __init__(self):
        self.data = bytearray()

    def put(self, addr, data):
        off = addr - DATA_BASE
        if len(self.data) < off + len(data):
            self.data.extend(b"\0" * (off + len(data) - len(self.data)))
        self.data[off : off + len(data)] = data
        return addr

    def bytes(self):
        return bytes(self.data)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- block -----------------------------------------------------------------------------

def blk_header(kind, sector):
    return u32(kind) + u32(0) + u64(sector)


def block_seeds():
    hdr, data, st = 0x1_0000, 0x1_0200, 0x1_0700
    b = Blob()
    b.put(hdr, blk_header(0, 3))  # IN
    write("block_chains", "read", u8(0) + ring(
        [desc(hdr, 16, F_NEXT, 1), desc(data, 1024, F_WRITE | F_NEXT, 2), desc(st, 1, F_WRITE)],
        [0]) + b.bytes())

    b = Blob()
    b.put(hdr, blk_header(1, 5))  # OUT
    b.put(hdr + 0x20, blk_header(4, 0))  # FLUSH
    b.put(hdr + 0x40, blk_header(8, 0))  # GET_ID
    b.put(data, b"\xab" * 512)
    write("block_chains", "write-flush-getid", u8(0) + ring(
        [desc(hdr, 16, F_NEXT, 1), desc(data, 512, F_NEXT, 2), desc(st, 1, F_WRITE),
         desc(hdr + 0x20, 16, F_NEXT, 4), desc(st + 1, 1, F_WRITE),
         desc(hdr + 0x40, 16, F_NEXT, 6), desc(data + 0x400, 20, F_WRITE | F_NEXT, 7),
         desc(st + 2, 1, F_WRITE)],
        [0, 3, 5]) + b.bytes())

    # A loop: header, then a writable buffer whose next is itself.
    b = Blob()
    b.put(hdr, blk_header(0, 0))
    write("block_chains", "loop", u8(0) + ring(
        [desc(hdr, 16, F_NEXT, 1), desc(data, 512, F_WRITE | F_NEXT, 1)], [0]) + b.bytes())

    # Indirect table in the blob: header, data, status.
    b = Blob()
    b.put(hdr, blk_header(0, 1))
    table = b.put(0x1_0800, desc(hdr, 16, F_NEXT, 1) + desc(data, 512, F_WRITE | F_NEXT, 2)
                  + desc(st, 1, F_WRITE))
    write("block_chains", "indirect", u8(0) + ring([desc(table, 48, F_INDIRECT)], [0]) + b.bytes())

    # Hostile lengths and places: u32::MAX data, an indirect table far away, a head beyond
    # the table, a status byte at the top of the address space.
    b = Blob()
    b.put(hdr, blk_header(0, 0))
    write("block_chains", "hostile", u8(0) + ring(
        [desc(hdr, 16, F_NEXT, 1), desc(data, 0xFFFFFFFF, F_WRITE | F_NEXT, 2), desc(st, 1, F_WRITE),
         desc(1 << 63 | 0x7FFF_0000_0000, 0x30, F_INDIRECT),
         desc(hdr, 16, F_NEXT, 5), desc(0xFFFF_FFFF_FFFF_FFFF, 1, F_WRITE),
         desc(hdr, 0, F_NEXT, 7), desc(st, 0, F_WRITE)],
        [0, 3, 40, 4, 6]) + b.bytes())

    # The avail index far past the device, and a start that wraps.
    write("block_chains", "avail-too-far", u8(0) + ring([desc(hdr, 16)], [0], count=200))
    b = Blob()
    b.put(hdr, blk_header(13, 0))  # WRITE_ZEROES
    b.put(data, u64(2) + u32(4) + u32(1))
    write("block_chains", "wrap-write-zeroes", u8(0) + ring(
        [desc(hdr, 16, F_NEXT, 1), desc(data, 16, F_NEXT, 2), desc(st, 1, F_WRITE)],
        [0, 0, 0], start=0xFFFE) + b.bytes())


# ---- net ------------------------------------------------------------------------------

def frame(n=60, tag=0):
    return bytes([0x02, 0, 0, 0, 0, 0xAA, 0x02, 0x50, 0x55, 0x4C, 0x53, 0x45, 0x88, 0xB5])\
        + bytes((i * 7 + tag) & 0xFF for i in range(n - 14))


def net_seeds():
    hdr = b"\0" * 12
    b = Blob()
    one = b.put(0x1_0000, hdr + frame())
    two_h = b.put(0x1_0100, hdr)
    two_f = b.put(0x1_0200, frame(1514, 1))
    write("net_tx_chains", "frames", ring(
        [desc(one, 72), desc(two_h, 12, F_NEXT, 2), desc(two_f, 1514)], [0, 1]) + b.bytes())
    write("net_tx_chains", "hostile", ring(
        [desc(one, 72, F_WRITE), desc(one, 0, F_NEXT, 1), desc(0x3_FFC0, 128),
         desc(one, 0xFFFFFFFF), desc(one, 72, F_NEXT, 4), desc(0x5_FFF0, 64)],
        [0, 1, 2, 3, 4, 99]) + b.bytes())

    # rx: writable buffers, two frames waiting (mergeable and not).
    frames = u8(2) + u16(72) + hdr + frame() + u16(1526) + hdr + frame(1514, 2)
    bufs = [desc(0x2_0000 + 0x1000 * i, 0x800, F_WRITE) for i in range(4)]
    write("net_rx_chains", "plain", u8(0) + ring(bufs, [0, 1, 2, 3]) + frames)
    write("net_rx_chains", "mergeable", u8(3) + ring(bufs, [0, 1, 2, 3]) + frames)
    write("net_rx_chains", "hostile", u8(1) + ring(
        [desc(0x2_0000, 8, F_WRITE), desc(0x2_1000, 0x800, F_NEXT, 1),
         desc(0x3_FF00, 0x200, F_WRITE), desc(0x5_FF00, 0x800, F_WRITE)],
        [0, 1, 2, 3]) + frames)

    # control: MQ pairs, MAC, offloads, a command without an ack, a flood of refused ones.
    b = Blob()
    mq = b.put(0x1_0000, u8(4) + u8(0) + u16(2))
    mac = b.put(0x1_0100, u8(1) + u8(1) + bytes([0x02, 1, 2, 3, 4, 5]))
    off = b.put(0x1_0200, u8(5) + u8(0) + u64(1 << 1))
    bad = b.put(0x1_0300, u8(0) + u8(0) + u8(1))
    ack = 0x1_0400
    descs = [desc(mq, 4, F_NEXT, 1), desc(ack, 1, F_WRITE),
             desc(mac, 8, F_NEXT, 3), desc(ack + 1, 1, F_WRITE),
             desc(off, 10, F_NEXT, 5), desc(ack + 2, 1, F_WRITE),
             desc(bad, 3)]
    write("net_ctrl_chains", "commands", u8(0xF) + u8(4) + ring(descs, [0, 2, 4, 6]) + b.bytes())
    flood = [desc(bad, 3, F_NEXT, 1), desc(ack, 1, F_WRITE)]
    write("net_ctrl_chains", "flood", u8(0xF) + u8(2) + ring(flood, [0] * 64, size_log=6)
          + b.bytes())


# ---- vsock ----------------------------------------------------------------------------

def vsock_hdr(op, src_port, dst_port, length=0, src_cid=3, dst_cid=2, kind=1, flags=0):
    return (u64(src_cid) + u64(dst_cid) + u32(src_port) + u32(dst_port) + u32(length)
            + u16(kind) + u16(op) + u32(flags) + u32(65536) + u32(0))


def vsock_seeds():
    rx = ring([desc(0x3_0000 + 0x1000 * i, 0x1000, F_WRITE) for i in range(8)], list(range(8)))
    ev = ring([desc(0x3_8000, 8, F_WRITE)], [0])
    b = Blob()
    pkts = [
        vsock_hdr(1, 1000, 5000),  # REQUEST to a host port nobody listens on
        vsock_hdr(3, 1001, 5001),  # RST for nothing
        vsock_hdr(5, 1002, 5002, 4) + b"data",  # RW for an unknown connection
        vsock_hdr(1, 1003, 5003, src_cid=9),  # wrong source CID
        vsock_hdr(1, 1004, 5004, kind=2),  # not a stream
        vsock_hdr(7, 1005, 5005),  # CREDIT_REQUEST for nothing
    ]
    descs = []
    for i, p in enumerate(pkts):
        descs.append(desc(b.put(0x1_0000 + 0x100 * i, p), len(p)))
    tx = ring(descs, list(range(len(pkts))))
    write("vsock_chains", "packets", u8(3) + rx + tx + ev + b.bytes())

    # A connect flood: 64 REQUESTs to distinct ports, with no rx buffers posted.
    b = Blob()
    descs = [desc(b.put(0x1_0000 + 0x40 * i, vsock_hdr(1, 2000 + i, 6000 + i)), 44)
             for i in range(64)]
    write("vsock_chains", "connect-flood", u8(2) + ring([], []) + ring(descs, list(range(64)),
                                                                      size_log=6) + b.bytes())

    # Hostile chains: header split over two descriptors, a loop, a writable buffer, a length
    # beyond the payload, a header in the hole.
    b = Blob()
    h = vsock_hdr(1, 3000, 7000)
    a = b.put(0x1_0000, h[:20])
    c = b.put(0x1_0100, h[20:])
    big = b.put(0x1_0200, vsock_hdr(5, 3001, 7001, 0xFFFFFFFF))
    write("vsock_chains", "hostile", u8(3) + rx + ring(
        [desc(a, 20, F_NEXT, 1), desc(c, 24), desc(a, 20, F_NEXT, 2), desc(c, 24, F_NEXT, 2),
         desc(a, 44, F_WRITE), desc(big, 44), desc(0x7_0000, 44)],
        [0, 2, 4, 5, 6]) + ev + b.bytes())


# ---- console --------------------------------------------------------------------------

def console_seeds():
    b = Blob()
    out = b.put(0x1_0000, b"hello from the fuzzer\n")
    rx = ring([desc(0x2_0000, 16, F_WRITE), desc(0x2_1000, 64, F_WRITE | F_NEXT, 2),
               desc(0x2_2000, 64, F_WRITE)], [0, 1])
    tx = ring([desc(out, 22), desc(out, 5, F_NEXT, 2), desc(out + 5, 17)], [0, 1])
    write("console_chains", "echo", rx + tx + u16(40) + b"x" * 40 + b.bytes())
    tx = ring([desc(out, 22, F_WRITE), desc(out, 5, F_NEXT, 1), desc(0xFFFF_FFFF_0000, 4),
               desc(out, 0x10001)], [0, 1, 2, 3, 9])
    rx = ring([desc(0x2_0000, 16), desc(0x2_1000, 0, F_WRITE), desc(0x5_FFF0, 64, F_WRITE)],
              [0, 1, 2])
    write("console_chains", "hostile", rx + tx + u16(3) + b"abc" + b.bytes())


# ---- mmio transport -------------------------------------------------------------------

MAGIC, STATUS, QUEUE_SEL, QUEUE_NUM, QUEUE_READY = 0x000, 0x070, 0x030, 0x038, 0x044
MSI_CSR, MSI_CMD = 0x0C0, 0x0C2


def op_read(off):
    return u8(0) + u16(off)


def op_write(off, value):
    return u8(1) + u16(off) + u32(value)


def op_access(off, width_log, write_, value=0):
    return u8(2 | (width_log << 3) | (0x20 if write_ else 0)) + u16(off) + u64(value)


def op_macro(which, *args):
    return u8(3 | (which << 3)) + b"".join(args)


def op_event(what):
    return u8(4) + u8(what)


def op_msi16(cmd, value):
    return u8(5 | (8 if cmd else 0)) + u16(value)


def op_status(value):
    return u8(6) + u8(value)


def op_notify(value, doorbell=False):
    return u8(7 | (8 if doorbell else 0)) + u32(value)


def mmio_seeds():
    bringup = op_macro(6, u32(0), u8(0))  # the whole sequence, with MSI
    write("mmio_transport", "bringup-recorder", u8(0) + bringup + op_event(1) + op_event(2)
          + op_read(STATUS) + op_status(0))
    write("mmio_transport", "bringup-block", u8(1) + bringup + op_notify(0, True) + op_status(0))
    # Refused MSI messages: NMI, SMI, INIT, ExtINT, vector 2, an address outside the window.
    refused = b"".join(op_macro(4, u8(1), u32(0xFEE0_0000), u8(0), u32(d))
                       for d in (0x441, 0x241, 0x500, 0x741, 0x002))
    refused += op_macro(4, u8(2), u32(0xFEC0_0000), u8(0), u32(0x41))
    write("mmio_transport", "refused-msi", u8(0) + op_macro(0) + op_macro(1, u32(0))
          + op_macro(3, u8(0)) + refused + op_macro(5) + op_event(0) + op_event(4))
    # Odd register writes: wrong widths, bits that are not the driver's, notifications for
    # absent queues, queue setup and MSI_CSR after DRIVER_OK, unknown MSI ops.
    odd = (op_access(MAGIC, 0, False) + op_access(STATUS, 0, True, 0) + op_access(MSI_CSR, 2, True, 0x8000)
           + op_write(STATUS, 0x40) + op_write(STATUS, 0xFF) + op_notify(9) + op_notify(77, True)
           + bringup + op_write(QUEUE_SEL, 0) + op_write(QUEUE_NUM, 4) + op_write(QUEUE_READY, 0)
           + op_msi16(False, 0x8000) + op_msi16(True, 0x7001) + op_msi16(True, 0x1FFF)
           + op_access(0x1000, 3, True, 0) + op_status(0))
    write("mmio_transport", "odd-writes", u8(0) + odd)
    # Rings outside memory, then DRIVER_OK.
    far = (op_macro(0) + op_macro(1, u32(0)) + op_write(QUEUE_SEL, 1) + op_write(QUEUE_NUM, 8)
           + op_write(0x080, 0xFFFF_0000) + op_write(0x084, 0x10) + op_write(QUEUE_READY, 1)
           + op_macro(5) + op_read(STATUS))
    write("mmio_transport", "rings-outside-memory", u8(0) + far)
    write("mmio_transport", "no-msi-offered", u8(2) + bringup + op_event(2) + op_read(0x060)
          + op_write(0x064, 3))


if __name__ == "__main__":
    block_seeds()
    net_seeds()
    vsock_seeds()
    console_seeds()
    mmio_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))), "seeds")
