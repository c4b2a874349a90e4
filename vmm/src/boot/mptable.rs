//! The Intel MultiProcessor Specification 1.4 table, so that a guest without ACPI finds its CPUs,
//! its IOAPIC and how ISA interrupts reach it.
//!
//! Layout at [`layout::MPTABLE_START`]: the 16-byte floating pointer, then the configuration
//! table (header and entries). Every structure is built as bytes and checksummed to zero.

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestMemoryMmap;

/// Most vCPUs an xAPIC guest can address (APIC ID 0xff is the broadcast ID, and the IOAPIC takes
/// the ID after the last CPU).
pub const MAX_VCPUS: u8 = 254;

const FLOATING_POINTER_SIZE: u32 = 16;
const HEADER_SIZE: usize = 44;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// The IOAPIC's pins, numbered in one byte of an I/O interrupt entry.
#[allow(clippy::cast_possible_truncation)] // 24 pins, checked by the assert
const IOAPIC_PINS: u8 = {
    assert!(layout::IOAPIC_PINS <= u8::MAX as u32);
    layout::IOAPIC_PINS as u8
};

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// Builds the whole table (floating pointer first) as it will sit at `base`.
pub fn build(base: u32, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC), then 8 reserved bytes.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&const { layout::low32(layout::IOAPIC_START) }.to_le_bytes());
    count += 1;
    // Every IOAPIC pin is reachable as an ISA interrupt with the bus's default polarity and
    // trigger mode (edge, active high): the serial port and the devices' legacy lines.
    for pin in 0..const { IOAPIC_PINS } {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_addr = base + FLOATING_POINTER_SIZE;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    // At most 254 vCPUs' entries plus the fixed ones: about 5 KiB, far below 64 KiB.
    let table_len = u16::try_from(HEADER_SIZE + entries.len()).unwrap_or(u16::MAX);
    header.extend_from_slice(&table_len.to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"PULSE   ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&const { layout::low32(layout::LAPIC_START) }.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length and checksum, reserved
    debug_assert_eq!(header.len(), HEADER_SIZE);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_SIZE as usize);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // features: configuration table present, no IMCR
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    fp
}

/// Writes the MP table for `vcpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    let table = build(const { layout::low32(layout::MPTABLE_START) }, vcpus);
    mem.write_slice(&table, GuestAddress(layout::MPTABLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts() {
        for vcpus in [1u8, 2, 4, MAX_VCPUS] {
            let t = build(layout::low32(layout::MPTABLE_START), vcpus);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let entries = u16::from_le_bytes([table[34], table[35]]) as usize;
            assert_eq!(entries, vcpus as usize + 2 + 24 + 2);
            // Processor entries come first, the first one is the boot processor.
            assert_eq!(table[44], ENTRY_PROCESSOR);
            assert_eq!(table[47], CPU_ENABLED | CPU_BOOT_PROCESSOR);
            // The whole table fits in the reserved area below 1 MiB.
            assert!(layout::MPTABLE_START + t.len() as u64 <= layout::HIMEM_START);
        }
    }
}
