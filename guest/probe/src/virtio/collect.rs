//! The report's counts: the queues' results and each vector's interrupts.

use super::pacer::blind_rearms;
use super::{cpus, received, run_of, Device, Kind, DONE};
use crate::idt;
use core::sync::atomic::Ordering;
use pulse_probe::devreport::{DeviceReport, Expect, VectorReport};

fn cfg_console_echo(report: &DeviceReport) -> bool {
    report.console.is_some_and(|c| c.echo_asked)
}

/// Fills the report with the queues' results and the interrupt counts.
pub(super) fn collect(d: usize, dev: &Device, report: &mut DeviceReport) {
    let cpus = cpus();
    for q in 0..dev.queues {
        let (cpu, _) = cpus[dev.kind.owner(q, cpus.len())];
        if cpu != 0 && !DONE[cpu].load(Ordering::Acquire) {
            // Its CPU never finished: its state may still change, so leave it out.
            report
                .errors
                .push("blk: results of an unfinished cpu left out");
            continue;
        }
        // SAFETY: the owner is done (or is the BSP, which is running this).
        let Some(run) = (unsafe { run_of(d, q) }).as_ref() else {
            continue;
        };
        report.requests += run.completed;
        report.request_errors += run.request_errors;
        report.data_errors += run.data_errors;
        report.used_len_errors += run.used_len_errors;
        if let Some(e) = run.failed {
            report.errors.push(e);
        }
    }
    if dev.msi {
        report.n_vectors = dev.queues as usize + 1;
        for i in 0..report.n_vectors {
            let pos = if i == 0 {
                0
            } else {
                dev.kind.owner(i as u16 - 1, cpus.len())
            };
            let (cpu, apic_id) = cpus[pos];
            let vector = dev.vectors[i];
            let total = received(vector);
            let batches = if i == 0 {
                0
            } else {
                // SAFETY: as above (read only).
                unsafe { run_of(d, i as u16 - 1) }.map_or(0, |r| r.batches)
            };
            report.vectors[i] = VectorReport {
                index: i as u16,
                vector,
                cpu: cpu as u32,
                apic_id: apic_id as u32,
                received: total,
                elsewhere: total - idt::count(cpu, vector),
                batches,
                extra: u32::from(i == 1 && report.mask_test.is_some()),
                blind_rearms: blind_rearms(vector),
                expect: match dev.kind {
                    Kind::Blk => Expect::Batches,
                    // The event queue only carries the transport resets asked for.
                    Kind::Vsock
                        if i == 3 && report.vsock.is_some_and(|v| v.events_expected == 0) =>
                    {
                        Expect::Any
                    }
                    Kind::Vsock => Expect::Some,
                    // The control queue carries one command, and only with several pairs.
                    Kind::Net if report.net.is_some_and(|n| n.pairs > 1 || i < 3) => Expect::Some,
                    Kind::Net => Expect::Any,
                    // receiveq0 only has traffic when host input was asked for.
                    Kind::Console if i == 1 && !cfg_console_echo(report) => Expect::Any,
                    Kind::Console => Expect::Some,
                },
            };
        }
    } else {
        report.legacy_received = received(dev.legacy_vector);
    }
}
