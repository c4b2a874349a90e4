//! Interrupt pacing for devices that decide when to interrupt (vsock, net, console).

use super::queue::Virtq;
use crate::arch::{self, Deadline};
use crate::idt;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// Per IDT vector: arms the pacer renewed without having seen the vector's interrupt.
static BLIND_REARMS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];

/// How often the pacer of `vector` re-armed its queue without having seen the interrupt.
/// Each such arm may have been only late, not lost (a device thread descheduled between
/// moving its used index and raising the interrupt): then that interrupt and the next can
/// merge in the LAPIC, and the host counts one more sent than the guest took.
pub fn blind_rearms(vector: u8) -> u32 {
    BLIND_REARMS[vector as usize].load(Ordering::Relaxed)
}

/// Paces the interrupts of a queue whose device decides when to raise them (vsock, net,
/// console), so that the counts stay exact: with EVENT_IDX the device interrupts once when its
/// used index passes `used_event`, and the driver moves `used_event` on only after that
/// interrupt was taken. So at most one is in flight and none merges with another in the
/// LAPIC (one request bit per vector). Without MSI (legacy line) it just keeps re-arming.
///
/// An arm is certain when the used index still stood at `used_event` after the store (a full
/// fence between them; the device fences between moving its index and reading `used_event`):
/// the device will see the arm and interrupt, however late. It is uncertain when the device
/// moved past `used_event` between the load and the store: it may or may not have seen it. Only an
/// uncertain arm is renewed without its interrupt, after `LOST_MS`; such a blind re-arm is
/// counted, since a late interrupt may then merge with the next one.
#[derive(Clone, Copy)]
pub struct IrqPacer {
    msi: Option<(usize, u8)>,
    seen: u32,
    uncertain: bool,
    since: u64,
    lost_after: u64,
}

impl IrqPacer {
    /// How long an uncertain arm may wait for its interrupt before it counts as lost.
    const LOST_MS: u64 = 500;

    /// Counts the interrupts of IDT vector `vector` on CPU `cpu`.
    pub fn msi(cpu: usize, vector: u8) -> Self {
        Self {
            msi: Some((cpu, vector)),
            seen: idt::count(cpu, vector),
            uncertain: false,
            since: arch::rdtsc(),
            lost_after: arch::tsc_khz() * Self::LOST_MS,
        }
    }

    pub fn legacy() -> Self {
        Self {
            msi: None,
            seen: 0,
            uncertain: false,
            since: 0,
            lost_after: 0,
        }
    }

    /// Call after consuming the used ring up to `consumed` (the legacy line's arm; an MSI
    /// arm goes where the device is).
    pub fn rearm(&mut self, vq: &Virtq, consumed: u16) {
        let Some((cpu, vector)) = self.msi else {
            vq.set_used_event(consumed);
            return;
        };
        let mut count = idt::count(cpu, vector);
        let now = arch::rdtsc();
        if count == self.seen && self.uncertain && now.wrapping_sub(self.since) > self.lost_after {
            // Maybe it is only pending (a short `sti` window does not always let it in):
            // give it a millisecond with interrupts on before calling the arm lost.
            arch::sti();
            Deadline::after_ms(1).wait();
            arch::cli();
            count = idt::count(cpu, vector);
            if count == self.seen {
                BLIND_REARMS[vector as usize].fetch_add(1, Ordering::Relaxed);
                self.arm(vq, count, now);
                return;
            }
        }
        if count != self.seen {
            self.arm(vq, count, now);
        }
    }

    /// Arms at the device's current used index rather than at what the driver consumed:
    /// an arm behind the index would wait for a crossing the device has already made.
    fn arm(&mut self, vq: &Virtq, count: u32, now: u64) {
        let at = vq.used_idx();
        vq.set_used_event(at);
        // The store before the load: the other half of the device's fence.
        fence(Ordering::SeqCst);
        self.uncertain = vq.used_idx() != at;
        self.seen = count;
        self.since = now;
    }
}
