//! The local APIC in xAPIC mode (MMIO, normally at 0xFEE00000).

use crate::arch::{self, Deadline};
use core::sync::atomic::{AtomicU64, Ordering};

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const REG_ID: u32 = 0x020;
const REG_TPR: u32 = 0x080;
const REG_EOI: u32 = 0x0b0;
const REG_SVR: u32 = 0x0f0;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_DM_INIT: u32 = 0b101 << 8;
const ICR_DM_STARTUP: u32 = 0b110 << 8;
const ICR_DEST_SELF: u32 = 0b01 << 18;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b0011: the timer counts at bus clock / 16.
const TIMER_DIVIDE_16: u32 = 0b0011;

/// Vector of spurious interrupts (no EOI for it).
pub const SPURIOUS_VECTOR: u8 = 0xff;

static BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);

fn reg(offset: u32) -> *mut u32 {
    (BASE.load(Ordering::Relaxed) + offset as u64) as usize as *mut u32
}

fn read(offset: u32) -> u32 {
    // SAFETY: `BASE` is the xAPIC page (checked in `init` to be inside the identity map,
    // mapped uncached); `offset` is one of the register offsets above.
    unsafe { core::ptr::read_volatile(reg(offset)) }
}

fn write(offset: u32, value: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile(reg(offset), value) }
}

/// Enables this CPU's local APIC: globally (IA32_APIC_BASE) and in software (SVR), with
/// TPR 0 and LINT0 masked (the probe never takes 8259 interrupts). Call on every CPU.
pub fn init() -> Result<(), &'static str> {
    if arch::cpuid(1).3 & (1 << 9) == 0 {
        return Err("lapic: not present");
    }
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (checked just above).
    let msr = unsafe { arch::rdmsr(IA32_APIC_BASE) };
    if msr & APIC_BASE_X2APIC != 0 {
        return Err("lapic: x2apic mode not supported");
    }
    let base = msr & APIC_BASE_ADDR_MASK;
    if base + 0x1000 > arch::IDENTITY_MAP_END {
        return Err("lapic: base above 4 GiB");
    }
    if msr & APIC_BASE_ENABLE == 0 {
        // SAFETY: setting the global enable bit keeps the base and xAPIC mode unchanged.
        unsafe { arch::wrmsr(IA32_APIC_BASE, msr | APIC_BASE_ENABLE) };
    }
    BASE.store(base, Ordering::Relaxed);
    write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, read(REG_LVT_LINT0) | LVT_MASKED);
    Ok(())
}

/// This CPU's APIC id.
pub fn id() -> u8 {
    (read(REG_ID) >> 24) as u8
}

/// End of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

fn send(dest: u8, icr_low: u32) -> Result<(), &'static str> {
    write(REG_ESR, 0);
    write(REG_ICR_HIGH, (dest as u32) << 24);
    write(REG_ICR_LOW, icr_low);
    let sent = Deadline::after_ms(100).wait_for(|| read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0);
    if sent {
        Ok(())
    } else {
        Err("lapic: ipi not delivered")
    }
}

/// INIT IPI, level assert.
pub fn send_init(dest: u8) -> Result<(), &'static str> {
    send(dest, ICR_DM_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL)
}

/// INIT IPI, level de-assert (ignored by modern CPUs, part of the MP spec sequence).
pub fn send_init_deassert(dest: u8) -> Result<(), &'static str> {
    send(dest, ICR_DM_INIT | ICR_TRIGGER_LEVEL)
}

/// STARTUP IPI: the target starts in real mode at `vector << 12`.
pub fn send_sipi(dest: u8, vector: u8) -> Result<(), &'static str> {
    send(dest, ICR_DM_STARTUP | vector as u32)
}

/// A fixed interrupt with `vector` to this CPU.
pub fn send_self(vector: u8) -> Result<(), &'static str> {
    send(0, ICR_DEST_SELF | ICR_LEVEL_ASSERT | vector as u32)
}

/// A fixed interrupt with `vector` to the CPU with APIC id `dest` (physical destination).
pub fn send_fixed(dest: u8, vector: u8) -> Result<(), &'static str> {
    send(dest, ICR_LEVEL_ASSERT | vector as u32)
}

/// Starts this CPU's timer in periodic mode with `vector`, roughly every `ms` milliseconds.
/// It only bounds `hlt` waits (a lost interrupt must not halt a CPU for ever); the exact
/// period does not matter. KVM's LAPIC timer runs at 1 GHz before the divider.
pub fn start_watchdog(vector: u8, ms: u32) {
    const TICKS_PER_MS: u32 = 1_000_000 / 16;
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | vector as u32);
    write(REG_TIMER_INITIAL, ms.saturating_mul(TICKS_PER_MS).max(1));
}

/// Stops this CPU's timer (masked, count 0).
pub fn stop_watchdog() {
    write(REG_TIMER_INITIAL, 0);
    write(REG_LVT_TIMER, LVT_MASKED);
}
