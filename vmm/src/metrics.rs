//! Counters shared by the vCPU threads and devices, and the boot-time marks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Counters of one VM. Plain relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug)]
pub struct VmMetrics {
    started: Instant,
    /// Port-I/O exits handled in userspace.
    pub pio_exits: AtomicU64,
    /// MMIO exits handled in userspace.
    pub mmio_exits: AtomicU64,
    /// Accesses to ports or addresses with no device.
    pub unhandled_accesses: AtomicU64,
    /// Microseconds from VM creation to the boot-timer write, 0 until then.
    boot_timer_us: AtomicU64,
    /// Microseconds from VM creation to the first byte on the serial port, 0 until then.
    first_output_us: AtomicU64,
}

/// A copy of the counters for reports.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MetricsSnapshot {
    /// Port-I/O exits.
    pub pio_exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
    /// Accesses nobody handled.
    pub unhandled_accesses: u64,
    /// Milliseconds to the boot-timer write.
    pub boot_timer_ms: Option<f64>,
    /// Milliseconds to the first serial output.
    pub first_output_ms: Option<f64>,
}

impl VmMetrics {
    /// Counters starting now.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            pio_exits: AtomicU64::new(0),
            mmio_exits: AtomicU64::new(0),
            unhandled_accesses: AtomicU64::new(0),
            boot_timer_us: AtomicU64::new(0),
            first_output_us: AtomicU64::new(0),
        }
    }

    fn mark_once(&self, slot: &AtomicU64) -> bool {
        let us = u64::try_from(self.started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        slot.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Records the boot-timer write; true the first time.
    pub fn mark_boot_timer(&self) -> bool {
        self.mark_once(&self.boot_timer_us)
    }

    /// Records the first serial output.
    pub fn mark_first_output(&self) {
        if self.first_output_us.load(Ordering::Relaxed) == 0 {
            self.mark_once(&self.first_output_us);
        }
    }

    /// Counts one exit.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let ms = |slot: &AtomicU64| match slot.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        };
        MetricsSnapshot {
            pio_exits: self.pio_exits.load(Ordering::Relaxed),
            mmio_exits: self.mmio_exits.load(Ordering::Relaxed),
            unhandled_accesses: self.unhandled_accesses.load(Ordering::Relaxed),
            boot_timer_ms: ms(&self.boot_timer_us),
            first_output_ms: ms(&self.first_output_us),
        }
    }
}

/// Threads of this process now, from /proc/self/task.
pub fn process_threads() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count() as u64)
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timer_marks_once() {
        let m = VmMetrics::new(Instant::now());
        assert!(m.snapshot().boot_timer_ms.is_none());
        assert!(m.mark_boot_timer());
        assert!(!m.mark_boot_timer());
        assert!(m.snapshot().boot_timer_ms.is_some());
        assert!(process_rss_bytes().unwrap() > 0);
    }
}
