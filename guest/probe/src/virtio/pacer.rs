//! Interrupt pacing for devices that decide when to interrupt (vsock, net, console).

use super::queue::Virtq;
use crate::arch::{self, Deadline};
use crate::idt;

/// Paces the interrupts of a queue whose device decides when to raise them (vsock, net),
/// so that the counts stay exact: with EVENT_IDX the device interrupts once when its used
/// index passes `used_event`, and the driver moves `used_event` on only after that
/// interrupt was taken. So at most one is in flight and none merges with another in the
/// LAPIC (one request bit per vector). Without MSI (legacy line) it just keeps re-arming.
#[derive(Clone, Copy)]
pub struct IrqPacer {
    msi: Option<(usize, u8)>,
    seen: u32,
    armed_at: u16,
    since: u64,
    lost_after: u64,
}

impl IrqPacer {
    /// How long an armed queue whose used index moved may wait for its interrupt before the
    /// arm counts as lost (the device read `used_event` just before the driver moved it).
    const LOST_MS: u64 = 500;

    /// Counts the interrupts of IDT vector `vector` on CPU `cpu`.
    pub fn msi(cpu: usize, vector: u8) -> Self {
        Self {
            msi: Some((cpu, vector)),
            seen: idt::count(cpu, vector),
            armed_at: 0,
            since: arch::rdtsc(),
            lost_after: arch::tsc_khz() * Self::LOST_MS,
        }
    }

    pub fn legacy() -> Self {
        Self {
            msi: None,
            seen: 0,
            armed_at: 0,
            since: 0,
            lost_after: 0,
        }
    }

    /// Call after consuming the used ring up to `consumed`.
    pub fn rearm(&mut self, vq: &Virtq, consumed: u16) {
        let Some((cpu, vector)) = self.msi else {
            vq.set_used_event(consumed);
            return;
        };
        let mut count = idt::count(cpu, vector);
        let now = arch::rdtsc();
        let mut lost = count == self.seen
            && vq.used_idx() != self.armed_at
            && now.wrapping_sub(self.since) > self.lost_after;
        if lost {
            // Maybe it is only pending (a short `sti` window does not always let it in):
            // give it a millisecond with interrupts on before calling the arm lost.
            arch::sti();
            Deadline::after_ms(1).wait();
            arch::cli();
            count = idt::count(cpu, vector);
            lost = count == self.seen;
        }
        if count != self.seen || lost {
            self.seen = count;
            self.armed_at = consumed;
            self.since = now;
            vq.set_used_event(consumed);
        }
    }
}
