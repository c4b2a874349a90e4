//! The phase-marker port: a test guest writes a phase number to it (1 = workload starts,
//! 2 = workload done) and the VMM snapshots its exit counters and KVM's, so that reports can
//! count the exits of the workload alone, without boot and console output.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

use crate::bus::BusDevice;
use crate::kvm_stats::{self, StatsFd};
use crate::metrics::VmMetrics;

/// Counters at one mark.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PhaseMark {
    /// The value the guest wrote.
    pub phase: u8,
    /// Userspace port-I/O exits so far.
    pub pio_exits: u64,
    /// Userspace MMIO exits so far.
    pub mmio_exits: u64,
    /// KVM's counters so far, summed over vCPUs.
    pub kvm: BTreeMap<String, u64>,
    /// The VMM's own threads alive at the mark (`confine::live_threads`: a worker a device
    /// reset left behind shows as a difference between two marks with the same devices
    /// running).
    pub threads: Option<u64>,
    /// Microseconds since the first mark.
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// Shared list of marks.
pub type Marks = Arc<Mutex<Vec<PhaseMark>>>;

/// The phase-marker port.
pub struct PhaseMarker {
    metrics: Arc<VmMetrics>,
    stats: Arc<OnceLock<Vec<StatsFd>>>,
    marks: Marks,
}

impl PhaseMarker {
    /// A marker reading `metrics` and, once set, the vCPUs' KVM statistics.
    pub fn new(metrics: Arc<VmMetrics>, stats: Arc<OnceLock<Vec<StatsFd>>>, marks: Marks) -> Self {
        Self {
            metrics,
            stats,
            marks,
        }
    }
}

impl BusDevice for PhaseMarker {
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&phase) = data.first() else {
            return;
        };
        let snapshot = self.metrics.snapshot();
        let kvm = self
            .stats
            .get()
            .map(|fds| {
                let all: Vec<_> = fds.iter().filter_map(|s| s.read().ok()).collect();
                kvm_stats::sum(&all)
            })
            .unwrap_or_default();
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        // A guest writing forever must not grow the list forever.
        if marks.len() < 64 {
            marks.push(PhaseMark {
                phase,
                pio_exits: snapshot.pio_exits,
                mmio_exits: snapshot.mmio_exits,
                kvm,
                threads: Some(crate::confine::live_threads()),
                at: Some(Instant::now()),
            });
        }
    }
}

/// Counters between two marks.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PhaseDelta {
    /// Userspace port-I/O exits (the two marker writes excluded).
    pub pio_exits: u64,
    /// Userspace MMIO exits.
    pub mmio_exits: u64,
    /// KVM's `exits` counter.
    pub kvm_exits: u64,
    /// KVM's other counters that moved.
    pub kvm: BTreeMap<String, u64>,
    /// Milliseconds between the marks.
    pub ms: f64,
}

/// What happened between the first mark with `from` and the first later mark with `to`.
pub fn delta(marks: &[PhaseMark], from: u8, to: u8) -> Option<PhaseDelta> {
    let start = marks.iter().position(|m| m.phase == from)?;
    let end = marks[start..].iter().find(|m| m.phase == to)?;
    let a = &marks[start];
    let kvm: BTreeMap<String, u64> = end
        .kvm
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(a.kvm.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect();
    Some(PhaseDelta {
        // The write of the first mark completed before its snapshot; the second one's did not.
        pio_exits: end.pio_exits.saturating_sub(a.pio_exits),
        mmio_exits: end.mmio_exits.saturating_sub(a.mmio_exits),
        kvm_exits: kvm.get("exits").copied().unwrap_or(0),
        kvm,
        ms: match (a.at, end.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64() * 1000.0,
            _ => 0.0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_snapshot_the_counters() {
        let metrics = Arc::new(VmMetrics::new(Instant::now()));
        let marks: Marks = Arc::default();
        let mut marker = PhaseMarker::new(metrics.clone(), Arc::default(), marks.clone());
        marker.write(0, &[1]);
        for _ in 0..5 {
            VmMetrics::count(&metrics.pio_exits);
        }
        VmMetrics::count(&metrics.mmio_exits);
        marker.write(0, &[2]);
        let d = delta(&marks.lock().unwrap(), 1, 2).unwrap();
        assert_eq!((d.pio_exits, d.mmio_exits), (5, 1));
        assert!(delta(&marks.lock().unwrap(), 2, 1).is_none());
        assert!(marks.lock().unwrap()[0].threads.is_some());
        for _ in 0..100 {
            marker.write(0, &[3]);
        }
        assert_eq!(marks.lock().unwrap().len(), 64);
    }
}
