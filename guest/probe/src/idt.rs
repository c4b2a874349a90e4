//! The interrupt descriptor table: exceptions 0-31 end the probe with an error report
//! (exit code 3); vectors 32-255 are counted per CPU and acknowledged with a LAPIC EOI.
//!
//! Every vector has a 16-byte assembly stub that pushes the vector number (and a zero
//! error code where the CPU pushes none) and jumps to a common path. Only `iretq` is used.

use crate::arch::{self, RacyCell};
use crate::exit::{self, ExitCode};
use crate::{lapic, smp};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use pulse_probe::json::Object;

/// First vector that is not a CPU exception.
pub const FIRST_IRQ_VECTOR: usize = 32;
const IRQ_VECTORS: usize = 256 - FIRST_IRQ_VECTOR;
const STUB_SIZE: usize = 16;

core::arch::global_asm!(
    r#"
.pushsection .text.idt, "ax"

.macro probe_exc_stub vec, has_error
.balign 16
.if \has_error == 0
    pushq $0
.endif
    pushq $\vec
    jmp probe_exc_common
.endm

.balign 16
.global probe_exc_stubs
probe_exc_stubs:
probe_exc_stub 0, 0
probe_exc_stub 1, 0
probe_exc_stub 2, 0
probe_exc_stub 3, 0
probe_exc_stub 4, 0
probe_exc_stub 5, 0
probe_exc_stub 6, 0
probe_exc_stub 7, 0
probe_exc_stub 8, 1
probe_exc_stub 9, 0
probe_exc_stub 10, 1
probe_exc_stub 11, 1
probe_exc_stub 12, 1
probe_exc_stub 13, 1
probe_exc_stub 14, 1
probe_exc_stub 15, 0
probe_exc_stub 16, 0
probe_exc_stub 17, 1
probe_exc_stub 18, 0
probe_exc_stub 19, 0
probe_exc_stub 20, 0
probe_exc_stub 21, 1
probe_exc_stub 22, 0
probe_exc_stub 23, 0
probe_exc_stub 24, 0
probe_exc_stub 25, 0
probe_exc_stub 26, 0
probe_exc_stub 27, 0
probe_exc_stub 28, 0
probe_exc_stub 29, 1
probe_exc_stub 30, 1
probe_exc_stub 31, 0

.balign 16
.global probe_irq_stubs
probe_irq_stubs:
.set probe_irq_vec, 32
.rept 224
.balign 16
    pushq $probe_irq_vec
    jmp probe_irq_common
.set probe_irq_vec, probe_irq_vec + 1
.endr

/* stack: vector, error code, rip, cs, rflags, rsp, ss. Never returns. */
probe_exc_common:
    cld
    movq %rsp, %rdi
    andq $-16, %rsp
    call probe_exception
    ud2

/* stack: vector, rip, cs, rflags, rsp, ss. Saves the caller-saved registers (the
   target is soft-float: no SSE state), calls probe_irq(vector), returns with iretq. */
probe_irq_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq 72(%rsp), %rdi
    pushq %rbx
    movq %rsp, %rbx
    andq $-16, %rsp
    cld
    call probe_irq
    movq %rbx, %rsp
    popq %rbx
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $8, %rsp
    iretq

.popsection
"#,
    options(att_syntax)
);

extern "C" {
    static probe_exc_stubs: u8;
    static probe_irq_stubs: u8;
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const EMPTY: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: crate::boot::SEL_CODE64,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Table([Gate; 256]);

static IDT: RacyCell<Table> = RacyCell::new(Table([Gate::EMPTY; 256]));

/// Interrupts per CPU (index from `smp`) and vector (32..255).
static COUNTS: [[AtomicU32; IRQ_VECTORS]; smp::MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; IRQ_VECTORS] }; smp::MAX_CPUS];

/// Optional per-vector hooks, `fn(vector, cpu)` stored as usize (0 = none).
static HOOKS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Fills the IDT. Call once on the BSP before `load` on any CPU.
pub fn init() {
    // SAFETY: runs once on the BSP before any CPU loads the table or takes an interrupt,
    // so nothing else reads it; the stubs are in the image, 16 bytes apart.
    let table = unsafe { &mut (*IDT.get()).0 };
    let exc = &raw const probe_exc_stubs as u64;
    let irq = &raw const probe_irq_stubs as u64;
    for (v, gate) in table.iter_mut().enumerate() {
        *gate = if v < FIRST_IRQ_VECTOR {
            Gate::interrupt(exc + (v * STUB_SIZE) as u64)
        } else {
            Gate::interrupt(irq + ((v - FIRST_IRQ_VECTOR) * STUB_SIZE) as u64)
        };
    }
}

/// Loads the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr {
        limit: (core::mem::size_of::<Table>() - 1) as u16,
        base: IDT.get() as u64,
    };
    // SAFETY: the table is static, filled by `init` and never changed afterwards; every
    // gate points at a stub that handles its vector.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags))
    }
}

/// Registers `hook(vector, cpu)`, called from the interrupt path before the EOI.
pub fn set_hook(vector: u8, hook: fn(u8, usize)) {
    HOOKS[vector as usize].store(hook as usize, Ordering::Release);
}

/// Interrupts counted on `cpu` for `vector` (0 for exception vectors).
pub fn count(cpu: usize, vector: u8) -> u32 {
    let v = vector as usize;
    if cpu >= smp::MAX_CPUS || v < FIRST_IRQ_VECTOR {
        return 0;
    }
    COUNTS[cpu][v - FIRST_IRQ_VECTOR].load(Ordering::Relaxed)
}

#[no_mangle]
extern "C" fn probe_irq(vector: u64) {
    let vector = vector as u8;
    let cpu = smp::current_cpu();
    if (vector as usize) >= FIRST_IRQ_VECTOR && cpu < smp::MAX_CPUS {
        COUNTS[cpu][vector as usize - FIRST_IRQ_VECTOR].fetch_add(1, Ordering::Relaxed);
    }
    let hook = HOOKS[vector as usize].load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `set_hook` stores non-zero values, and it stores `fn(u8, usize)`.
        let hook: fn(u8, usize) = unsafe { core::mem::transmute::<usize, fn(u8, usize)>(hook) };
        hook(vector, cpu);
    }
    if vector != lapic::SPURIOUS_VECTOR {
        lapic::eoi();
    }
}

/// What the exception stub leaves on the stack.
#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    #[allow(dead_code)]
    ss: u64,
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
    "#26", "#27", "#HV", "#VC", "#SX", "#31",
];

static IN_EXCEPTION: AtomicBool = AtomicBool::new(false);

#[no_mangle]
extern "C" fn probe_exception(frame: &ExceptionFrame) -> ! {
    if IN_EXCEPTION.swap(true, Ordering::AcqRel) {
        // A fault while reporting one (or on a second CPU): leave without printing.
        exit::exit(ExitCode::Exception);
    }
    let vector = frame.vector as usize;
    crate::serial::with(|s| {
        let mut o = Object::new(s);
        crate::report::header(&mut o, false);
        let mut e = o.object("exception");
        e.u64("vector", vector as u64)
            .str("name", EXCEPTION_NAMES.get(vector).copied().unwrap_or("?"))
            .hex("error_code", frame.error_code)
            .hex("rip", frame.rip)
            .hex("rsp", frame.rsp)
            .hex("cs", frame.cs)
            .hex("rflags", frame.rflags)
            .u64("apic_id", lapic::id() as u64);
        if vector == 14 {
            e.hex("cr2", arch::cr2());
        }
        let _ = e.end();
        let _ = o.end();
        let _ = core::fmt::Write::write_str(s, "\n");
    });
    exit::exit(ExitCode::Exception)
}
