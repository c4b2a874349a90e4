//! The guest physical address map of a Pulse microVM on x86_64.
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BIOS data area (left zero)
//! 0x0000_0500  boot GDT                 (BOOT_GDT_START)
//! 0x0000_0520  boot IDT, empty          (BOOT_IDT_START)
//! 0x0000_6000  PVH hvm_start_info + e820-style memory map (PVH_INFO_START)
//! 0x0000_7000  Linux zero page, struct boot_params (ZERO_PAGE_START)
//! 0x0000_8000  free: the probe guest puts its AP trampoline here (SIPI vector 0x08)
//! 0x0000_8ff0  initial stack of the boot vCPU (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, PDPT and four page directories: identity map of 4 GiB (PAGE_TABLES_START)
//! 0x0002_0000  kernel command line, at most CMDLINE_MAX_SIZE bytes (CMDLINE_START)
//! 0x0009_fc00  MP table in the EBDA, up to 1 MiB reserved (MPTABLE_START)
//! 0x0010_0000  kernel image (HIMEM_START), then RAM up to the MMIO gap; the initrd sits at the
//!              top of this low RAM
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio windows from MMIO_DEVICES_START, 8 KiB each,
//!              IOAPIC at 0xfec0_0000, LAPIC/MSI window at 0xfee0_0000, KVM's TSS pages
//! 0x1_0000_0000  RAM above 4 GiB, when the guest has more than 3 GiB
//! ```

/// `addr`, a fixed address below 4 GiB, as the 32-bit field a boot structure holds. Called in
/// const context (`const { layout::low32(X) }`), an address at or above 4 GiB fails the build.
#[allow(clippy::cast_possible_truncation)] // the assert just above the cast
pub const fn low32(addr: u64) -> u32 {
    assert!(
        addr <= u32::MAX as u64,
        "a 32-bit boot field cannot hold this address"
    );
    addr as u32
}

/// Boot GDT (4 entries: null, code64, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT, one empty entry: no interrupts are expected before the guest installs its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Memory map entries of the PVH start info.
pub const PVH_MEMMAP_START: u64 = PVH_INFO_START + 0x40;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (64-bit boot protocol).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot page tables; PDPT and page directories follow, one page each.
pub const PAGE_TABLES_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted, NUL included (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// End of conventional memory: 0xa0000-0xfffff is the VGA hole and BIOS area, reserved.
pub const LOW_RAM_END: u64 = 0xa0000;
/// Kernels are loaded here, and ELF entry points must not be below it.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window (registers, config space, doorbells).
pub const MMIO_DEVICE_WINDOW: u64 = 0x2000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers; also the base of the x86 MSI address window.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel hosts, at the top of the gap.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// One page KVM needs for the real-mode identity map on Intel hosts, just below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// RAM that does not fit below the gap continues here.
pub const HIGH_RAM_START: u64 = MMIO_GAP_END;

/// IOAPIC pins, and so legacy GSIs 0..24.
pub const IOAPIC_PINS: u32 = 24;
/// GSI (IOAPIC pin) of COM1.
pub const SERIAL_COM1_GSI: u32 = 4;
/// First GSI handed to virtio-mmio devices as their legacy line.
pub const FIRST_DEVICE_GSI: u32 = 5;

/// I/O port of COM1.
pub const SERIAL_COM1_PORT: u16 = 0x3f8;
/// I/O port the guest writes once when it has booted (as Firecracker's boot timer).
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// Value the guest writes to the boot-timer port.
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// I/O port where a test guest marks the phases of its run (see `devices::pseudo::phase_marker`).
pub const PHASE_MARKER_PORT: u16 = 0x441;
/// I/O port whose write stops the VM with a status code (QEMU's isa-debug-exit address).
pub const DEBUG_EXIT_PORT: u16 = 0x501;

/// RAM regions for a guest of `mem_size` bytes: below the MMIO gap first, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (HIGH_RAM_START, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_guest_is_split_around_the_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(
            regions,
            vec![(0, MMIO_GAP_START), (HIGH_RAM_START, 1 << 30)]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }

    // The fixed boot areas must not overlap: checked at compile time.
    const _: () = {
        assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
        assert!(PVH_MEMMAP_START + 8 * 24 <= ZERO_PAGE_START);
        assert!(ZERO_PAGE_START + 0x1000 <= 0x8000);
        assert!(BOOT_STACK_POINTER < PAGE_TABLES_START);
        // PML4 + PDPT + 4 page directories.
        assert!(PAGE_TABLES_START + 6 * 0x1000 <= CMDLINE_START);
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
        assert!(MMIO_DEVICES_START < IOAPIC_START && KVM_IDENTITY_MAP_START > LAPIC_START);
    };
}
