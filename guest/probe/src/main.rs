//! pulse-probe: a bare-metal test guest for the Pulse VMM (and QEMU's microvm).
//!
//! Boots through the Linux 64-bit boot protocol or PVH (`boot`), reports on COM1
//! (`serial`, `report`), finds the CPUs (`cpus`), starts the APs (`smp`, `lapic`), installs
//! an IDT (`idt`), and leaves through the debug-exit port (`exit`). The parts that need no
//! hardware (command line, JSON, MP table, boot structures) are in the library crate.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod boot;
mod cpus;
mod exit;
mod idt;
mod ioapic;
mod lapic;
mod msi;
mod panic;
mod report;
mod serial;
mod smp;
mod virtio;

use arch::Deadline;
use boot::BootInfo;
use exit::ExitCode;
use pulse_probe::cmdline::{self, Selftest};
use pulse_probe::errors::ErrorList;
use pulse_probe::PROBE_VERSION;

/// Vector of the self-IPI that checks the IDT, the handler path and the EOI.
const SELFTEST_VECTOR: u8 = 0x30;

fn main(boot: BootInfo) -> ! {
    // Port 0x440 (boot timer) was written by the entry code.
    serial::init();
    println!(
        "pulse-probe {}: booted via {}",
        PROBE_VERSION,
        boot.protocol.name()
    );

    let cfg = cmdline::parse(boot.cmdline);
    let mut errors = ErrorList::new();
    errors.extend(&boot.errors);
    errors.extend(&cfg.errors);

    idt::init();
    idt::load();
    match cfg.selftest {
        Selftest::Panic => panic!("selftest: probe.selftest=panic"),
        // SAFETY: ud2 raises #UD on purpose; the exception handler reports it and exits.
        Selftest::Exception => unsafe { core::arch::asm!("ud2", options(nomem, nostack)) },
        Selftest::Fail => errors.push("selftest: probe.selftest=fail"),
        Selftest::None => {}
    }

    let cpus = cpus::discover(cfg.cpus);
    errors.extend(&cpus.errors);

    let mut irq_selftest = false;
    let mut outcome = None;
    match lapic::init() {
        Ok(()) => {
            mask_8259();
            let bsp = smp::register_bsp();
            let res = smp::start_aps(cpus.apic_ids(), bsp);
            errors.extend(&res.errors);
            irq_selftest = interrupt_selftest();
            if !irq_selftest {
                errors.push("irq: self-ipi not received");
            }
            if !cfg.devices().is_empty() {
                outcome = Some(virtio::run(&cfg, cpus.ioapic_addr));
            }
        }
        Err(e) => errors.push(e),
    }

    let mut ids = [0u32; smp::MAX_CPUS];
    let n = smp::online_apic_ids(&mut ids);
    let expected = cpus.apic_ids().len() as u32;
    let online = smp::online();
    let devices = outcome.as_ref().map_or(&[][..], |o| o.devices());
    let devices_ok = outcome.as_ref().is_none_or(|o| o.ok());
    let ok = errors.is_empty() && online == expected && devices_ok;
    if online != expected && errors.is_empty() {
        errors.push("smp: not all cpus online");
    }
    report::print(&report::Report {
        ok,
        boot: boot.protocol.name(),
        cmdline: boot.cmdline,
        cpus_expected: expected,
        cpus_online: online,
        apic_ids: &ids[..n],
        mptable: cpus.mptable,
        ioapic: cpus.ioapic_addr,
        mem_mib: boot.mem.ram_bytes >> 20,
        irq_selftest,
        irq_mode: cfg.irq.name(),
        devices,
        errors: errors.as_slice(),
    });
    exit::exit(if ok {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Masks both 8259 PICs: the probe takes interrupts only through the (IO)APIC.
fn mask_8259() {
    arch::outb(0x21, 0xff);
    arch::outb(0xa1, 0xff);
}

/// Sends a fixed interrupt to this CPU, lets it in with a short `sti` window and checks
/// that the handler counted it. Interrupts are off again afterwards.
fn interrupt_selftest() -> bool {
    let cpu = smp::current_cpu();
    let before = idt::count(cpu, SELFTEST_VECTOR);
    if lapic::send_self(SELFTEST_VECTOR).is_err() {
        return false;
    }
    arch::sti();
    let got = Deadline::after_ms(500).wait_for(|| idt::count(cpu, SELFTEST_VECTOR) > before);
    arch::cli();
    got
}
