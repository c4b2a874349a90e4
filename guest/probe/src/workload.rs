//! What the block workload does, independent of the hardware: which sectors, which data,
//! how requests are grouped into batches, and how a read-back is checked.

/// Bytes per request (one 4 KiB block = 8 sectors).
pub const BLOCK: usize = 4096;
pub const SECTORS_PER_BLOCK: u64 = 8;
pub const WORDS_PER_BLOCK: usize = BLOCK / 8;
/// Descriptors per request: header, data, status.
pub const DESCS_PER_REQUEST: u16 = 3;

/// The requests of one queue: `requests / 2` writes, then as many reads of the same blocks,
/// submitted `batch` at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// R (even, >= 2).
    pub requests: u32,
    /// B = min(R/2, queue_size/3).
    pub batch: u32,
}

/// One batch: requests `first..first+count` of a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub write: bool,
    pub first: u32,
    pub count: u32,
}

impl Plan {
    /// `None` when the queue cannot hold one request (fewer than 3 descriptors).
    pub fn new(requests: u32, queue_size: u16) -> Option<Plan> {
        let batch = (requests / 2).min((queue_size / DESCS_PER_REQUEST) as u32);
        (batch > 0).then_some(Plan { requests, batch })
    }

    /// Writes (= reads) per queue.
    pub fn per_phase(&self) -> u32 {
        self.requests / 2
    }

    /// Batches per phase.
    pub fn batches_per_phase(&self) -> u32 {
        self.per_phase().div_ceil(self.batch)
    }

    /// Batches per queue in all: the interrupts an MSI queue vector should receive.
    pub fn batches(&self) -> u32 {
        2 * self.batches_per_phase()
    }

    /// Batch `n` (0..batches()): writes first, then reads.
    pub fn batch(&self, n: u32) -> Batch {
        let per = self.batches_per_phase();
        let (write, k) = if n < per { (true, n) } else { (false, n - per) };
        let first = k * self.batch;
        Batch {
            write,
            first,
            count: self.batch.min(self.per_phase() - first),
        }
    }

    /// First sector of request `i` of queue `q`: every queue has its own area.
    pub fn sector(&self, q: u16, i: u32) -> u64 {
        q as u64 * self.requests as u64 * SECTORS_PER_BLOCK + i as u64 * SECTORS_PER_BLOCK
    }

    /// Sectors the workload needs on a device with `queues` queues.
    pub fn sectors_needed(&self, queues: u16) -> u64 {
        match queues {
            0 => 0,
            q => self.sector(q - 1, self.per_phase()),
        }
    }
}

/// Owner of queue `q` among `cpus` online CPUs (by position in the online list).
pub fn owner(q: u16, cpus: usize) -> usize {
    q as usize % cpus.max(1)
}

/// Word `k` of the data written by request `i` of queue `q` on device `dev`: differs between
/// requests, queues and devices in every word, so stale or misplaced blocks are caught.
pub fn pattern_word(dev: u8, q: u16, i: u32, k: usize) -> u64 {
    request_seed(dev, q, i) ^ (k as u64).wrapping_mul(0x0101_0101_0101_0101)
}

/// A well-mixed 64-bit value per request (splitmix64's finaliser), so two requests' patterns
/// differ in nearly every byte.
pub fn request_seed(dev: u8, q: u16, i: u32) -> u64 {
    let mut x =
        ((dev as u64) << 56 | (q as u64) << 40 | i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills a block with request `i`'s pattern.
pub fn fill(block: &mut [u64; WORDS_PER_BLOCK], dev: u8, q: u16, i: u32) {
    let seed = request_seed(dev, q, i);
    for (k, w) in block.iter_mut().enumerate() {
        *w = seed ^ (k as u64).wrapping_mul(0x0101_0101_0101_0101);
    }
}

/// Bytes of `block` that differ from request `i`'s pattern. `read(k)` returns word k (the
/// caller reads device-written memory with volatile loads).
pub fn mismatched_bytes(read: impl Fn(usize) -> u64, dev: u8, q: u16, i: u32) -> u32 {
    let seed = request_seed(dev, q, i);
    let mut bad = 0;
    for k in 0..WORDS_PER_BLOCK {
        let diff = read(k) ^ seed ^ (k as u64).wrapping_mul(0x0101_0101_0101_0101);
        if diff != 0 {
            bad += diff.to_le_bytes().iter().filter(|&&b| b != 0).count() as u32;
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan() {
        // R = 32 on a 64-entry queue: one batch of 16 writes, one of 16 reads.
        let p = Plan::new(32, 64).unwrap();
        assert_eq!(p.batch, 16);
        assert_eq!(p.batches(), 2);
        assert_eq!(
            p.batch(0),
            Batch {
                write: true,
                first: 0,
                count: 16
            }
        );
        assert_eq!(
            p.batch(1),
            Batch {
                write: false,
                first: 0,
                count: 16
            }
        );
    }

    #[test]
    fn uneven_batches() {
        // R = 64: 32 per phase in batches of 21 -> 21 + 11, twice.
        let p = Plan::new(64, 64).unwrap();
        assert_eq!(p.batch, 21);
        assert_eq!(p.batches(), 4);
        let b: std::vec::Vec<_> = (0..4).map(|n| p.batch(n)).collect();
        assert_eq!(
            b,
            [
                Batch {
                    write: true,
                    first: 0,
                    count: 21
                },
                Batch {
                    write: true,
                    first: 21,
                    count: 11
                },
                Batch {
                    write: false,
                    first: 0,
                    count: 21
                },
                Batch {
                    write: false,
                    first: 21,
                    count: 11
                },
            ]
        );
        // every request of a phase in exactly one batch
        let total: u32 = (0..p.batches()).map(|n| p.batch(n).count).sum();
        assert_eq!(total, 64);
    }

    #[test]
    fn tiny_queues() {
        assert_eq!(Plan::new(2, 2), None);
        let p = Plan::new(2, 4).unwrap();
        assert_eq!((p.batch, p.batches()), (1, 2));
        let p = Plan::new(8, 4).unwrap();
        assert_eq!((p.batch, p.batches()), (1, 8));
    }

    #[test]
    fn sectors() {
        let p = Plan::new(32, 64).unwrap();
        assert_eq!(p.sector(0, 0), 0);
        assert_eq!(p.sector(0, 15), 120);
        assert_eq!(p.sector(1, 0), 256);
        assert_eq!(p.sector(3, 15), 3 * 256 + 120);
        assert_eq!(p.sectors_needed(4), 3 * 256 + 128);
        assert_eq!(p.sectors_needed(0), 0);
    }

    #[test]
    fn owners() {
        assert_eq!(
            (0..4).map(|q| owner(q, 2)).collect::<std::vec::Vec<_>>(),
            [0, 1, 0, 1]
        );
        assert_eq!(owner(5, 1), 0);
        assert_eq!(owner(5, 0), 0);
    }

    #[test]
    fn patterns_differ_and_verify() {
        let mut a = [0u64; WORDS_PER_BLOCK];
        fill(&mut a, 0, 1, 2);
        assert_eq!(mismatched_bytes(|k| a[k], 0, 1, 2), 0);
        for (dev, q, i) in [(1, 1, 2), (0, 0, 2), (0, 1, 3), (0, 2, 2)] {
            let bad = mismatched_bytes(|k| a[k], dev, q, i);
            assert!(bad > 3000, "{dev} {q} {i}: {bad}");
            for k in 0..WORDS_PER_BLOCK {
                assert_ne!(a[k], pattern_word(dev, q, i, k));
            }
        }
        // an all-zero block (a read that did nothing) fails nearly every byte
        assert!(mismatched_bytes(|_| 0, 0, 1, 2) > 4000);
        a[7] ^= 0x0000_ff00_0000_0001;
        assert_eq!(mismatched_bytes(|k| a[k], 0, 1, 2), 2);
    }
}
