//! Access to one device window. Every access is an exit to the VMM, so the driver reads and
//! writes only what the protocol needs, with the width each register demands: the VMM ignores
//! accesses of the wrong width (MSI_CSR and MSI_CMD are 16-bit, the rest 32-bit).

use crate::arch::IDENTITY_MAP_END;
use pulse_probe::virtio_spec::reg;

#[derive(Clone, Copy)]
pub struct Window {
    base: u64,
    size: u64,
}

impl Window {
    /// The window at `base`; it must lie in the identity map's uncached 4th GiB, where the
    /// probe's page tables map device memory.
    pub fn new(base: u64, size: u64) -> Result<Self, &'static str> {
        let end = base.checked_add(size).ok_or("virtio: window wraps")?;
        if base < 3 << 30 || end > IDENTITY_MAP_END || base & 0xfff != 0 {
            return Err("virtio: window outside the probe's device memory map");
        }
        Ok(Self { base, size })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Address of `offset` (for doorbells, which are written from other CPUs).
    pub fn addr(&self, offset: u64) -> u64 {
        self.base + offset
    }

    /// One MMIO read as wide as `T` (u8, u16 or u32: the widths the registers have).
    fn read<T: Copy>(&self, offset: u64) -> T {
        debug_assert!(offset + size_of::<T>() as u64 <= self.size);
        // SAFETY: the window is device memory inside the identity map (checked in `new`),
        // mapped uncached; a volatile load of a u8/u16/u32 is exactly one MMIO read of that
        // width.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const T) }
    }

    /// One MMIO write as wide as `T`, as [`Self::read`].
    fn write<T: Copy>(&self, offset: u64, value: T) {
        debug_assert!(offset + size_of::<T>() as u64 <= self.size);
        // SAFETY: as for `read`; one MMIO write of `T`'s width.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut T, value) }
    }

    pub fn read32(&self, offset: u64) -> u32 {
        self.read(offset)
    }

    pub fn write32(&self, offset: u64, value: u32) {
        self.write(offset, value)
    }

    /// One byte of device configuration space (the only area with 8-bit access).
    pub fn read8(&self, offset: u64) -> u8 {
        self.read(offset)
    }

    /// One 8-bit write (only the hostile mode writes registers this way).
    pub fn write8(&self, offset: u64, value: u8) {
        self.write(offset, value)
    }

    pub fn read16(&self, offset: u64) -> u16 {
        self.read(offset)
    }

    pub fn write16(&self, offset: u64, value: u16) {
        self.write(offset, value)
    }

    /// Selects queue `q`, gives it `size` entries and its rings (descriptor table, driver
    /// and device areas), and marks it ready.
    pub fn enable_queue(&self, q: u16, size: u16, desc: u64, driver: u64, device: u64) {
        self.write32(reg::QUEUE_SEL, q as u32);
        self.write32(reg::QUEUE_NUM, size as u32);
        for (lo, hi, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc),
            (reg::QUEUE_AVAIL_LOW, reg::QUEUE_AVAIL_HIGH, driver),
            (reg::QUEUE_USED_LOW, reg::QUEUE_USED_HIGH, device),
        ] {
            self.write32(lo, addr as u32);
            self.write32(hi, (addr >> 32) as u32);
        }
        self.write32(reg::QUEUE_READY, 1);
    }

    /// Reads with `read` until ConfigGeneration is the same before and after it (four tries
    /// at most: the last read stands).
    pub fn read_config_consistent<T>(&self, read: impl Fn(&Self) -> T) -> T {
        let mut tries = 0;
        loop {
            let generation = self.read32(reg::CONFIG_GENERATION);
            let value = read(self);
            tries += 1;
            if self.read32(reg::CONFIG_GENERATION) == generation || tries == 4 {
                return value;
            }
        }
    }

    /// A 64-bit little-endian configuration field at `offset` (two 32-bit reads).
    pub fn read_config_u64(&self, offset: u64) -> u64 {
        let at = reg::CONFIG_SPACE + offset;
        self.read32(at) as u64 | (self.read32(at + 4) as u64) << 32
    }
}

/// A 32-bit write to an absolute doorbell address inside a window.
pub fn ring_doorbell(addr: u64, value: u32) {
    // SAFETY: `addr` was computed by `Window::addr` for a doorbell inside a checked window.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}
