//! Application processors: the real-mode trampoline, INIT/SIPI, and the AP side.
//!
//! The trampoline is copied to 0x8000 (SIPI vector 0x08). An AP starts there in real mode,
//! loads the BSP's GDT, enters 32-bit protected mode, enables PAE with the BSP's page
//! tables, sets EFER.LME, turns paging on and far-jumps to 64-bit code, which switches to
//! its stack and calls [`ap_main`]`(cpu_index)`. Interrupts stay off all the way; an idle
//! AP then halts with interrupts on and runs the jobs the BSP posts ([`post_job`]).
//! Everything it needs comes from a parameter block at the end of the trampoline page.
//! APs are started one at a time, so one parameter block serves them all.

use crate::arch::{self, Deadline};
use crate::boot::{enable_long_mode, load_data_segments};
use crate::{idt, lapic};
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use pulse_probe::errors::ErrorList;

/// Vector of the IPI that wakes a halted AP to look for a job (and the BSP when an AP is done).
pub const WAKE_VECTOR: u8 = 0x31;

/// Most CPUs the probe handles (BSP included).
pub const MAX_CPUS: usize = 64;
const AP_STACK_SIZE: usize = 16 * 1024;

/// Physical address the trampoline runs at, and the matching SIPI vector.
const TRAMPOLINE_ADDR: u64 = 0x8000;
const SIPI_VECTOR: u8 = (TRAMPOLINE_ADDR >> 12) as u8;

/// Offsets in the parameter block (must match the assembly below).
const P_CR3: usize = 0;
const P_STACK: usize = 8;
const P_ENTRY: usize = 16;
const P_CPU: usize = 24;
const P_GDTR: usize = 32;

core::arch::global_asm!(
    r#"
/* Copied to {base} and run there: never executed in place. Addresses inside it are
   `{base} + (label - probe_tramp_start)`. */
.pushsection .rodata.trampoline, "a"
.balign 16
.global probe_tramp_start
probe_tramp_start:
.code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (probe_tramp_params + {p_gdtr} - probe_tramp_start)
    movl %cr0, %eax
    orl $1, %eax                 /* PE */
    movl %eax, %cr0
    ljmpl ${sel_code32}, ${base} + (probe_tramp_32 - probe_tramp_start)

.code32
probe_tramp_32:
    movw ${sel_data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
"#,
    enable_long_mode!("{base} + (probe_tramp_params + {p_cr3} - probe_tramp_start)"),
    r#"
    ljmp ${sel_code64}, ${base} + (probe_tramp_64 - probe_tramp_start)

.code64
probe_tramp_64:
"#,
    load_data_segments!(),
    r#"
    movq {base} + (probe_tramp_params + {p_stack} - probe_tramp_start), %rsp
    movq {base} + (probe_tramp_params + {p_cpu} - probe_tramp_start), %rdi
    movq {base} + (probe_tramp_params + {p_entry} - probe_tramp_start), %rax
    call *%rax
1:  cli
    hlt
    jmp 1b

.balign 16
.global probe_tramp_params
probe_tramp_params:
    .quad 0                      /* +0  cr3 */
    .quad 0                      /* +8  stack top */
    .quad 0                      /* +16 entry */
    .quad 0                      /* +24 cpu index */
    .word 0                      /* +32 gdt limit */
    .quad 0                      /* +34 gdt base */
.global probe_tramp_end
probe_tramp_end:
.popsection

/* AP stacks (not zeroed). */
.pushsection .stack.ap, "aw", @nobits
.balign 4096
.global probe_ap_stacks
probe_ap_stacks: .skip {stacks_size}
.popsection
"#,
    base = const TRAMPOLINE_ADDR,
    p_cr3 = const P_CR3,
    p_stack = const P_STACK,
    p_entry = const P_ENTRY,
    p_cpu = const P_CPU,
    p_gdtr = const P_GDTR,
    sel_code32 = const crate::boot::SEL_CODE32,
    sel_code64 = const crate::boot::SEL_CODE64,
    sel_data = const crate::boot::SEL_DATA,
    stacks_size = const MAX_CPUS * AP_STACK_SIZE,
    options(att_syntax)
);

extern "C" {
    static probe_tramp_start: u8;
    static probe_tramp_params: u8;
    static probe_tramp_end: u8;
    static probe_ap_stacks: u8;
    static gdt64_ptr: u8;
}

/// CPUs that reached `ap_main` (plus the BSP).
static ONLINE: AtomicU32 = AtomicU32::new(0);
/// APIC id of each online CPU by index (`NONE` while not online).
static CPU_APIC: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NONE) }; MAX_CPUS];
/// CPU index by APIC id (`u8::MAX` when unknown).
static APIC_CPU: [AtomicU8; 256] = [const { AtomicU8::new(u8::MAX) }; 256];
/// A job per CPU: `fn(cpu)` as usize, 0 = none. See [`idle`].
static JOBS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
const NONE: u32 = u32::MAX;

/// Index of the calling CPU (0 = BSP), from its APIC id.
pub fn current_cpu() -> usize {
    APIC_CPU[lapic::id() as usize].load(Ordering::Relaxed) as usize
}

fn register(cpu: usize, apic_id: u8) {
    CPU_APIC[cpu].store(apic_id as u32, Ordering::Relaxed);
    APIC_CPU[apic_id as usize].store(cpu as u8, Ordering::Relaxed);
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// Registers the BSP as CPU 0. Call before interrupts or APs.
pub fn register_bsp() -> u8 {
    let id = lapic::id();
    register(0, id);
    id
}

pub fn online() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// APIC ids of the online CPUs, by CPU index.
pub fn online_apic_ids(out: &mut [u32; MAX_CPUS]) -> usize {
    let mut n = 0;
    for slot in CPU_APIC.iter() {
        let id = slot.load(Ordering::Acquire);
        if id != NONE {
            out[n] = id;
            n += 1;
        }
    }
    n
}

/// The online CPUs as (CPU index, APIC id), BSP first; an AP that failed to start leaves no
/// gap here. Returns how many were written.
pub fn online_cpus(out: &mut [(usize, u8); MAX_CPUS]) -> usize {
    let mut n = 0;
    for (cpu, slot) in CPU_APIC.iter().enumerate() {
        let id = slot.load(Ordering::Acquire);
        if id != NONE {
            out[n] = (cpu, id as u8);
            n += 1;
        }
    }
    n
}

/// APIC id of an online CPU.
pub fn apic_id(cpu: usize) -> Option<u8> {
    match CPU_APIC.get(cpu)?.load(Ordering::Acquire) {
        NONE => None,
        id => Some(id as u8),
    }
}

/// Sends the wake-up IPI to `cpu` (a no-op interrupt that ends its `hlt`).
pub fn wake(cpu: usize) -> Result<(), &'static str> {
    let id = apic_id(cpu).ok_or("smp: cpu not online")?;
    lapic::send_fixed(id, WAKE_VECTOR)
}

fn tramp_addr(sym: &u8) -> usize {
    sym as *const u8 as usize
}

fn param_ptr(offset: usize) -> *mut u64 {
    // SAFETY: only computes an address inside the trampoline page.
    let params = unsafe { tramp_addr(&probe_tramp_params) - tramp_addr(&probe_tramp_start) };
    (TRAMPOLINE_ADDR as usize + params + offset) as *mut u64
}

fn write_param(offset: usize, value: u64) {
    // SAFETY: the trampoline copy at 0x8000 belongs to the probe once it has its own page
    // tables and stack; the AP being started reads it only after the SIPI, and the BSP
    // writes it only while no AP is between SIPI and `ap_main` (`start_one` waits).
    unsafe { core::ptr::write_unaligned(param_ptr(offset), value) }
}

/// Copies the trampoline to 0x8000 and fills the parts of the parameter block that are
/// the same for every AP.
fn install_trampoline() {
    // SAFETY: the symbols delimit the trampoline bytes in .rodata.
    let (start, end) = unsafe { (tramp_addr(&probe_tramp_start), tramp_addr(&probe_tramp_end)) };
    let len = end - start;
    // SAFETY: 0x8000..0x9000 is low RAM the probe owns after boot (the VMM's early stack
    // page, no longer used); the trampoline is shorter than one page.
    unsafe {
        core::ptr::copy_nonoverlapping(
            start as *const u8,
            TRAMPOLINE_ADDR as usize as *mut u8,
            len,
        );
    }
    write_param(P_CR3, arch::cr3());
    write_param(P_ENTRY, ap_main as *const () as u64);
    // SAFETY: gdt64_ptr is the BSP's 10-byte GDT pseudo-descriptor in .data.
    let gdtr = unsafe { &gdt64_ptr as *const u8 };
    let limit = u16::from_le_bytes([
        // SAFETY: reads the 2-byte limit of the pseudo-descriptor.
        unsafe { *gdtr },
        // SAFETY: as above.
        unsafe { *gdtr.add(1) },
    ]);
    // SAFETY: reads the 8-byte base of the pseudo-descriptor.
    let base = unsafe { core::ptr::read_unaligned(gdtr.add(2) as *const u64) };
    write_param(P_GDTR, limit as u64 | base << 16);
    write_param(P_GDTR + 8, base >> 48);
}

fn stack_top(cpu: usize) -> u64 {
    // SAFETY: only the address of the stack area is taken.
    let base = unsafe { &probe_ap_stacks as *const u8 as u64 };
    base + ((cpu + 1) * AP_STACK_SIZE) as u64
}

/// Result of bringing up the APs.
pub struct SmpResult {
    pub errors: ErrorList,
}

/// Starts every CPU in `apic_ids` except the BSP, one after the other.
pub fn start_aps(apic_ids: &[u8], bsp_id: u8) -> SmpResult {
    let mut errors = ErrorList::new();
    if !apic_ids.contains(&bsp_id) {
        errors.push("smp: bsp apic id not in the cpu list");
    }
    if apic_ids.iter().all(|&id| id == bsp_id) {
        return SmpResult { errors };
    }
    install_trampoline();
    for (cpu, &id) in (1..).zip(apic_ids.iter().filter(|&&id| id != bsp_id)) {
        if cpu >= MAX_CPUS {
            errors.push("smp: too many cpus");
            break;
        }
        if let Err(e) = start_one(cpu, id) {
            errors.push(e);
        }
    }
    SmpResult { errors }
}

/// How long one AP may take from the first SIPI to `ap_main` (real time: the TSC runs at
/// host speed while the emulated guest is ~1000x slower).
const AP_TIMEOUT_MS: u64 = 3000;

fn start_one(cpu: usize, apic_id: u8) -> Result<(), &'static str> {
    write_param(P_STACK, stack_top(cpu));
    write_param(P_CPU, cpu as u64);
    let before = online();
    let arrived = || online() > before;

    lapic::send_init(apic_id)?;
    Deadline::after_ms(1).wait();
    lapic::send_init_deassert(apic_id)?;
    Deadline::after_ms(10).wait();
    lapic::send_sipi(apic_id, SIPI_VECTOR)?;
    if Deadline::after_ms(1).wait_for(arrived) {
        return Ok(());
    }
    lapic::send_sipi(apic_id, SIPI_VECTOR)?;
    if Deadline::after_ms(AP_TIMEOUT_MS).wait_for(arrived) {
        Ok(())
    } else {
        Err("smp: ap startup timeout")
    }
}

/// First Rust code on an AP: long mode, the BSP's GDT and page tables, its own stack.
extern "C" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    idt::load();
    // The LAPIC works already (it took the SIPI); a failure here would only mean the
    // BSP's checks failed, and then no AP is started.
    let _ = lapic::init();
    register(cpu, lapic::id());
    idle(cpu)
}

/// Posts `job` for CPU `cpu` and wakes it; the job runs on that CPU with interrupts off.
/// Everything the job reads must be written before this call (the store is a release).
pub fn post_job(cpu: usize, job: fn(usize)) -> Result<(), &'static str> {
    JOBS[cpu].store(job as usize, Ordering::Release);
    wake(cpu)
}

/// The AP's home: run a posted job if there is one, else halt with interrupts on, so that
/// the wake-up IPI of [`post_job`] (or any other interrupt) brings it back here.
fn idle(cpu: usize) -> ! {
    loop {
        arch::cli();
        let job = JOBS[cpu].swap(0, Ordering::AcqRel);
        if job != 0 {
            // SAFETY: only `post_job` stores non-zero values, and it stores `fn(usize)`.
            let job: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(job) };
            job(cpu);
            continue;
        }
        // A job posted after the check above sends its IPI after the store: the IPI is
        // then pending and ends this `hlt` at once.
        arch::sti_hlt();
    }
}
