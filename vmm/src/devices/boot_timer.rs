//! The boot timer: a port the guest writes once when it has booted, as Firecracker's boot timer
//! device. The VMM records how long that took from VM creation.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::layout::BOOT_TIMER_MAGIC;
use crate::metrics::VmMetrics;

/// The boot-timer port.
pub struct BootTimer {
    metrics: Arc<VmMetrics>,
}

impl BootTimer {
    /// A boot timer that records into `metrics`.
    pub fn new(metrics: Arc<VmMetrics>) -> Self {
        Self { metrics }
    }
}

impl BusDevice for BootTimer {
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&BOOT_TIMER_MAGIC) && self.metrics.mark_boot_timer() {
            let ms = self.metrics.snapshot().boot_timer_ms.unwrap_or_default();
            tracing::info!("guest boot time: {ms:.3} ms");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn only_the_magic_value_marks_the_boot() {
        let metrics = Arc::new(VmMetrics::new(Instant::now()));
        let mut timer = BootTimer::new(metrics.clone());
        timer.write(0, &[1]);
        assert!(metrics.snapshot().boot_timer_ms.is_none());
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert!(metrics.snapshot().boot_timer_ms.is_some());
    }
}
