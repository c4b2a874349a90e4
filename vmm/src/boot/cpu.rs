//! Architectural state of a vCPU at boot: GDT, identity page tables, segment and control
//! registers, general registers, FPU, MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::EntryPoint;
use crate::layout;
use crate::memory::GuestMemoryMmap;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT selectors of the boot GDT.
pub const SEL_CODE64: u16 = 0x08;
/// Flat data segment.
pub const SEL_DATA: u16 = 0x10;
/// TSS (KVM wants a usable TR).
pub const SEL_TSS: u16 = 0x18;
/// Flat 32-bit code segment, for the PVH entry.
pub const SEL_CODE32: u16 = 0x20;

/// Errors while setting vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A vCPU ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// Which one.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// KVM set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs")]
    PartialMsrs {
        /// Set.
        set: usize,
        /// Asked.
        wanted: usize,
    },
    /// Writing the GDT or page tables failed.
    #[error("writing {what} into guest memory: {source}")]
    GuestMemory {
        /// What.
        what: &'static str,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Ioctl { op, source }
}

/// A GDT descriptor from flags (access byte in bits 0-7, flags in 12-15), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS, 32-bit code.
pub const BOOT_GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];

/// The GDT register's limit: the table's last byte.
#[allow(clippy::cast_possible_truncation)] // 5 entries of 8 bytes
const BOOT_GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;

/// The `kvm_segment` KVM wants for a GDT descriptor and its selector.
fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        // A 20-bit limit, in 4 KiB units when G is set: at most 0xffff_ffff.
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the boot GDT, an empty IDT and page tables identity-mapping the low 4 GiB with 2 MiB
/// pages (so the kernel, the boot data and the MMIO gap are all reachable).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    let gm = |what| move |source| CpuError::GuestMemory { what, source };
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT_START + i as u64 * 8))
            .map_err(gm("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(gm("IDT"))?;

    let pml4 = layout::PAGE_TABLES_START;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    mem.write_obj(pdpt | 0x03, GuestAddress(pml4))
        .map_err(gm("PML4"))?;
    for gib in 0..4u64 {
        let dir = pd + gib * 0x1000;
        mem.write_obj(dir | 0x03, GuestAddress(pdpt + gib * 8))
            .map_err(gm("PDPT"))?;
        let mut entries = [0u8; 4096];
        for (i, chunk) in entries.chunks_exact_mut(8).enumerate() {
            // Present, writable, 2 MiB page.
            let frame = ((gib << 30) + ((i as u64) << 21)) | 0x83;
            chunk.copy_from_slice(&frame.to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(dir))
            .map_err(gm("page directory"))?;
    }
    Ok(())
}

/// Sets segment and control registers for the entry convention.
pub fn setup_sregs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), CpuError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let data = segment_from_gdt(BOOT_GDT[2], SEL_DATA);
    let tss = segment_from_gdt(BOOT_GDT[3], SEL_TSS);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = BOOT_GDT_LIMIT;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match entry {
        EntryPoint::Linux64 { .. } => {
            sregs.cs = segment_from_gdt(BOOT_GDT[1], SEL_CODE64);
            sregs.cr3 = layout::PAGE_TABLES_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh { .. } => {
            // PVH: 32-bit protected mode, paging off, flat segments.
            sregs.cs = segment_from_gdt(BOOT_GDT[4], SEL_CODE32);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))
}

/// Sets the general registers of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), CpuError> {
    let regs = match entry {
        EntryPoint::Linux64 { rip } => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: layout::BOOT_STACK_POINTER,
            rbp: layout::BOOT_STACK_POINTER,
            rsi: layout::ZERO_PAGE_START,
            ..Default::default()
        },
        EntryPoint::Pvh { rip } => kvm_regs {
            rflags: 0x2,
            rip,
            rbx: layout::PVH_INFO_START,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))
}

/// x87 and SSE control words at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))
}

/// Boot MSRs: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WRITE_BACK: u64 = 6;

    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).expect("fewer MSRs than the FAM limit");
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(CpuError::PartialMsrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// Wires LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware does.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), CpuError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7;
    const DELIVERY_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        // The registers are `c_char`s: the same bytes, reinterpreted.
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i].to_ne_bytes()[0]);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = libc::c_char::from_ne_bytes([*b]);
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn gdt_segments_decode() {
        let cs = segment_from_gdt(BOOT_GDT[1], SEL_CODE64);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment_from_gdt(BOOT_GDT[4], SEL_CODE32);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = segment_from_gdt(BOOT_GDT[3], SEL_TSS);
        assert_eq!((tss.s, tss.type_, tss.g), (0, 0xb, 1));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem
            .read_obj(GuestAddress(layout::PAGE_TABLES_START))
            .unwrap();
        let pdpt = pml4 & !0xfff;
        let pdpt3: u64 = mem.read_obj(GuestAddress(pdpt + 3 * 8)).unwrap();
        // The last 2 MiB page of the fourth GiB maps the LAPIC window.
        let last: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_eq!(last & 0x83, 0x83);
    }
}
