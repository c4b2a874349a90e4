//! The workloads: block queues on their owner CPUs, the other devices on the BSP.

use super::pacer::IrqPacer;
use super::queue::MAX_QUEUES;
use super::{console, net, vsock};
use super::{
    cpus, device, run_of, wait, Device, ACTIVE, BATCH_TIMEOUT_MS, DONE, LATE_IRQ_MS, WATCHDOG_MS,
    WATCHDOG_VECTOR,
};
use crate::arch::{self};
use crate::smp::{self, MAX_CPUS};
use crate::{idt, lapic};
use core::sync::atomic::Ordering;
use pulse_probe::cmdline::Config;
use pulse_probe::devreport::{DeviceReport, MAX_VECTORS};
use pulse_probe::workload::owner;

/// Runs the vsock workload of `dev` on the BSP.
pub(super) fn run_vsock(dev: &Device, cfg: &Config, report: &mut DeviceReport) {
    let Some((queues, cid)) = dev.vsock else {
        return;
    };
    let bsp = cpus()[0].0;
    let pacer = |q: usize| {
        if dev.msi {
            IrqPacer::msi(bsp, dev.vectors[q + 1])
        } else {
            IrqPacer::legacy()
        }
    };
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let result = vsock::run(queues, cid, cfg.vsock, [pacer(0), pacer(1), pacer(2)]);
    lapic::stop_watchdog();
    arch::cli();
    report.vsock = Some(result);
}

/// The pacers of a BSP-driven device's queues, indexed like its queues.
fn pacers(dev: &Device) -> [IrqPacer; MAX_QUEUES] {
    let bsp = cpus()[0].0;
    core::array::from_fn(|q| {
        if dev.msi && q + 1 < MAX_VECTORS {
            IrqPacer::msi(bsp, dev.vectors[q + 1])
        } else {
            IrqPacer::legacy()
        }
    })
}

/// Runs the net workload of `dev` on the BSP.
pub(super) fn run_net(dev: &Device, cfg: &Config, report: &mut DeviceReport) {
    let Some(queues) = dev.net else {
        return;
    };
    let mut pacers = pacers(dev);
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let result = net::run(&queues, cfg.net, &mut pacers);
    lapic::stop_watchdog();
    arch::cli();
    report.net = Some(result);
}

/// Runs the console workload of `dev` on the BSP.
pub(super) fn run_console(dev: &Device, cfg: &Config, report: &mut DeviceReport) {
    let Some(queues) = dev.console else {
        return;
    };
    let all = pacers(dev);
    let mut pacers = [all[0], all[1]];
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let result = console::run(&queues, cfg.console_echo, &mut pacers);
    lapic::stop_watchdog();
    arch::cli();
    report.console = Some(result);
}

/// Runs device `d`'s workload on every CPU that owns one of its queues; returns when all
/// are done or timed out.
pub(super) fn run_device(d: usize, report: &mut DeviceReport) {
    let Some(dev) = device(d) else { return };
    let Some(plan) = dev.plan else { return };
    let cpus = cpus();
    ACTIVE.store(d, Ordering::Release);
    let mut posted = [false; MAX_CPUS];
    for (pos, &(cpu, _)) in cpus.iter().enumerate().skip(1) {
        if (0..dev.queues).any(|q| owner(q, cpus.len()) == pos) {
            DONE[cpu].store(false, Ordering::Release);
            match smp::post_job(cpu, ap_job) {
                Ok(()) => posted[cpu] = true,
                Err(e) => report.errors.push(e),
            }
        }
    }
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    run_owned(d, 0);
    // Each AP's job gets the time its batches may take, plus some.
    let limit = BATCH_TIMEOUT_MS * (plan.batches() as u64 + 2);
    let all_done = || {
        cpus.iter()
            .all(|&(cpu, _)| !posted[cpu] || DONE[cpu].load(Ordering::Acquire))
    };
    if !wait(true, limit, all_done) {
        report
            .errors
            .push("smp: a cpu did not finish its queues in time");
    }
    lapic::stop_watchdog();
    arch::cli();
}

/// An AP's part of the workload of the device in `ACTIVE`.
fn ap_job(cpu: usize) {
    let d = ACTIVE.load(Ordering::Acquire);
    if let Some(pos) = cpus().iter().position(|&(c, _)| c == cpu) {
        lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
        run_owned(d, pos);
        lapic::stop_watchdog();
    }
    DONE[cpu].store(true, Ordering::Release);
    let _ = lapic::send_fixed(cpus()[0].1, smp::WAKE_VECTOR);
}

/// Runs the queues of device `d` owned by the CPU at position `pos` of the online list, in
/// lock step: each round submits one batch on every owned queue, then waits for each.
fn run_owned(d: usize, pos: usize) {
    let Some(dev) = device(d) else { return };
    let Some(plan) = dev.plan else { return };
    let (cpu, _) = cpus()[pos];
    let n = cpus().len();
    let mut owned = [0u16; MAX_QUEUES];
    let mut k = 0;
    for q in 0..dev.queues {
        if owner(q, n) == pos {
            owned[k] = q;
            k += 1;
        }
    }
    let owned = &owned[..k];
    if !dev.msi && pos == 0 {
        // Legacy: the line goes to the BSP, which must take it (and ack it) while it polls.
        arch::sti();
    }
    for round in 0..plan.batches() {
        for &q in owned {
            // SAFETY: this CPU owns queue q during the workload; one reference at a time.
            if let Some(run) = unsafe { run_of(d, q) } {
                if run.failed.is_none() {
                    run.submit(plan.batch(round));
                }
            }
        }
        for &q in owned {
            // SAFETY: as above.
            let Some(run) = (unsafe { run_of(d, q) }) else {
                continue;
            };
            if run.failed.is_some() {
                continue;
            }
            // MSI: sleep until the queue's interrupt (or another) arrives. Legacy: poll.
            if wait(dev.msi, BATCH_TIMEOUT_MS, || run.batch_done()) {
                run.finish();
            } else {
                run.abandon("blk: batch not completed in time");
                continue;
            }
            if dev.msi {
                // The used index can be seen before the batch's interrupt is taken. Take it
                // before the next batch: two interrupts pending on one vector merge into one
                // (the LAPIC has one request bit per vector), and the counts must be exact.
                let vector = dev.vectors[q as usize + 1];
                let batches = run.batches;
                wait(true, LATE_IRQ_MS, || idt::count(cpu, vector) >= batches);
            }
        }
    }
    if pos == 0 {
        arch::cli();
    }
}
