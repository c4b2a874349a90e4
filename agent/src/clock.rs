//! The guest's wall clock, set from the host's when they are too far apart: a guest without a
//! paravirtual clock or an RTC (the qemu backend under TCG) boots at 1970, and containers then
//! stamp files with 1970 and fail every certificate check.

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_settime, ClockId};

/// Closer than this, the guest's clock is left alone: the host's time is already old by the
/// time it arrives (one round trip over vsock), and stepping a good clock only hurts.
pub const TOLERANCE_NANOS: i64 = 1_000_000_000;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The step (host minus guest, in nanoseconds) to apply, if the clocks are more than
/// [`TOLERANCE_NANOS`] apart.
pub fn step_needed(guest_nanos: i64, host_nanos: i64) -> Option<i64> {
    let step = host_nanos.saturating_sub(guest_nanos);
    (step.unsigned_abs() > TOLERANCE_NANOS.unsigned_abs()).then_some(step)
}

/// Sets CLOCK_REALTIME to `host_nanos` (since the Unix epoch) when the guest's is more than
/// [`TOLERANCE_NANOS`] away; returns the step applied.
pub fn sync_to_host(host_nanos: i64) -> nix::Result<Option<i64>> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME)?;
    let guest_nanos = now
        .tv_sec()
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(now.tv_nsec());
    let Some(step) = step_needed(guest_nanos, host_nanos) else {
        return Ok(None);
    };
    let target = TimeSpec::new(
        host_nanos.div_euclid(NANOS_PER_SEC),
        host_nanos.rem_euclid(NANOS_PER_SEC),
    );
    clock_settime(ClockId::CLOCK_REALTIME, target)?;
    Ok(Some(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_at_1970_is_stepped_to_the_host() {
        let host = 1_796_000_000 * NANOS_PER_SEC;
        assert_eq!(
            step_needed(3 * NANOS_PER_SEC, host),
            Some(host - 3 * NANOS_PER_SEC)
        );
    }

    #[test]
    fn a_clock_within_a_second_is_left_alone() {
        let host = 1_796_000_000 * NANOS_PER_SEC;
        assert_eq!(step_needed(host - 900_000_000, host), None);
        assert_eq!(step_needed(host + 900_000_000, host), None);
    }

    #[test]
    fn a_clock_ahead_of_the_host_is_stepped_back() {
        let host = 1_796_000_000 * NANOS_PER_SEC;
        assert_eq!(
            step_needed(host + 5 * NANOS_PER_SEC, host),
            Some(-5 * NANOS_PER_SEC)
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        assert!(step_needed(i64::MIN, i64::MAX).is_some());
        assert!(step_needed(i64::MAX, i64::MIN).is_some());
    }
}
