//! The PVH boot protocol's `hvm_start_info`, its memory map and module list (the initrd).

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::zero_page::MemoryMapEntry;
use super::InitrdPlacement;
use crate::layout;
use crate::memory::GuestMemoryMmap;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: a plain C struct of integers with no padding-sensitive invariants.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: a plain C struct of integers.
unsafe impl ByteValued for MemmapEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: a plain C struct of integers.
unsafe impl ByteValued for ModlistEntry {}

/// Writes the start info at [`layout::PVH_INFO_START`], the memory map after it and, with an
/// initrd, a one-entry module list after the map.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    _cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in map.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        });
        mem.write_obj(
            entry,
            GuestAddress(layout::PVH_MEMMAP_START + i as u64 * entry_size),
        )?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        // A handful of RAM and reserved ranges.
        memmap_entries: u32::try_from(map.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let modlist = layout::PVH_MEMMAP_START + map.len() as u64 * entry_size;
        mem.write_obj(
            ModlistEntry(hvm_modlist_entry {
                paddr: initrd.addr,
                size: initrd.size,
                ..Default::default()
            }),
            GuestAddress(modlist),
        )?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
    }
    mem.write_obj(StartInfo(info), GuestAddress(layout::PVH_INFO_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_has_magic_cmdline_and_memmap() {
        let mem = crate::memory::create_guest_memory(32).unwrap();
        let map = super::super::zero_page::ram_map(&mem);
        let initrd = InitrdPlacement {
            addr: 0x100_0000,
            size: 10,
        };
        write_start_info(&mem, &map, 5, Some(initrd)).unwrap();
        let info: StartInfo = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.0.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.0.cmdline_paddr, layout::CMDLINE_START);
        assert_eq!(info.0.memmap_entries, u32::try_from(map.len()).unwrap());
        assert_eq!(info.0.nr_modules, 1);
        let module: ModlistEntry = mem.read_obj(GuestAddress(info.0.modlist_paddr)).unwrap();
        assert_eq!(module.0.paddr, 0x100_0000);
        // The memory map and module list stay clear of the zero page.
        assert!(info.0.modlist_paddr + 32 <= layout::ZERO_PAGE_START);
    }
}
