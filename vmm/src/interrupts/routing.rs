//! The VM's interrupt routing: one table of every route (the IOAPIC/PIC pins of the legacy GSIs
//! and the MSI routes of device vectors), written whole to KVM on each change, because
//! KVM_SET_GSI_ROUTING replaces the table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::{InterruptError, MsiMessage};
use crate::layout::IOAPIC_PINS;

/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
pub const MAX_ROUTES: u32 = 4096;

struct Table {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
    writes: u64,
}

/// Owns GSI allocation and the VM's routing table.
pub struct InterruptManager {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, msg: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address_lo;
    e.u.msi.address_hi = msg.address_hi;
    e.u.msi.data = msg.data;
    e
}

/// The legacy routes KVM installs by default with the in-kernel irqchip: GSIs 0-15 on both the
/// PIC and the IOAPIC, 16-23 on the IOAPIC only. They must be repeated in every table we write.
fn legacy_entries() -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    entries
}

impl InterruptManager {
    /// A manager for `vm`, whose in-kernel irqchip must already exist. MSI GSIs are handed out
    /// from the first GSI above the IOAPIC pins.
    pub fn new(vm: Arc<VmFd>) -> Result<Arc<Self>, InterruptError> {
        let manager = Arc::new(Self {
            vm,
            table: Mutex::new(Table {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
                writes: 0,
            }),
        });
        manager.write(&mut manager.lock())?;
        Ok(manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `count` consecutive GSIs for MSI vectors; returns the first.
    pub fn allocate_gsis(&self, count: usize) -> Result<u32, InterruptError> {
        let mut table = self.lock();
        let first = table.next_gsi;
        let end = u32::try_from(count)
            .ok()
            .and_then(|count| first.checked_add(count))
            .filter(|end| *end <= MAX_ROUTES)
            .ok_or(InterruptError::NoGsi {
                wanted: count,
                max: MAX_ROUTES,
            })?;
        table.next_gsi = end;
        Ok(first)
    }

    /// Routes `gsi` to `msg`, or removes its route with `None`, and writes the table.
    pub fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        let mut table = self.lock();
        let changed = match msg {
            Some(msg) => table.msi.insert(gsi, msg) != Some(msg),
            None => table.msi.remove(&gsi).is_some(),
        };
        if changed {
            self.write(&mut table)?;
        }
        Ok(())
    }

    /// The MSI route of `gsi`, if any.
    pub fn msi_route(&self, gsi: u32) -> Option<MsiMessage> {
        self.lock().msi.get(&gsi).copied()
    }

    /// How many times the table was written to KVM.
    pub fn table_writes(&self) -> u64 {
        self.lock().writes
    }

    fn write(&self, table: &mut Table) -> Result<(), InterruptError> {
        let mut entries = legacy_entries();
        entries.extend(table.msi.iter().map(|(gsi, msg)| msi_entry(*gsi, msg)));
        let routing = KvmIrqRouting::from_entries(&entries).map_err(|_| InterruptError::NoGsi {
            wanted: entries.len(),
            max: MAX_ROUTES,
        })?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|source| InterruptError::Kvm {
                op: "KVM_SET_GSI_ROUTING",
                source,
            })?;
        table.writes += 1;
        Ok(())
    }

    /// Connects `evt` to `gsi`: a write to it injects the interrupt without a VMM thread.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.vm
            .register_irqfd(evt, gsi)
            .map_err(|source| InterruptError::Kvm {
                op: "KVM_IRQFD",
                source,
            })
    }

    /// Disconnects `evt` from `gsi`.
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.vm
            .unregister_irqfd(evt, gsi)
            .map_err(|source| InterruptError::Kvm {
                op: "KVM_IRQFD (deassign)",
                source,
            })
    }

    /// The VM, for other interrupt plumbing.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> Arc<InterruptManager> {
        let kvm = crate::kvm::open_kvm().unwrap();
        let vm = crate::kvm::create_vm(&kvm, 1).unwrap();
        InterruptManager::new(Arc::new(vm)).unwrap()
    }

    #[test]
    fn gsis_come_after_the_ioapic_pins_and_run_out() {
        let m = manager();
        assert_eq!(m.allocate_gsis(5).unwrap(), IOAPIC_PINS);
        assert_eq!(m.allocate_gsis(3).unwrap(), IOAPIC_PINS + 5);
        assert!(matches!(
            m.allocate_gsis(MAX_ROUTES as usize),
            Err(InterruptError::NoGsi { .. })
        ));
    }

    #[test]
    fn routes_are_written_whole_and_only_on_change() {
        let m = manager();
        let gsi = m.allocate_gsis(2).unwrap();
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x30,
        };
        let writes = m.table_writes();
        m.set_msi_route(gsi, Some(msg)).unwrap();
        m.set_msi_route(gsi, Some(msg)).unwrap();
        assert_eq!(m.table_writes(), writes + 1);
        m.set_msi_route(gsi + 1, Some(MsiMessage { data: 0x31, ..msg }))
            .unwrap();
        assert_eq!(m.msi_route(gsi), Some(msg));
        m.set_msi_route(gsi, None).unwrap();
        assert_eq!(m.msi_route(gsi), None);
        assert_eq!(m.table_writes(), writes + 3);
        // irqfds attach to legacy and MSI GSIs alike.
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        m.register_irqfd(&evt, gsi + 1).unwrap();
        m.unregister_irqfd(&evt, gsi + 1).unwrap();
    }
}
