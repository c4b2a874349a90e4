//! The Linux x86 boot protocol's zero page (`struct boot_params`) and the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::InitrdPlacement;
use crate::layout;
use crate::memory::GuestMemoryMmap;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type.
    pub kind: u32,
}

/// The guest's memory map: conventional memory, the reserved EBDA/VGA/BIOS area, RAM from 1 MiB
/// to the MMIO gap, and RAM above 4 GiB.
pub fn ram_map(mem: &GuestMemoryMmap) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: layout::EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(layout::HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Writes the zero page. `header` is the bzImage's own setup header, if any; `cmdline_len`
/// includes the NUL.
pub fn write(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    map: &[MemoryMapEntry],
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    } else {
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    // "Undefined" boot loader: the kernel asks nothing of it.
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = u32::from_le_bytes(*b"HdrS");
    params.hdr.cmd_line_ptr = const { layout::low32(layout::CMDLINE_START) };
    // `boot::check_cmdline` keeps the command line under CMDLINE_MAX_SIZE (2 KiB).
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = initrd {
        // `load_initrd` puts the initrd below the MMIO gap (3 GiB): both fit in 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        {
            params.hdr.ramdisk_image = initrd.addr as u32;
            params.hdr.ramdisk_size = initrd.size as u32;
        }
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    // The table holds 128 entries: the count fits in its byte.
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(u8::MAX);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_covers_low_and_high_ram() {
        let mem = crate::memory::create_guest_memory(64).unwrap();
        let map = ram_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, layout::HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 64 << 20);
    }

    #[test]
    fn zero_page_points_at_cmdline_and_initrd() {
        let mem = crate::memory::create_guest_memory(64).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x300_0000,
            size: 4096,
        };
        write(&mem, None, &ram_map(&mem), 14, Some(initrd)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!(u64::from(hdr.cmd_line_ptr), layout::CMDLINE_START);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!(params.e820_entries, 3);
    }
}
