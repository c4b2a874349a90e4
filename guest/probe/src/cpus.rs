//! Which CPUs the machine has: the MP table if there is one, else `probe.cpus`, else 1.

use crate::arch::phys_slice;
use crate::smp::MAX_CPUS;
use pulse_probe::errors::ErrorList;
use pulse_probe::mptable::{self, Floating, MpError, CONFIG_HEADER_LEN};

/// The CPUs to bring up (APIC ids) and what else the MP table said.
pub struct Cpus {
    ids: [u8; MAX_CPUS],
    n: usize,
    /// The list came from a valid MP table.
    pub mptable: bool,
    /// Physical address of the floating pointer, when found.
    pub floating_addr: Option<u64>,
    pub ioapic_addr: Option<u32>,
    pub errors: ErrorList,
}

impl Cpus {
    pub fn apic_ids(&self) -> &[u8] {
        &self.ids[..self.n]
    }

    fn push(&mut self, id: u8) {
        if self.n < MAX_CPUS {
            self.ids[self.n] = id;
            self.n += 1;
        } else {
            self.errors.push("cpus: more than the probe supports");
        }
    }
}

/// Where the MP spec says to look: the first KiB of the EBDA, the last KiB of base memory
/// (639-640 KiB) and the BIOS ROM area.
fn search_regions() -> [(u64, usize); 3] {
    // SAFETY: the BIOS data area word at 0x40E (EBDA segment) is ordinary low RAM in the
    // identity map; a VMM that sets no BDA leaves it zero.
    let seg = unsafe { core::ptr::read_volatile(0x40e as *const u16) } as u64;
    let ebda = seg << 4;
    let ebda_region = if ebda >= 0x400 && ebda + 1024 <= 0xa0000 {
        (ebda, 1024)
    } else {
        (0, 0)
    };
    [ebda_region, (0x9fc00, 1024), (0xf0000, 0x10000)]
}

fn find_floating() -> Option<(u64, Floating)> {
    search_regions()
        .into_iter()
        .filter(|r| r.1 != 0)
        .find_map(|(base, len)| {
            // SAFETY: all regions lie in the first MiB, which the identity map covers and which
            // is RAM or ROM on a PC (and on the Pulse VMM); the probe only reads it.
            let region = unsafe { phys_slice(base, len) };
            mptable::find_floating(region).map(|(off, f)| (base + off as u64, f))
        })
}

fn read_config(f: &Floating) -> Result<mptable::MpInfo, MpError> {
    if f.feature1 != 0 || f.config_addr == 0 {
        return Err(MpError::DefaultConfig);
    }
    let addr = f.config_addr as u64;
    // SAFETY: the floating pointer names the table's address (32-bit, so inside the
    // identity map); the header is read first to learn the length.
    let header = unsafe { phys_slice(addr, CONFIG_HEADER_LEN) };
    let len = mptable::config_table_len(header)?;
    // SAFETY: the same table with the length its header gives (at most 64 KiB).
    mptable::parse_config(unsafe { phys_slice(addr, len) })
}

pub fn discover(cmdline_cpus: Option<u32>) -> Cpus {
    let mut cpus = Cpus {
        ids: [0; MAX_CPUS],
        n: 0,
        mptable: false,
        floating_addr: None,
        ioapic_addr: None,
        errors: ErrorList::new(),
    };
    if let Some((addr, f)) = find_floating() {
        cpus.floating_addr = Some(addr);
        match read_config(&f) {
            Ok(info) if info.cpus().is_empty() => cpus.errors.push("mptable: no processors"),
            Ok(info) => {
                cpus.mptable = true;
                cpus.ioapic_addr = info.ioapic_addr;
                for c in info.cpus() {
                    cpus.push(c.apic_id);
                }
                if info.dropped > 0 {
                    cpus.errors.push("cpus: more than the probe supports");
                }
            }
            Err(e) => cpus.errors.push(e.as_str()),
        }
    }
    if !cpus.mptable {
        for id in 0..cmdline_cpus.unwrap_or(1) {
            cpus.push(id as u8);
        }
    }
    cpus
}
