//! Thin wrappers around x86 instructions: port I/O, MSRs, CPUID, TSC, interrupt flag, halt.

use core::arch::asm;
use core::cell::UnsafeCell;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the ports the probe uses
    // (serial, PIC mask, VMM boot timer, debug exit) have no side effects on its memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading a port does not touch Rust-visible memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU (a missing one raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; rdmsr has no memory effects.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (hi as u64) << 32 | lo as u64
}

/// Writes a model-specific register.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it and safe for the running code.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// `cpuid` leaf `leaf`, sub-leaf 0: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear at CPL 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3.
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: clearing IF cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enables interrupts. The IDT must be loaded on this CPU.
pub fn sti() {
    // SAFETY: callers only enable interrupts after `idt::load` on this CPU; the handlers
    // save every register they clobber and return with iretq.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Enables interrupts and halts until one arrives. `sti` holds interrupts off for one more
/// instruction, so an interrupt that is already pending wakes the `hlt` rather than being
/// taken in between (the classic lost wake-up). Returns with interrupts on; no `nomem`, since
/// handlers run in between and change memory the caller then reads.
pub fn sti_hlt() {
    // SAFETY: as for `sti`; halting itself touches no memory.
    unsafe { asm!("sti", "hlt", options(nostack)) }
}

/// Lets pending interrupts in for a moment and turns them off again. `sti` only takes
/// effect after the next instruction, hence the `nop` in between.
pub fn interrupt_window() {
    // SAFETY: as for `sti`; handlers run in the window and change memory the caller reads,
    // so no `nomem`.
    unsafe { asm!("sti", "nop", "cli", options(nostack)) }
}

/// Hint for spin loops.
pub fn pause() {
    core::hint::spin_loop();
}

/// Stops this CPU for good: `cli; hlt` in a loop (an NMI would only wake it to halt again).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting with interrupts off touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// TSC ticks per millisecond: from CPUID 0x15/0x16 or the hypervisor timing leaf
/// 0x40000010, else a guess of 3 GHz (timeouts then stretch or shrink by that error;
/// they only bound waits that normally end long before).
pub fn tsc_khz() -> u64 {
    // CPUID is an exit per leaf (and slow under an emulator); every deadline asks, so ask once.
    static KHZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    match KHZ.load(core::sync::atomic::Ordering::Relaxed) {
        0 => {
            let khz = measure_tsc_khz();
            KHZ.store(khz, core::sync::atomic::Ordering::Relaxed);
            khz
        }
        khz => khz,
    }
}

fn measure_tsc_khz() -> u64 {
    let max = cpuid(0).0;
    if max >= 0x15 {
        let (den, num, crystal_hz, _) = cpuid(0x15);
        if den != 0 && num != 0 && crystal_hz != 0 {
            return crystal_hz as u64 * num as u64 / den as u64 / 1000;
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16).0 & 0xffff;
        if mhz != 0 {
            return mhz as u64 * 1000;
        }
    }
    let (hv_max, ebx, ..) = cpuid(0x4000_0000);
    if ebx != 0 && hv_max >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010).0;
        if khz != 0 {
            return khz as u64;
        }
    }
    3_000_000
}

/// A bounded wait: expires after a time measured with the TSC, or after a number of
/// polls in case the TSC does not move.
pub struct Deadline {
    end: u64,
    polls_left: u64,
}

impl Deadline {
    const MAX_POLLS: u64 = 200_000_000;

    pub fn after_ms(ms: u64) -> Self {
        let ticks = tsc_khz().saturating_mul(ms);
        Self {
            end: rdtsc().saturating_add(ticks),
            polls_left: Self::MAX_POLLS,
        }
    }

    pub fn expired(&mut self) -> bool {
        if self.polls_left == 0 {
            return true;
        }
        self.polls_left -= 1;
        rdtsc() >= self.end
    }

    /// Spins until the deadline passes.
    pub fn wait(mut self) {
        while !self.expired() {
            pause();
        }
    }

    /// Spins until `done()` or the deadline; true when `done()` held.
    pub fn wait_for(mut self, mut done: impl FnMut() -> bool) -> bool {
        loop {
            if done() {
                return true;
            }
            if self.expired() {
                return done();
            }
            pause();
        }
    }
}

/// A static that code synchronises by hand (boot-time single-CPU setup, or data that is
/// written before other CPUs are started). Every access site states why it is race-free.
pub struct RacyCell<T>(UnsafeCell<T>);

// SAFETY: users uphold exclusive access manually, as documented at each access.
unsafe impl<T> Sync for RacyCell<T> {}

impl<T> RacyCell<T> {
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// A byte slice over identity-mapped physical memory.
///
/// # Safety
/// `[addr, addr + len)` must lie in the probe's identity map (below 4 GiB), be readable
/// memory, and not be written while the slice lives.
pub unsafe fn phys_slice(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: upheld by the caller; the identity map makes physical = virtual.
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }
}

/// Highest physical address (exclusive) that the probe's page tables map.
pub const IDENTITY_MAP_END: u64 = 4 << 30;
