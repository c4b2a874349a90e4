//! The optional tests after the workload: a disk resize with its configuration interrupt,
//! and the MSI mask test.

use super::irq::config_interrupts;
use super::setup::read_config;
use super::{
    device, received, run_of, wait, BATCH_TIMEOUT_MS, PHASE_PORT, PHASE_RESIZE, RESIZE_WAIT_MS,
    WATCHDOG_MS, WATCHDOG_VECTOR,
};
use crate::arch::{self, Deadline};
use crate::lapic;
use crate::msi::{self};
use pulse_probe::devreport::{DeviceReport, MaskTest};
use pulse_probe::virtio_spec::reg;

/// Resize test: asks the host (phase mark 3) to change the disk, waits for the configuration
/// interrupt, and reads the new capacity (consistently, with ConfigGeneration).
pub(super) fn resize_test(d: usize, report: &mut DeviceReport) {
    let Some(dev) = device(d) else { return };
    let w = dev.window;
    let (before, _) = read_config(&w, true);
    let generation = w.read32(reg::CONFIG_GENERATION);
    let irqs_before = config_interrupts(d, &dev);
    arch::outb(PHASE_PORT, PHASE_RESIZE);
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    wait(true, RESIZE_WAIT_MS, || {
        config_interrupts(d, &dev) > irqs_before
    });
    // A second interrupt would be a duplicate: give it time to show.
    arch::sti();
    Deadline::after_ms(20).wait();
    arch::cli();
    lapic::stop_watchdog();
    let (after, _) = read_config(&w, true);
    report.resize = Some(pulse_probe::devreport::ResizeResult {
        capacity_before: before,
        capacity_after: after,
        config_interrupts: config_interrupts(d, &dev) - irqs_before,
        config_generation_moved: w.read32(reg::CONFIG_GENERATION) != generation,
    });
}

/// Mask test on queue 0's vector (index 1): no interrupt while masked, exactly one after
/// unmasking for the request completed meanwhile.
pub(super) fn mask_test(d: usize, report: &mut DeviceReport) {
    let Some(dev) = device(d) else { return };
    // SAFETY: after the workload: no job is posted, the BSP is the only user.
    let Some(run) = (unsafe { run_of(d, 0) }) else {
        return;
    };
    if run.failed.is_some() {
        report
            .errors
            .push("msi: mask test not run (queue 0 failed)");
        return;
    }
    let vector = dev.vectors[1];
    let before = received(vector);
    msi::mask(&dev.window, 1);
    run.submit_single_read();
    // Interrupts on: a delivery despite the mask would be taken and counted here.
    arch::sti();
    let completed = wait(false, BATCH_TIMEOUT_MS, || run.batch_done());
    Deadline::after_ms(20).wait();
    arch::cli();
    let while_masked = received(vector) - before;
    if !completed {
        run.abandon("msi: mask test request not completed");
        report.errors.push("msi: mask test request not completed");
    } else if !run.finish_single() {
        report.errors.push("msi: mask test request failed");
    }
    msi::unmask(&dev.window, 1);
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let base = before + while_masked;
    wait(true, 2000, || received(vector) > base);
    // A little longer: a second delivery would be a duplicate.
    arch::sti();
    Deadline::after_ms(50).wait();
    arch::cli();
    lapic::stop_watchdog();
    report.mask_test = Some(MaskTest {
        received_while_masked: while_masked,
        delivered_after_unmask: received(vector) - base,
    });
}
