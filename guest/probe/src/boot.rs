//! Entry points, the probe's own GDT and page tables, and the boot information.
//!
//! Two ways in, one way on:
//! - `linux64_start` (ELF `e_entry`): Linux 64-bit boot protocol. Long mode, paging on with
//!   an identity map of at least 4 GiB, interrupts off, `rsi` = zero page.
//! - `pvh_start32` (Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected mode, paging
//!   off, flat segments, `ebx` = `hvm_start_info`.
//!
//! Both write 123 to port 0x440 (the VMM's boot timer), zero `.bss`, build the same 4 GiB
//! identity map (2 MiB pages) in `.bss`, load the same GDT, switch to the BSP stack and
//! call [`probe_rust_start`]. Interrupts stay off throughout.

use crate::arch::{phys_slice, RacyCell, IDENTITY_MAP_END};
use pulse_probe::bootparams::{self as bp, MemSummary};
use pulse_probe::errors::ErrorList;

/// BSP stack size (the APs' stacks live in `smp`).
pub const BSP_STACK_SIZE: usize = 64 * 1024;

/// GDT selectors (same layout in the AP trampoline, which uses this GDT).
pub const SEL_CODE64: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_CODE32: u16 = 0x18;

/// 32-bit protected-mode code (AT&T syntax) that enters long mode on the page tables whose
/// address `$cr3` gives (an operand of `movl ..., %eax`): PAE, CR3, EFER.LME, then CR0.PG
/// (and PE, set already where the code comes from protected mode). A far jump to 64-bit
/// code must follow. Clobbers eax, ecx, edx. Used by the PVH entry and the AP trampoline.
macro_rules! enable_long_mode {
    ($cr3:literal) => {
        concat!(
            "
    movl %cr4, %eax
    orl $0x20, %eax              /* PAE */
    movl %eax, %cr4
    movl ",
            $cr3,
            ", %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx       /* EFER */
    rdmsr
    orl $0x100, %eax             /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax        /* PG | PE */
    movl %eax, %cr0
"
        )
    };
}
pub(crate) use enable_long_mode;

/// 64-bit code that loads every data segment register with the data selector (the asm
/// block's `sel_data` operand), first thing after the jump into 64-bit code. Clobbers ax.
macro_rules! load_data_segments {
    () => {
        "
    movw ${sel_data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
"
    };
}
pub(crate) use load_data_segments;

core::arch::global_asm!(
    r#"
/* ---- Xen PVH note: namesz 4, descsz 4, type 18 (PHYS32_ENTRY), "Xen\0", entry ---- */
.pushsection .note.Xen, "a", @note
.balign 4
.long 4
.long 4
.long 18
.asciz "Xen"
.long pvh_start32
.popsection

/* ---- GDT: null, 64-bit code, data, 32-bit code (accessed bits preset) ---- */
.pushsection .data.gdt, "aw"
.balign 16
.global gdt64
gdt64:
.quad 0
.quad 0x00af9b000000ffff
.quad 0x00cf93000000ffff
.quad 0x00cf9b000000ffff
gdt64_end:
.global gdt64_ptr
gdt64_ptr:
.word gdt64_end - gdt64 - 1
.quad gdt64
.popsection

/* ---- page tables (zeroed with .bss, filled by the entry code) ---- */
.pushsection .bss.pagetables, "aw", @nobits
.balign 4096
.global boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4 * 4096
.popsection

/* ---- BSP stack (not zeroed) ---- */
.pushsection .stack.bsp, "aw", @nobits
.balign 4096
bsp_stack_bottom: .skip {bsp_stack_size}
.global bsp_stack_top
bsp_stack_top:
.popsection

/* Fill the identity map: PML4[0] -> PDPT, PDPT[0..4] -> 4 PDs, 2048 x 2 MiB pages.
   The 4th GiB (MMIO: IOAPIC, LAPIC, virtio-mmio windows) is cache-disabled. Works in
   32-bit and 64-bit code; `\idx` is %ecx or %rcx. Clobbers eax, ecx. */
.macro probe_build_page_tables idx
    movl $boot_pdpt + 0x3, boot_pml4
    movl $boot_pd + 0x3, %eax
    xorl %ecx, %ecx
1:  movl %eax, boot_pdpt(,\idx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    cmpl $1536, %ecx
    jb 3f
    orl $0x18, %eax
3:  movl %eax, boot_pd(,\idx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b
.endm

.pushsection .text.boot, "ax"

/* ---- PVH: 32-bit protected mode, paging off, ebx = hvm_start_info ---- */
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi
    movb $123, %al
    movw $0x440, %dx
    outb %al, %dx
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    probe_build_page_tables %ecx
    lgdt gdt64_ptr
"#,
    enable_long_mode!("$boot_pml4"),
    r#"
    ljmp ${sel_code64}, $pvh_start64

.code64
pvh_start64:
"#,
    load_data_segments!(),
    r#"
    leaq bsp_stack_top(%rip), %rsp
    movl %esi, %edi              /* hvm_start_info, zero-extended */
    movl $1, %esi                /* BOOT_PVH */
    call probe_rust_start
    ud2

/* ---- Linux 64-bit boot protocol: long mode, rsi = boot_params ---- */
.global linux64_start
linux64_start:
    cli
    cld
    movq %rsi, %r15
    movb $123, %al
    movw $0x440, %dx
    outb %al, %dx
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq
    leaq bsp_stack_top(%rip), %rsp
    probe_build_page_tables %rcx
    lgdt gdt64_ptr(%rip)
    leaq boot_pml4(%rip), %rax
    movq %rax, %cr3
    pushq ${sel_code64}
    leaq 4f(%rip), %rax
    pushq %rax
    lretq
4:
"#,
    load_data_segments!(),
    r#"
    movq %r15, %rdi              /* boot_params */
    xorl %esi, %esi              /* BOOT_LINUX64 */
    call probe_rust_start
    ud2

.popsection
"#,
    bsp_stack_size = const BSP_STACK_SIZE,
    sel_code64 = const SEL_CODE64,
    sel_data = const SEL_DATA,
    options(att_syntax)
);

const BOOT_LINUX64: u64 = 0;
const BOOT_PVH: u64 = 1;

/// How the probe was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Linux64,
    Pvh,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linux64 => "linux64",
            Protocol::Pvh => "pvh",
        }
    }
}

/// What the entry code learnt, copied out of the VMM's (or firmware's) structures.
pub struct BootInfo {
    pub protocol: Protocol,
    /// The command line, printable ASCII, in the probe's own buffer.
    pub cmdline: &'static str,
    pub mem: MemSummary,
    pub errors: ErrorList,
}

/// Longest command line kept (the VMM's limit is 2048 bytes including the NUL).
const CMDLINE_MAX: usize = 2048;
static CMDLINE: RacyCell<[u8; CMDLINE_MAX]> = RacyCell::new([0; CMDLINE_MAX]);

/// Most memory-map entries looked at.
const MEMMAP_MAX: u32 = 128;

/// Called once by the entry code on the BSP stack, with the GDT and page tables loaded.
#[no_mangle]
extern "C" fn probe_rust_start(info_addr: u64, kind: u64) -> ! {
    let protocol = match kind {
        BOOT_LINUX64 => Protocol::Linux64,
        BOOT_PVH => Protocol::Pvh,
        _ => unreachable!(),
    };
    let boot = collect(protocol, info_addr);
    crate::main(boot)
}

fn in_map(addr: u64, len: u64) -> bool {
    addr != 0
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= IDENTITY_MAP_END)
}

fn collect(protocol: Protocol, info_addr: u64) -> BootInfo {
    let mut errors = ErrorList::new();
    let mut mem = MemSummary::default();
    let mut cmdline_addr = 0;
    match protocol {
        Protocol::Linux64 => {
            if in_map(info_addr, bp::ZERO_PAGE_LEN as u64) {
                // SAFETY: the boot protocol hands over a 4 KiB zero page at `info_addr`,
                // checked to be inside the identity map; nothing writes it any more.
                let zp = unsafe { phys_slice(info_addr, bp::ZERO_PAGE_LEN) };
                cmdline_addr = bp::linux_cmdline_addr(zp);
                bp::linux_e820(zp).for_each(|r| mem.add(r));
            } else {
                errors.push("boot: bad zero page address");
            }
        }
        Protocol::Pvh => {
            let si = if in_map(info_addr, bp::PVH_START_INFO_LEN as u64) {
                // SAFETY: PVH passes hvm_start_info in ebx; its address is inside the map.
                bp::parse_pvh(unsafe { phys_slice(info_addr, bp::PVH_START_INFO_LEN) })
            } else {
                None
            };
            match si {
                Some(si) => {
                    cmdline_addr = si.cmdline_paddr;
                    let n = si.memmap_entries.min(MEMMAP_MAX) as usize;
                    let len = n * bp::PVH_MEMMAP_ENTRY_LEN;
                    if n > 0 && in_map(si.memmap_paddr, len as u64) {
                        // SAFETY: the memory map the start info points to, inside the map.
                        let map = unsafe { phys_slice(si.memmap_paddr, len) };
                        map.chunks_exact(bp::PVH_MEMMAP_ENTRY_LEN)
                            .for_each(|e| mem.add(bp::parse_pvh_memmap_entry(e)));
                    }
                }
                None => errors.push("boot: bad hvm_start_info"),
            }
        }
    }
    let cmdline = copy_cmdline(cmdline_addr, &mut errors);
    BootInfo {
        protocol,
        cmdline,
        mem,
        errors,
    }
}

/// Copies the NUL-terminated command line at `addr` into the probe's buffer.
fn copy_cmdline(addr: u64, errors: &mut ErrorList) -> &'static str {
    // SAFETY: runs once, on the BSP, before any other CPU is started: nothing else
    // references the buffer.
    let buf = unsafe { &mut *CMDLINE.get() };
    if addr == 0 {
        return "";
    }
    if addr >= IDENTITY_MAP_END {
        errors.push("boot: command line above 4 GiB");
        return "";
    }
    let avail = (IDENTITY_MAP_END - addr).min(CMDLINE_MAX as u64 - 1) as usize;
    let mut len = 0;
    while len < avail {
        // SAFETY: byte by byte inside the identity map, stopping at the terminating NUL,
        // so nothing past the VMM's string is read unless it is longer than the buffer.
        let b = unsafe { core::ptr::read_volatile((addr as usize + len) as *const u8) };
        if b == 0 {
            break;
        }
        buf[len] = b;
        len += 1;
    }
    if len == CMDLINE_MAX - 1 {
        errors.push("boot: command line truncated");
    }
    bp::sanitize_cmdline(&mut buf[..len])
}
