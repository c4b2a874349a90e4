//! A device's record of the guest's mistakes. The first of each kind is logged with its
//! details; later ones are counted and summed up at most once per [`SUMMARY_INTERVAL`]. The
//! VMM runs inside the shim, whose log containerd reads through a pipe: a guest that could
//! write lines at will could stall the shim's threads.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two summaries of one device.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Kinds of guest mistakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// The available index moved more than the queue size past the device's position.
    AvailIndexTooFar,
    /// An available-ring entry names a descriptor beyond the table.
    HeadOutOfRange,
    /// The rings could not be read or written.
    RingAccess,
    /// A descriptor chain that is not a well-formed request, packet or frame.
    MalformedChain,
    /// A well-formed request the device refuses (limits, bounds, unknown connection).
    RefusedRequest,
    /// DRIVER_OK without queues the device needs (all of them, or some of its pairs).
    IncompleteSetup,
}

impl GuestFault {
    const ALL: [GuestFault; 6] = [
        GuestFault::AvailIndexTooFar,
        GuestFault::HeadOutOfRange,
        GuestFault::RingAccess,
        GuestFault::MalformedChain,
        GuestFault::RefusedRequest,
        GuestFault::IncompleteSetup,
    ];

    /// Short name for log lines.
    pub fn name(self) -> &'static str {
        match self {
            GuestFault::AvailIndexTooFar => "avail_index_too_far",
            GuestFault::HeadOutOfRange => "head_out_of_range",
            GuestFault::RingAccess => "ring_access",
            GuestFault::MalformedChain => "malformed_chain",
            GuestFault::RefusedRequest => "refused_request",
            GuestFault::IncompleteSetup => "incomplete_setup",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

const KINDS: usize = GuestFault::ALL.len();

/// The guest mistakes one device saw, by kind, and the log lines they cost.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct FaultCounts {
    /// [`GuestFault::AvailIndexTooFar`].
    pub avail_index_too_far: u64,
    /// [`GuestFault::HeadOutOfRange`].
    pub head_out_of_range: u64,
    /// [`GuestFault::RingAccess`].
    pub ring_access: u64,
    /// [`GuestFault::MalformedChain`].
    pub malformed_chain: u64,
    /// [`GuestFault::RefusedRequest`].
    pub refused_request: u64,
    /// [`GuestFault::IncompleteSetup`].
    pub incomplete_setup: u64,
    /// Log lines written about them (first of each kind, then summaries).
    pub log_lines: u64,
}

impl FaultCounts {
    /// The counts of two logs together (a device model's and its transport's).
    pub fn merged(&self, other: &FaultCounts) -> FaultCounts {
        FaultCounts {
            avail_index_too_far: self.avail_index_too_far + other.avail_index_too_far,
            head_out_of_range: self.head_out_of_range + other.head_out_of_range,
            ring_access: self.ring_access + other.ring_access,
            malformed_chain: self.malformed_chain + other.malformed_chain,
            refused_request: self.refused_request + other.refused_request,
            incomplete_setup: self.incomplete_setup + other.incomplete_setup,
            log_lines: self.log_lines + other.log_lines,
        }
    }
}

struct Unsummed {
    since: Instant,
    counts: [u64; KINDS],
}

/// The guest mistakes one device saw.
pub struct FaultLog {
    device: &'static str,
    totals: [AtomicU64; KINDS],
    unsummed: Mutex<Unsummed>,
    lines: AtomicU64,
}

impl FaultLog {
    /// An empty record for `device` (its name in log lines).
    pub fn new(device: &'static str) -> Self {
        Self {
            device,
            totals: Default::default(),
            unsummed: Mutex::new(Unsummed {
                since: Instant::now(),
                counts: [0; KINDS],
            }),
            lines: AtomicU64::new(0),
        }
    }

    /// Records one mistake; `detail` is logged only for the first of its kind.
    pub fn record(&self, fault: GuestFault, detail: &dyn Display) {
        let before = self.totals[fault.slot()].fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            self.lines.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                device = self.device,
                fault = fault.name(),
                "guest error: {detail} (further ones are counted and summed up)"
            );
            return;
        }
        let mut unsummed = self.unsummed.lock().unwrap_or_else(|e| e.into_inner());
        unsummed.counts[fault.slot()] += 1;
        if unsummed.since.elapsed() >= SUMMARY_INTERVAL {
            self.summarise(&mut unsummed);
        }
    }

    /// Logs what was counted since the last summary, if anything.
    pub fn flush(&self) {
        let mut unsummed = self.unsummed.lock().unwrap_or_else(|e| e.into_inner());
        self.summarise(&mut unsummed);
    }

    /// As [`FaultLog::flush`], but only once [`SUMMARY_INTERVAL`] has passed since the last
    /// summary: a worker that stops calls it. A guest that resets its device after every
    /// mistake must not get a line per reset (the device's log outlives its workers, and
    /// what is left unsummed is logged when it goes).
    pub fn flush_due(&self) {
        let mut unsummed = self.unsummed.lock().unwrap_or_else(|e| e.into_inner());
        if unsummed.since.elapsed() >= SUMMARY_INTERVAL {
            self.summarise(&mut unsummed);
        }
    }

    fn summarise(&self, unsummed: &mut Unsummed) {
        let seconds = unsummed.since.elapsed().as_secs();
        unsummed.since = Instant::now();
        if unsummed.counts.iter().all(|&n| n == 0) {
            return;
        }
        let counts: Vec<String> = GuestFault::ALL
            .iter()
            .filter(|f| unsummed.counts[f.slot()] > 0)
            .map(|f| format!("{}={}", f.name(), unsummed.counts[f.slot()]))
            .collect();
        unsummed.counts = [0; KINDS];
        self.lines.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            device = self.device,
            "guest errors in the last {seconds} s: {}",
            counts.join(" ")
        );
    }

    /// Mistakes of `fault`'s kind so far.
    pub fn count(&self, fault: GuestFault) -> u64 {
        self.totals[fault.slot()].load(Ordering::Relaxed)
    }

    /// Log lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Every count at once.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            avail_index_too_far: self.count(GuestFault::AvailIndexTooFar),
            head_out_of_range: self.count(GuestFault::HeadOutOfRange),
            ring_access: self.count(GuestFault::RingAccess),
            malformed_chain: self.count(GuestFault::MalformedChain),
            refused_request: self.count(GuestFault::RefusedRequest),
            incomplete_setup: self.count(GuestFault::IncompleteSetup),
            log_lines: self.lines(),
        }
    }
}

impl Drop for FaultLog {
    fn drop(&mut self) {
        // Nothing counted goes unreported.
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_line_per_kind_plus_summaries() {
        let log = FaultLog::new("test");
        for i in 0..100_000 {
            log.record(GuestFault::MalformedChain, &i);
            log.record(GuestFault::HeadOutOfRange, &i);
        }
        log.flush();
        let counts = log.counts();
        assert_eq!(counts.malformed_chain, 100_000);
        assert_eq!(counts.log_lines, log.lines());
        assert_eq!(log.count(GuestFault::MalformedChain), 100_000);
        assert_eq!(log.count(GuestFault::HeadOutOfRange), 100_000);
        assert_eq!(log.count(GuestFault::RingAccess), 0);
        // Two first lines, the final summary, and at most one summary per interval that
        // passed meanwhile (none on any machine that runs this in under 10 s).
        assert!(log.lines() >= 3 && log.lines() < 3 + 10, "{}", log.lines());
    }

    #[test]
    fn a_stop_after_every_mistake_writes_no_line_per_stop() {
        // Found by the hostile probe's reset storm: the worker loop summed up what was left at
        // every stop, so a guest that reset its device after each malformed chain got a log
        // line per reset. Stops now sum up only once the interval has passed.
        let log = FaultLog::new("test");
        for i in 0..1000 {
            log.record(GuestFault::MalformedChain, &i);
            log.flush_due();
        }
        assert_eq!(log.lines(), 1, "the first mistake only");
        log.flush();
        assert_eq!(log.lines(), 2, "the rest in one summary");
        assert_eq!(log.counts().malformed_chain, 1000);
    }

    #[test]
    fn nothing_to_sum_up_writes_nothing() {
        let log = FaultLog::new("test");
        log.flush();
        log.record(GuestFault::RingAccess, &"x");
        log.flush();
        assert_eq!(log.lines(), 1);
    }
}
