//! What the fuzz targets share: a reader over the fuzzer's bytes, a small guest memory (two
//! adjacent regions, a hole, a third region) written from an image, split rings laid out from
//! the input, an independent walk of descriptor chains (virtio-queue's rules, reimplemented
//! here so that the device's view can be checked against it), and the checks every chain
//! target makes after a device turn:
//!
//! - the used index moved by at most the chains published (none when the avail index is
//!   further ahead than the ring has entries);
//! - every used entry names a head the driver published, at most as often as it did;
//! - guest memory changed only inside device-writable buffers and the used rings;
//! - a device counted no more well-formed requests than there were well-formed chains (a
//!   chain that loops or points outside its table is malformed), when the turn left the
//!   descriptor tables as they were.
//!
//! The input formats are described in `fuzz/README.md`; `fuzz/seeds.py` writes the seed corpus.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: two adjacent regions, a hole, a third region.
pub const REGIONS: [(u64, usize); 3] = [(0, 0x4_0000), (0x4_0000, 0x2_0000), (0x8_0000, 0x2_0000)];
/// End of the highest region.
pub const MEM_END: u64 = 0xa_0000;
/// "Near" addresses from the input land in `0..ADDR_SPAN`: the regions, the hole and past the
/// end.
pub const ADDR_SPAN: u64 = 0xc_0000;
/// Where queue `q`'s rings live: descriptor table, avail ring at +0x1000, used ring at +0x2000.
pub const RING_STRIDE: u64 = 0x4000;
/// Where the data blob (the rest of the input) is copied.
pub const DATA_BASE: u64 = 0x1_0000;
/// Largest queue size the rings use.
pub const MAX_QUEUE: u16 = 256;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// Device-writable.
pub const F_WRITE: u16 = 2;
/// Indirect table.
pub const F_INDIRECT: u16 = 4;

/// The fuzzer's bytes, read front to back; reads past the end give zeroes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A descriptor address from the input: top bit clear, a "near" address (modulo
/// [`ADDR_SPAN`]: in memory, in the hole or just past the end); top bit set, the raw value
/// (far away, up to the top of the address space).
pub fn map_addr(raw: u64) -> u64 {
    if raw >> 63 == 0 {
        raw % ADDR_SPAN
    } else {
        raw
    }
}

/// Whether `[addr, addr + len)` lies in guest memory (regions may be adjacent).
pub fn in_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if len == 0 {
        return REGIONS
            .iter()
            .any(|&(s, l)| addr >= s && addr < s + l as u64);
    }
    // Walk the regions in order; a range may run from one into the next adjacent one.
    let mut at = addr;
    for &(s, l) in &REGIONS {
        let e = s + l as u64;
        if at >= s && at < e {
            if end <= e {
                return true;
            }
            at = e;
        }
    }
    false
}

/// The process's guest memory: created once, rewritten from an [`Image`] before every run
/// (nothing keeps it between runs: the device workers of a turn are gone when it returns).
pub fn guest_memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> =
            REGIONS.iter().map(|&(s, l)| (GuestAddress(s), l)).collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("guest memory")
    })
}

/// Guest memory contents, built before a run and compared with memory after it.
pub struct Image {
    bytes: Vec<u8>,
}

impl Default for Image {
    fn default() -> Self {
        Self::new()
    }
}

impl Image {
    /// All zeroes.
    pub fn new() -> Self {
        Self {
            bytes: vec![0; MEM_END as usize],
        }
    }

    /// Writes `data` at `addr`, the parts that fall in memory.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = addr + i as u64;
            if in_memory(a, 1) {
                self.bytes[a as usize] = *b;
            }
        }
    }

    /// Reads `N` bytes at `addr`, if they are all in memory.
    pub fn read<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        if !in_memory(addr, N as u64) {
            return None;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[addr as usize..addr as usize + N]);
        Some(out)
    }

    /// A little-endian u16 at `addr`.
    pub fn u16(&self, addr: u64) -> Option<u16> {
        self.read::<2>(addr).map(u16::from_le_bytes)
    }

    /// Copies the image into guest memory.
    pub fn load(&self, mem: &GuestMemoryMmap) {
        for &(s, l) in &REGIONS {
            mem.write_slice(&self.bytes[s as usize..s as usize + l], GuestAddress(s))
                .expect("region write");
        }
    }

    /// Reads guest memory back into a new image.
    pub fn snapshot(mem: &GuestMemoryMmap) -> Self {
        let mut img = Self::new();
        for &(s, l) in &REGIONS {
            mem.read_slice(&mut img.bytes[s as usize..s as usize + l], GuestAddress(s))
                .expect("region read");
        }
        img
    }

    /// Addresses whose bytes differ between `self` and `other`.
    pub fn changed(&self, other: &Image) -> Vec<u64> {
        let mut out = Vec::new();
        for (block, (a, b)) in self
            .bytes
            .chunks(64)
            .zip(other.bytes.chunks(64))
            .enumerate()
        {
            if a != b {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    if x != y {
                        out.push((block * 64 + i) as u64);
                    }
                }
            }
        }
        out
    }

    /// Whether `range` is the same in both.
    pub fn same(&self, other: &Image, range: Range<u64>) -> bool {
        let r = range.start.min(MEM_END) as usize..range.end.min(MEM_END) as usize;
        self.bytes[r.clone()] == other.bytes[r]
    }
}

/// One descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl Desc {
    /// The 16 bytes of a descriptor table entry.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    fn decode(b: [u8; 16]) -> Self {
        Self {
            addr: u64::from_le_bytes(b[0..8].try_into().expect("8")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4")),
            flags: u16::from_le_bytes(b[12..14].try_into().expect("2")),
            next: u16::from_le_bytes(b[14..16].try_into().expect("2")),
        }
    }
}

/// A chain as virtio-queue 0.18 walks it: descriptors until one without NEXT, an index
/// outside the table, a table that cannot be read, a second level of indirection, or the
/// time-to-live (the table's size) running out; at most 4 GiB in total.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// The descriptors yielded (indirect ones replaced by their table's).
    pub descs: Vec<Desc>,
    /// It ended on a descriptor without NEXT: not a loop, not cut short.
    pub well_formed: bool,
}

impl Walk {
    /// Bytes the device may write: the writable descriptors' lengths.
    pub fn writable_bytes(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.flags & F_WRITE != 0)
            .map(|d| u64::from(d.len))
            .sum()
    }
}

/// Walks the chain at `head` of the table at `table` (`size` entries) in `img`.
pub fn walk(img: &Image, table: u64, size: u16, head: u16) -> Walk {
    let mut out = Walk::default();
    let (mut table, mut qsize, mut next, mut ttl) = (table, size, head, size);
    let mut indirect = false;
    let mut yielded: u32 = 0;
    loop {
        if ttl == 0 || next >= qsize {
            break;
        }
        let Some(at) = table.checked_add(u64::from(next) * 16) else {
            break;
        };
        let Some(raw) = img.read::<16>(at) else {
            break;
        };
        let d = Desc::decode(raw);
        if d.flags & F_INDIRECT != 0 {
            if indirect || !d.len.is_multiple_of(16) || d.len / 16 > u32::from(u16::MAX) {
                break;
            }
            table = d.addr;
            qsize = (d.len / 16) as u16;
            next = 0;
            ttl = qsize;
            indirect = true;
            continue;
        }
        match yielded.checked_add(d.len) {
            Some(y) => yielded = y,
            None => break,
        }
        out.descs.push(d);
        if d.flags & F_NEXT != 0 {
            next = d.next;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    out.well_formed = out.descs.last().is_some_and(|d| d.flags & F_NEXT == 0);
    out
}

/// A split ring built from the input.
#[derive(Clone, Debug)]
pub struct Ring {
    /// Queue index (its place in memory).
    pub index: u16,
    /// Queue size.
    pub size: u16,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Free-running index of the first chain published (the device starts there).
    pub start: u16,
    /// How far the driver moved the avail index past `start`.
    pub count: u16,
    /// The heads in the avail ring, from `start` on (`min(count, size)` of them).
    pub heads: Vec<u16>,
}

impl Ring {
    /// Descriptor table address.
    pub fn desc(&self) -> u64 {
        u64::from(self.index) * RING_STRIDE
    }

    /// Avail ring address.
    pub fn avail(&self) -> u64 {
        self.desc() + 0x1000
    }

    /// Used ring address.
    pub fn used(&self) -> u64 {
        self.desc() + 0x2000
    }

    /// The used ring's bytes: flags, idx, elements, avail_event.
    pub fn used_area(&self) -> Range<u64> {
        self.used()..self.used() + 6 + 8 * u64::from(self.size)
    }

    /// Reads a ring program from the input and writes it into `img`:
    ///
    /// `size_log u8, flags u8 (bit 0 EVENT_IDX), start u16, count u16, used_event u16,
    /// avail_flags u16, ndesc u8, ndesc x (addr u64, len u32, flags u16, next u16), then
    /// min(count, size) heads u16`.
    ///
    /// Descriptor addresses go through [`map_addr`]; descriptors past `ndesc` are zero.
    pub fn decode(index: u16, input: &mut Input, img: &mut Image) -> Self {
        let size = 1u16 << (input.u8() % 9);
        let flags = input.u8();
        let start = input.u16();
        let count = input.u16();
        let used_event = input.u16();
        let avail_flags = input.u16();
        let ndesc = u16::from(input.u8()).min(size);
        let mut ring = Ring {
            index,
            size,
            event_idx: flags & 1 != 0,
            start,
            count,
            heads: Vec::new(),
        };
        for i in 0..ndesc {
            let d = Desc {
                addr: map_addr(input.u64()),
                len: input.u32(),
                flags: input.u16(),
                next: input.u16(),
            };
            img.write(ring.desc() + 16 * u64::from(i), &d.encode());
        }
        let avail = ring.avail();
        img.write(avail, &avail_flags.to_le_bytes());
        img.write(avail + 2, &start.wrapping_add(count).to_le_bytes());
        for k in 0..count.min(size) {
            let head = input.u16();
            ring.heads.push(head);
            let slot = start.wrapping_add(k) % size;
            img.write(avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        }
        img.write(avail + 4 + 2 * u64::from(size), &used_event.to_le_bytes());
        img.write(ring.used() + 2, &start.to_le_bytes());
        ring
    }

    /// The device's side of the ring, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(MAX_QUEUE).expect("queue");
        q.try_set_size(self.size).expect("power-of-two size");
        let half = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (l, h) = half(self.desc());
        q.set_desc_table_address(l, h);
        let (l, h) = half(self.avail());
        q.set_avail_ring_address(l, h);
        let (l, h) = half(self.used());
        q.set_used_ring_address(l, h);
        q.set_event_idx(self.event_idx);
        q.set_next_avail(self.start);
        q.set_next_used(self.start);
        q.set_ready(true);
        q
    }

    /// Every chain the device may take, walked in `img` (those in range of the table).
    pub fn walks(&self, img: &Image) -> Vec<(u16, Walk)> {
        self.heads
            .iter()
            .filter(|&&h| h < self.size)
            .map(|&h| (h, walk(img, self.desc(), self.size, h)))
            .collect()
    }

    /// Published chains that are well formed.
    pub fn well_formed(&self, img: &Image) -> u64 {
        self.walks(img)
            .iter()
            .filter(|(_, w)| w.well_formed)
            .count() as u64
    }

    /// The bytes a device may write for this ring: every writable descriptor of the table
    /// and of every indirect table it names, and the used ring.
    pub fn writable(&self, img: &Image) -> Vec<Range<u64>> {
        let mut out = vec![self.used_area()];
        let mut tables = vec![(self.desc(), u32::from(self.size))];
        for i in 0..u64::from(self.size) {
            if let Some(raw) = img.read::<16>(self.desc() + 16 * i) {
                let d = Desc::decode(raw);
                if d.flags & F_INDIRECT != 0 && d.len.is_multiple_of(16) {
                    tables.push((d.addr, (d.len / 16).min(u32::from(u16::MAX))));
                }
            }
        }
        for (table, n) in tables {
            for i in 0..u64::from(n) {
                let Some(at) = table.checked_add(16 * i) else {
                    break;
                };
                let Some(raw) = img.read::<16>(at) else {
                    break;
                };
                let d = Desc::decode(raw);
                if d.flags & F_WRITE != 0 && d.flags & F_INDIRECT == 0 && d.len > 0 {
                    out.push(d.addr..d.addr.saturating_add(u64::from(d.len)));
                }
            }
        }
        out
    }

    /// The descriptor tables the chains are read from (for "did the turn rewrite them").
    pub fn tables(&self, img: &Image) -> Vec<Range<u64>> {
        let table = self.desc()..self.desc() + 16 * u64::from(self.size);
        let mut out = Vec::from([table]);
        for i in 0..u64::from(self.size) {
            if let Some(raw) = img.read::<16>(self.desc() + 16 * i) {
                let d = Desc::decode(raw);
                if d.flags & F_INDIRECT != 0 {
                    out.push(d.addr..d.addr.saturating_add(u64::from(d.len)));
                }
            }
        }
        out.push(self.avail()..self.avail() + 6 + 2 * u64::from(self.size));
        out
    }
}

/// What a device turn did to guest memory, with the checks every chain target makes.
pub struct After {
    /// Memory before the turn.
    pub before: Image,
    /// Memory after it.
    pub after: Image,
}

impl After {
    /// Snapshots memory after a turn that started from `before`.
    pub fn take(before: Image, mem: &GuestMemoryMmap) -> Self {
        let after = Image::snapshot(mem);
        Self { before, after }
    }

    /// Whether the turn could not have changed what the device read: no writable buffer
    /// (before or after the turn) overlaps a descriptor table, an avail ring or a used ring,
    /// and no used ring overlaps a table. Only then are the chains walked before the turn the
    /// ones the device saw, and the used ring holds only what the device put there; the
    /// checks below assume it.
    pub fn clean(&self, rings: &[&Ring]) -> bool {
        let overlap = |a: &Range<u64>, b: &Range<u64>| a.start < b.end && b.start < a.end;
        let mut writable = Vec::new();
        let mut tables = Vec::new();
        let mut used = Vec::new();
        for r in rings {
            // The first range of `writable` is the used ring itself.
            writable.extend(r.writable(&self.before).into_iter().skip(1));
            writable.extend(r.writable(&self.after).into_iter().skip(1));
            tables.extend(r.tables(&self.before));
            tables.extend(r.tables(&self.after));
            used.push(r.used_area());
        }
        let private: Vec<&Range<u64>> = tables.iter().chain(used.iter()).collect();
        !writable
            .iter()
            .any(|w| private.iter().any(|p| overlap(w, p)))
            && !used.iter().any(|u| tables.iter().any(|t| overlap(u, t)))
    }

    /// Chains `ring`'s device returned: the used index's move, checked against what was
    /// published, and each used entry checked against the avail ring. Returns the used
    /// entries (head, len). Only meaningful when [`After::clean`].
    pub fn check_used(&self, ring: &Ring) -> Vec<(u32, u32)> {
        let used_idx = self.after.u16(ring.used() + 2).expect("used idx in memory");
        let moved = used_idx.wrapping_sub(ring.start);
        if ring.count > ring.size {
            assert_eq!(
                moved, 0,
                "queue {}: avail index {} ahead of the device, yet {moved} chains came back",
                ring.index, ring.count
            );
            return Vec::new();
        }
        assert!(
            moved <= ring.count,
            "queue {}: {moved} chains came back, {} were published",
            ring.index,
            ring.count
        );
        let mut published: HashMap<u16, u32> = HashMap::new();
        for &h in &ring.heads {
            *published.entry(h).or_default() += 1;
        }
        let mut used = Vec::new();
        for k in 0..moved {
            let slot = ring.start.wrapping_add(k) % ring.size;
            let at = ring.used() + 4 + 8 * u64::from(slot);
            let id = u32::from_le_bytes(self.after.read::<4>(at).expect("used elem"));
            let len = u32::from_le_bytes(self.after.read::<4>(at + 4).expect("used elem"));
            assert!(
                id < u32::from(ring.size),
                "queue {}: used entry names descriptor {id}, table of {}",
                ring.index,
                ring.size
            );
            let left = published.entry(id as u16).or_default();
            assert!(
                *left > 0,
                "queue {}: used entry names head {id}, which was not published (or was returned more often)",
                ring.index
            );
            *left -= 1;
            used.push((id, len));
        }
        used
    }

    /// Every changed byte lies in a writable buffer of one of `rings` or in their used rings.
    /// Only meaningful when [`After::clean`] (a buffer that rewrote a descriptor mid-turn
    /// could have allowed a write that neither image shows).
    pub fn check_writes(&self, rings: &[&Ring]) {
        let changed = self.before.changed(&self.after);
        if changed.is_empty() {
            return;
        }
        let mut allowed: Vec<Range<u64>> = Vec::new();
        for r in rings {
            // Before and after: a buffer may have rewritten a descriptor of a later chain.
            allowed.extend(r.writable(&self.before));
            allowed.extend(r.writable(&self.after));
        }
        for a in changed {
            assert!(
                allowed.iter().any(|r| r.contains(&a)),
                "the device wrote guest memory at {a:#x}, outside every writable buffer and used ring"
            );
        }
    }
}

/// The bytes of a chain's buffers, in order (`None` if one is not in memory; a zero-length
/// buffer holds nothing wherever it points).
pub fn chain_bytes(img: &Image, w: &Walk) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for d in &w.descs {
        if d.len == 0 {
            continue;
        }
        if !in_memory(d.addr, u64::from(d.len)) {
            return None;
        }
        out.extend_from_slice(&img.bytes[d.addr as usize..(d.addr + u64::from(d.len)) as usize]);
    }
    Some(out)
}

/// Copies the data blob (the rest of the input) to [`DATA_BASE`].
pub fn load_data(img: &mut Image, data: &[u8]) {
    let room = (REGIONS[0].1 as u64 - DATA_BASE) as usize;
    img.write(DATA_BASE, &data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_ranges() {
        assert!(in_memory(0, 0x4_0000));
        assert!(in_memory(0x3_fff0, 0x20), "across adjacent regions");
        assert!(!in_memory(0x5_fff0, 0x20), "into the hole");
        assert!(in_memory(0x9_fff0, 0x10));
        assert!(!in_memory(0x9_fff0, 0x11));
        assert!(!in_memory(u64::MAX, 2));
    }

    #[test]
    fn walks_follow_virtio_queue() {
        let mut img = Image::new();
        let put = |img: &mut Image, at: u64, addr: u64, len: u32, flags: u16, next: u16| {
            img.write(
                at,
                &Desc {
                    addr,
                    len,
                    flags,
                    next,
                }
                .encode(),
            )
        };
        put(&mut img, 0, 0x1000, 16, F_NEXT, 1);
        put(&mut img, 16, 0x2000, 1, F_WRITE, 0);
        let w = walk(&img, 0, 4, 0);
        assert!(w.well_formed && w.descs.len() == 2);
        // A loop runs out of time to live with NEXT set.
        put(&mut img, 16, 0x2000, 1, F_NEXT, 0);
        let w = walk(&img, 0, 4, 0);
        assert!(!w.well_formed && w.descs.len() == 4);
        // Indirect: a table of two.
        put(&mut img, 0x3000, 0x1000, 16, F_NEXT, 1);
        put(&mut img, 0x3010, 0x2000, 1, F_WRITE, 0);
        put(&mut img, 32, 0x3000, 32, F_INDIRECT, 0);
        let w = walk(&img, 0, 4, 2);
        assert!(w.well_formed && w.descs.len() == 2);
    }
}
