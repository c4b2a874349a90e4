//! Interrupt delivery: MSI vectors per queue, or the IOAPIC line with its handler.

use super::mmio::Window;
use super::{
    cpus, received, Device, LAST_MSI_VECTOR, LEGACY_CONFIG, LEGACY_VECTOR_BASE, LEGACY_WINDOWS,
};
use crate::idt;
use crate::ioapic::IoApic;
use crate::msi::{self, Message};
use core::sync::atomic::Ordering;
use pulse_probe::devreport::MAX_VECTORS;
use pulse_probe::virtio_spec::reg;

/// Allocates N+1 IDT vectors and programs them: vector 0 (config) at the BSP, queue q's at
/// its owner CPU. An error leaves MSI disabled (the caller falls back to legacy).
pub(super) fn setup_msi(
    dev: &mut Device,
    device_queues: u16,
    vendor_features: u32,
    next_vector: &mut u8,
) -> Result<(), &'static str> {
    let count = dev.queues as usize + 1;
    if (*next_vector as usize) + count > LAST_MSI_VECTOR as usize + 1 {
        return Err("msi: out of interrupt vectors, using the legacy line");
    }
    let cpus = cpus();
    let mut msgs = [Message {
        index: 0,
        apic_id: 0,
        vector: 0,
    }; MAX_VECTORS];
    for (i, m) in msgs[..count].iter_mut().enumerate() {
        let pos = if i == 0 {
            0
        } else {
            dev.kind.owner(i as u16 - 1, cpus.len())
        };
        *m = Message {
            index: i as u16,
            apic_id: cpus[pos].1,
            vector: *next_vector + i as u8,
        };
        dev.vectors[i] = m.vector;
    }
    let has_count = vendor_features & reg::VENDOR_F_MSI_VECTOR_COUNT != 0;
    match msi::enable(&dev.window, &msgs[..count], device_queues + 1, has_count) {
        Ok(()) => {
            *next_vector += count as u8;
            Ok(())
        }
        Err(_) => Err("msi: MSI_CSR check failed after enabling, using the legacy line"),
    }
}

/// Routes the device's IOAPIC pin to its legacy vector on the BSP and installs the handler
/// that acknowledges InterruptStatus.
pub(super) fn setup_legacy(
    dev: &Device,
    pin: u32,
    ioapic_addr: Option<u32>,
) -> Result<(), &'static str> {
    LEGACY_WINDOWS[dev.index as usize].store(dev.window.base(), Ordering::Release);
    idt::set_hook(dev.legacy_vector, legacy_interrupt);
    let ioapic = IoApic::new(ioapic_addr.unwrap_or(crate::ioapic::DEFAULT_BASE))?;
    ioapic.route(pin, dev.legacy_vector, cpus()[0].1)
}

/// The legacy handler's device part (the IDT counts it and sends the EOI): read
/// InterruptStatus and acknowledge what it says.
fn legacy_interrupt(vector: u8, _cpu: usize) {
    let d = vector.wrapping_sub(LEGACY_VECTOR_BASE) as usize;
    let Some(base) = LEGACY_WINDOWS.get(d).map(|b| b.load(Ordering::Acquire)) else {
        return;
    };
    if base == 0 {
        return;
    }
    // The window was checked when the device was set up (`Window::new` with its size).
    let w = match Window::new(base, 0x100) {
        Ok(w) => w,
        Err(_) => return,
    };
    let pending = w.read32(reg::INTERRUPT_STATUS);
    if pending != 0 {
        w.write32(reg::INTERRUPT_ACK, pending);
    }
    if pending & INT_CONFIG != 0 {
        LEGACY_CONFIG[d].fetch_add(1, Ordering::AcqRel);
    }
}

/// InterruptStatus bit of a configuration change.
const INT_CONFIG: u32 = 2;

/// Configuration-change interrupts device `d` got so far.
pub(super) fn config_interrupts(d: usize, dev: &Device) -> u32 {
    if dev.msi {
        received(dev.vectors[0])
    } else {
        LEGACY_CONFIG[d].load(Ordering::Acquire)
    }
}
