//! Intel MultiProcessor Specification 1.4 tables: the floating pointer ("_MP_") and the
//! configuration table ("PCMP"). Parsing works on byte slices; the guest maps physical
//! memory into slices and the host tests build tables by hand.

/// Most processor entries kept (more are counted in [`MpInfo::dropped`]).
pub const MAX_MP_CPUS: usize = 64;

/// Size of the floating pointer structure (one 16-byte paragraph).
pub const FLOATING_LEN: usize = 16;
/// Size of the configuration table header; the entries follow it.
pub const CONFIG_HEADER_LEN: usize = 44;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpError {
    BadSignature,
    BadChecksum,
    Truncated,
    /// Feature byte 1 selects one of the spec's default configurations (no table).
    DefaultConfig,
    UnknownEntry,
}

impl MpError {
    pub fn as_str(self) -> &'static str {
        match self {
            MpError::BadSignature => "mptable: bad signature",
            MpError::BadChecksum => "mptable: bad checksum",
            MpError::Truncated => "mptable: truncated",
            MpError::DefaultConfig => "mptable: default configuration not supported",
            MpError::UnknownEntry => "mptable: unknown entry type",
        }
    }
}

/// A valid floating pointer structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Floating {
    /// Physical address of the configuration table (0: default configuration).
    pub config_addr: u32,
    pub spec_rev: u8,
    pub feature1: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MpCpu {
    pub apic_id: u8,
    pub bsp: bool,
}

/// What the probe takes from the configuration table.
#[derive(Clone, Copy, Debug)]
pub struct MpInfo {
    cpus: [MpCpu; MAX_MP_CPUS],
    ncpus: usize,
    /// Enabled processors beyond [`MAX_MP_CPUS`].
    pub dropped: usize,
    /// Processor entries without the enabled flag.
    pub disabled: usize,
    /// Address of the first enabled I/O APIC.
    pub ioapic_addr: Option<u32>,
    pub lapic_addr: u32,
}

impl MpInfo {
    /// Enabled processors in table order.
    pub fn cpus(&self) -> &[MpCpu] {
        &self.cpus[..self.ncpus]
    }
}

/// True when the bytes sum to 0 modulo 256.
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Checks one 16-byte candidate for a floating pointer structure.
pub fn parse_floating(b: &[u8]) -> Option<Floating> {
    if b.len() < FLOATING_LEN || &b[0..4] != b"_MP_" {
        return None;
    }
    let len = b[8] as usize * 16;
    if len < FLOATING_LEN || len > b.len() || !checksum_ok(&b[..len]) {
        return None;
    }
    Some(Floating {
        config_addr: u32_at(b, 4),
        spec_rev: b[9],
        feature1: b[11],
    })
}

/// Scans `region` on 16-byte boundaries; returns the offset of the first valid pointer.
pub fn find_floating(region: &[u8]) -> Option<(usize, Floating)> {
    (0..region.len().saturating_sub(FLOATING_LEN - 1))
        .step_by(16)
        .find_map(|off| parse_floating(&region[off..]).map(|f| (off, f)))
}

/// Length of the base configuration table, read from its header.
pub fn config_table_len(header: &[u8]) -> Result<usize, MpError> {
    if header.len() < CONFIG_HEADER_LEN {
        return Err(MpError::Truncated);
    }
    if &header[0..4] != b"PCMP" {
        return Err(MpError::BadSignature);
    }
    let len = u16_at(header, 4) as usize;
    if len < CONFIG_HEADER_LEN {
        return Err(MpError::Truncated);
    }
    Ok(len)
}

/// Parses a whole base configuration table (`table.len()` >= its length field).
pub fn parse_config(table: &[u8]) -> Result<MpInfo, MpError> {
    let len = config_table_len(table)?;
    if table.len() < len {
        return Err(MpError::Truncated);
    }
    let table = &table[..len];
    if !checksum_ok(table) {
        return Err(MpError::BadChecksum);
    }
    let mut info = MpInfo {
        cpus: [MpCpu::default(); MAX_MP_CPUS],
        ncpus: 0,
        dropped: 0,
        disabled: 0,
        ioapic_addr: None,
        lapic_addr: u32_at(table, 0x24),
    };
    // Entries are walked up to the table length; the entry-count field is not trusted
    // (QEMU's qboot firmware leaves it 0), as Linux does.
    let mut off = CONFIG_HEADER_LEN;
    while off < len {
        let kind = table[off];
        let size = match kind {
            ENTRY_PROCESSOR => 20,
            ENTRY_BUS | ENTRY_IOAPIC | ENTRY_IO_INTERRUPT | ENTRY_LOCAL_INTERRUPT => 8,
            _ => return Err(MpError::UnknownEntry),
        };
        let e = table.get(off..off + size).ok_or(MpError::Truncated)?;
        match kind {
            ENTRY_PROCESSOR => {
                let flags = e[3];
                if flags & 1 == 0 {
                    info.disabled += 1;
                } else if info.ncpus < MAX_MP_CPUS {
                    info.cpus[info.ncpus] = MpCpu {
                        apic_id: e[1],
                        bsp: flags & 2 != 0,
                    };
                    info.ncpus += 1;
                } else {
                    info.dropped += 1;
                }
            }
            ENTRY_IOAPIC if e[3] & 1 != 0 && info.ioapic_addr.is_none() => {
                info.ioapic_addr = Some(u32_at(e, 4));
            }
            _ => {}
        }
        off += size;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        b[at] = 0u8.wrapping_sub(sum);
    }

    fn floating(config: u32) -> [u8; 16] {
        let mut f = [0u8; 16];
        f[0..4].copy_from_slice(b"_MP_");
        f[4..8].copy_from_slice(&config.to_le_bytes());
        f[8] = 1;
        f[9] = 4;
        fix_checksum(&mut f, 10);
        f
    }

    /// cpus: (apic id, flags)
    fn table(cpus: &[(u8, u8)], ioapic: Option<u32>) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(b"PCMP");
        t.extend_from_slice(&[0, 0, 4, 0]); // length (later), rev, checksum
        t.extend_from_slice(b"PULSE   PROBE-TEST  ");
        t.extend_from_slice(&[0; 8]); // oem table ptr, size, count (later)
        t.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        t.extend_from_slice(&[0; 4]);
        assert_eq!(t.len(), CONFIG_HEADER_LEN);
        let mut n = 0u16;
        for (id, flags) in cpus {
            let mut e = [0u8; 20];
            e[0] = ENTRY_PROCESSOR;
            e[1] = *id;
            e[2] = 0x14;
            e[3] = *flags;
            t.extend_from_slice(&e);
            n += 1;
        }
        t.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        n += 1;
        if let Some(a) = ioapic {
            t.extend_from_slice(&[ENTRY_IOAPIC, 4, 0x11, 1]);
            t.extend_from_slice(&a.to_le_bytes());
            n += 1;
        }
        t.extend_from_slice(&[ENTRY_IO_INTERRUPT, 0, 0, 0, 0, 0, 4, 0]);
        t.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, 3, 0, 0, 0, 0, 0xff, 0]);
        n += 2;
        let len = t.len() as u16;
        t[4..6].copy_from_slice(&len.to_le_bytes());
        t[0x22..0x24].copy_from_slice(&n.to_le_bytes());
        fix_checksum(&mut t, 7);
        t
    }

    #[test]
    fn finds_floating_pointer_aligned_only() {
        let mut region = [0u8; 1024];
        let f = floating(0x9fc10);
        region[0x3f0..0x400].copy_from_slice(&f);
        let (off, fl) = find_floating(&region).unwrap();
        assert_eq!(off, 0x3f0);
        assert_eq!(fl.config_addr, 0x9fc10);
        assert_eq!(fl.feature1, 0);

        let mut region = [0u8; 64];
        region[8..24].copy_from_slice(&f); // not on a paragraph
        assert!(find_floating(&region).is_none());

        let mut bad = f;
        bad[5] ^= 1;
        assert!(parse_floating(&bad).is_none());
        assert!(find_floating(&[]).is_none());
    }

    #[test]
    fn parses_processors_and_ioapic() {
        let t = table(&[(0, 3), (1, 1), (2, 0), (5, 1)], Some(0xfec0_0000));
        let info = parse_config(&t).unwrap();
        let ids: Vec<u8> = info.cpus().iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, [0, 1, 5]);
        assert!(info.cpus()[0].bsp && !info.cpus()[1].bsp);
        assert_eq!(info.disabled, 1);
        assert_eq!(info.ioapic_addr, Some(0xfec0_0000));
        assert_eq!(info.lapic_addr, 0xfee0_0000);
        assert_eq!(config_table_len(&t).unwrap(), t.len());
    }

    #[test]
    fn ignores_entry_count() {
        let mut t = table(&[(0, 3), (1, 1)], Some(0xfec0_0000));
        t[0x22] = 0;
        fix_checksum(&mut t, 7);
        let info = parse_config(&t).unwrap();
        assert_eq!(info.cpus().len(), 2);
        assert_eq!(info.ioapic_addr, Some(0xfec0_0000));
    }

    #[test]
    fn rejects_bad_tables() {
        let mut t = table(&[(0, 3)], None);
        assert_eq!(parse_config(&t).unwrap().ioapic_addr, None);
        t[50] ^= 0x40;
        assert_eq!(parse_config(&t).unwrap_err(), MpError::BadChecksum);
        let t = table(&[(0, 3)], None);
        assert_eq!(
            parse_config(&t[..t.len() - 1]).unwrap_err(),
            MpError::Truncated
        );
        let mut t = table(&[(0, 3)], None);
        t[0] = b'X';
        assert_eq!(parse_config(&t).unwrap_err(), MpError::BadSignature);
        let mut t = table(&[(0, 3)], None);
        t[CONFIG_HEADER_LEN] = 9;
        fix_checksum(&mut t, 7);
        assert_eq!(parse_config(&t).unwrap_err(), MpError::UnknownEntry);
    }

    #[test]
    fn caps_processor_count() {
        let cpus: Vec<(u8, u8)> = (0..70).map(|i| (i as u8, 1)).collect();
        let info = parse_config(&table(&cpus, None)).unwrap();
        assert_eq!(info.cpus().len(), MAX_MP_CPUS);
        assert_eq!(info.dropped, 70 - MAX_MP_CPUS);
    }
}
