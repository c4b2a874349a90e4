//! The I/O APIC: just enough to route one legacy virtio line (an edge-triggered pin) to a
//! vector on the BSP. Registers are reached indirectly: IOREGSEL at +0x00 picks one, IOWIN
//! at +0x10 reads or writes it.

use crate::arch::IDENTITY_MAP_END;

pub const DEFAULT_BASE: u32 = 0xfec0_0000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIR: u32 = 0x10;

/// Redirection entry, low half: vector; fixed delivery (0), physical destination (0), active
/// high (0) and edge (0) are all zero bits; bit 16 masks.
const REDIR_MASKED: u32 = 1 << 16;

pub struct IoApic {
    base: u64,
}

impl IoApic {
    pub fn new(base: u32) -> Result<Self, &'static str> {
        if base as u64 + 0x20 > IDENTITY_MAP_END || base & 0xf != 0 {
            return Err("ioapic: bad base address");
        }
        Ok(Self { base: base as u64 })
    }

    fn read(&self, reg: u32) -> u32 {
        // SAFETY: `base` is the I/O APIC page in the uncached 4th GiB of the identity map
        // (checked in `new`); only the BSP touches it, with interrupts off, so the select and
        // the window access are not interleaved with another pair.
        unsafe {
            core::ptr::write_volatile((self.base + IOREGSEL) as *mut u32, reg);
            core::ptr::read_volatile((self.base + IOWIN) as *const u32)
        }
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: as for `read`.
        unsafe {
            core::ptr::write_volatile((self.base + IOREGSEL) as *mut u32, reg);
            core::ptr::write_volatile((self.base + IOWIN) as *mut u32, value);
        }
    }

    /// Number of pins (redirection entries).
    pub fn pins(&self) -> u32 {
        (self.read(REG_VERSION) >> 16 & 0xff) + 1
    }

    /// Routes `pin` to `vector` on the CPU with APIC id `dest`: fixed, physical, edge,
    /// active high, unmasked. The high half is written first, while the entry is masked.
    pub fn route(&self, pin: u32, vector: u8, dest: u8) -> Result<(), &'static str> {
        if pin >= self.pins() {
            return Err("ioapic: legacy irq beyond the last pin");
        }
        let low = REG_REDIR + 2 * pin;
        self.write(low, REDIR_MASKED);
        self.write(low + 1, (dest as u32) << 24);
        self.write(low, vector as u32);
        Ok(())
    }
}
