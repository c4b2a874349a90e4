//! Reading the two boot-information structures the probe can be entered with:
//! Linux `struct boot_params` (the "zero page", 64-bit boot protocol) and Xen/PVH
//! `struct hvm_start_info`. Everything here works on byte slices copied or mapped by the
//! caller; pointers found in the structures are returned as physical addresses.

/// Size of the zero page.
pub const ZERO_PAGE_LEN: usize = 4096;
/// `boot_params.ext_cmd_line_ptr`: high 32 bits of the command-line address.
pub const ZP_EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `boot_params.e820_entries` (u8).
pub const ZP_E820_ENTRIES: usize = 0x1e8;
/// `boot_params.hdr.cmd_line_ptr`: low 32 bits of the command-line address.
pub const ZP_CMD_LINE_PTR: usize = 0x228;
/// `boot_params.hdr.cmdline_size`: longest command line the kernel accepts (informational).
pub const ZP_CMDLINE_SIZE: usize = 0x238;
/// `boot_params.e820_table`: up to 128 entries of 20 bytes (addr u64, size u64, type u32).
pub const ZP_E820_TABLE: usize = 0x2d0;
pub const E820_MAX_ENTRIES: usize = 128;
pub const E820_ENTRY_LEN: usize = 20;

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` (version 1).
pub const PVH_START_INFO_LEN: usize = 0x38;
/// Field offsets of `hvm_start_info` (Xen `arch-x86/hvm/start_info.h`): magic 0x00,
/// version 0x04, flags 0x08, nr_modules 0x0c, modlist_paddr 0x10, cmdline_paddr 0x18,
/// rsdp_paddr 0x20, memmap_paddr 0x28, memmap_entries 0x30, reserved 0x34.
pub const PVH_VERSION: usize = 0x04;
pub const PVH_CMDLINE_PADDR: usize = 0x18;
pub const PVH_MEMMAP_PADDR: usize = 0x28;
pub const PVH_MEMMAP_ENTRIES: usize = 0x30;
/// Size of `hvm_memmap_table_entry` (addr u64, size u64, type u32, reserved u32).
pub const PVH_MEMMAP_ENTRY_LEN: usize = 24;

/// Memory-map type of usable RAM, in both e820 and the PVH memmap.
pub const MEM_TYPE_RAM: u32 = 1;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// What the probe reports about the memory map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemSummary {
    /// Number of entries in the map.
    pub regions: u32,
    /// Sum of the sizes of the RAM entries.
    pub ram_bytes: u64,
}

impl MemSummary {
    pub fn add(&mut self, r: MemRegion) {
        self.regions += 1;
        if r.kind == MEM_TYPE_RAM {
            self.ram_bytes = self.ram_bytes.saturating_add(r.size);
        }
    }
}

/// Physical address of the command line in a zero page (0: none).
pub fn linux_cmdline_addr(zp: &[u8]) -> u64 {
    u32_at(zp, ZP_CMD_LINE_PTR) as u64 | (u32_at(zp, ZP_EXT_CMD_LINE_PTR) as u64) << 32
}

/// The e820 table of a zero page.
pub fn linux_e820(zp: &[u8]) -> impl Iterator<Item = MemRegion> + '_ {
    let n = (zp[ZP_E820_ENTRIES] as usize).min(E820_MAX_ENTRIES);
    (0..n).map(move |i| {
        let e = &zp[ZP_E820_TABLE + i * E820_ENTRY_LEN..][..E820_ENTRY_LEN];
        MemRegion {
            addr: u64_at(e, 0),
            size: u64_at(e, 8),
            kind: u32_at(e, 16),
        }
    })
}

/// The fields of `hvm_start_info` the probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvhStartInfo {
    pub version: u32,
    pub cmdline_paddr: u64,
    /// Physical address and entry count of the memory map (0, 0 before version 1).
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

/// Parses `hvm_start_info`; `None` when the magic is wrong.
pub fn parse_pvh(si: &[u8]) -> Option<PvhStartInfo> {
    if si.len() < PVH_START_INFO_LEN || u32_at(si, 0) != PVH_MAGIC {
        return None;
    }
    let version = u32_at(si, PVH_VERSION);
    let (memmap_paddr, memmap_entries) = if version >= 1 {
        (u64_at(si, PVH_MEMMAP_PADDR), u32_at(si, PVH_MEMMAP_ENTRIES))
    } else {
        (0, 0)
    };
    Some(PvhStartInfo {
        version,
        cmdline_paddr: u64_at(si, PVH_CMDLINE_PADDR),
        memmap_paddr,
        memmap_entries,
    })
}

/// One `hvm_memmap_table_entry`.
pub fn parse_pvh_memmap_entry(e: &[u8]) -> MemRegion {
    MemRegion {
        addr: u64_at(e, 0),
        size: u64_at(e, 8),
        kind: u32_at(e, 16),
    }
}

/// Length of the NUL-terminated string at the start of `b` (all of `b` without a NUL).
pub fn c_str_len(b: &[u8]) -> usize {
    b.iter().position(|&c| c == 0).unwrap_or(b.len())
}

/// Makes a command line printable ASCII in place: any byte outside 0x20..0x7e becomes a
/// space (tabs and newlines separate words anyway; anything else is not a valid key).
/// Returns the result as `&str`.
pub fn sanitize_cmdline(b: &mut [u8]) -> &str {
    for c in b.iter_mut() {
        if !(0x20..0x7f).contains(c) {
            *c = b' ';
        }
    }
    // Every byte is ASCII now.
    core::str::from_utf8(b).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page() {
        let mut zp = [0u8; ZERO_PAGE_LEN];
        zp[ZP_CMD_LINE_PTR..ZP_CMD_LINE_PTR + 4].copy_from_slice(&0x20000u32.to_le_bytes());
        assert_eq!(linux_cmdline_addr(&zp), 0x20000);
        zp[ZP_EXT_CMD_LINE_PTR..ZP_EXT_CMD_LINE_PTR + 4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(linux_cmdline_addr(&zp), 0x1_0002_0000);

        let entries = [
            (0u64, 0x9fc00u64, 1u32),
            (0x9fc00, 0x400, 2),
            (0x100000, 0x7f00000, 1),
        ];
        zp[ZP_E820_ENTRIES] = entries.len() as u8;
        for (i, (a, s, t)) in entries.iter().enumerate() {
            let e = &mut zp[ZP_E820_TABLE + i * 20..][..20];
            e[0..8].copy_from_slice(&a.to_le_bytes());
            e[8..16].copy_from_slice(&s.to_le_bytes());
            e[16..20].copy_from_slice(&t.to_le_bytes());
        }
        let mut sum = MemSummary::default();
        linux_e820(&zp).for_each(|r| sum.add(r));
        assert_eq!(
            sum,
            MemSummary {
                regions: 3,
                ram_bytes: 0x9fc00 + 0x7f00000
            }
        );
        assert_eq!(linux_e820(&zp).nth(1).unwrap().kind, 2);
        // a bogus count never reads past the table
        zp[ZP_E820_ENTRIES] = 255;
        assert_eq!(linux_e820(&zp).count(), E820_MAX_ENTRIES);
    }

    #[test]
    fn pvh() {
        let mut si = [0u8; PVH_START_INFO_LEN];
        assert!(parse_pvh(&si).is_none());
        si[0..4].copy_from_slice(&PVH_MAGIC.to_le_bytes());
        si[0x18..0x20].copy_from_slice(&0x7000u64.to_le_bytes());
        si[0x20..0x28].copy_from_slice(&0xe0000u64.to_le_bytes()); // rsdp, unused
        si[0x28..0x30].copy_from_slice(&0x6040u64.to_le_bytes());
        si[0x30..0x34].copy_from_slice(&3u32.to_le_bytes());
        let p = parse_pvh(&si).unwrap();
        assert_eq!(
            (p.cmdline_paddr, p.memmap_paddr, p.memmap_entries),
            (0x7000, 0, 0)
        );
        si[4] = 1;
        let p = parse_pvh(&si).unwrap();
        assert_eq!(
            (p.version, p.memmap_paddr, p.memmap_entries),
            (1, 0x6040, 3)
        );

        let mut e = [0u8; 24];
        e[8..16].copy_from_slice(&0x100000u64.to_le_bytes());
        e[16] = 1;
        assert_eq!(
            parse_pvh_memmap_entry(&e),
            MemRegion {
                addr: 0,
                size: 0x100000,
                kind: 1
            }
        );
    }

    #[test]
    fn strings() {
        assert_eq!(c_str_len(b"abc\0def"), 3);
        assert_eq!(c_str_len(b"abc"), 3);
        let mut b = *b"a\tb\xffc";
        assert_eq!(sanitize_cmdline(&mut b), "a b c");
    }
}
