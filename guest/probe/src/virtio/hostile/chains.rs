//! Hostile chains published at once and what comes back of them.

use super::device::HDev;
use super::{Tally, WAIT_MS};
use crate::arch::Deadline;

/// The most chains one round publishes.
const MAX_CHAINS: usize = 64;

/// A chain the hostile code publishes: its head, and whether the rules say it comes back.
#[derive(Clone, Copy)]
struct Hostile {
    head: u16,
    returns: bool,
}

/// The chains of one round, in the order they are published.
pub(super) struct Chains {
    list: [Hostile; MAX_CHAINS],
    n: usize,
}

impl Chains {
    pub(super) fn new() -> Self {
        Self {
            list: [Hostile {
                head: 0,
                returns: true,
            }; MAX_CHAINS],
            n: 0,
        }
    }

    /// Heads `0..n`, each one returned.
    pub(super) fn returning(n: u16) -> Self {
        let mut chains = Self::new();
        for head in 0..n {
            chains.add(head, true);
        }
        chains
    }

    /// The chain at `head`; `returns`: the rules say the device gives it back.
    pub(super) fn add(&mut self, head: u16, returns: bool) {
        self.list[self.n] = Hostile { head, returns };
        self.n += 1;
    }
}

/// Publishes `chains` on queue `q` at once, waits for what should come back, and counts.
/// Returns the used entries taken (head, length), at most 64.
pub(super) fn run_chains(
    dev: &mut HDev,
    t: &mut Tally,
    q: u16,
    chains: &Chains,
) -> ([(u32, u32); MAX_CHAINS], usize) {
    let chains = &chains.list[..chains.n];
    let heads: [u16; MAX_CHAINS] = core::array::from_fn(|i| chains.get(i).map_or(0, |c| c.head));
    let n = chains.len();
    let expected = chains.iter().filter(|c| c.returns).count() as u16;
    t.r.chains += n as u32;
    t.r.chains_expected += expected as u32;
    dev.publish(q, &heads[..n]);
    let got = dev.wait_used(q, expected, WAIT_MS);
    // A little longer: an entry the rules say is skipped must not show up either.
    Deadline::after_ms(10).wait();
    let got = got.max(dev.new_used(q));
    let mut used = [(0u32, 0u32); MAX_CHAINS];
    let mut k = 0;
    for _ in 0..got {
        let e = dev.take(q);
        if k < used.len() {
            used[k] = e;
            k += 1;
        }
        if !chains.iter().any(|c| c.head as u32 == e.0 && c.returns) {
            t.errors
                .push("hostile: a used entry names a head that was not published");
        }
    }
    t.r.chains_returned += (got as u32).min(expected as u32);
    if got > expected {
        t.errors
            .push("hostile: more chains came back than were published");
    }
    (used, k)
}
