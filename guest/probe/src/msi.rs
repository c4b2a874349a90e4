//! Programming a device's per-queue MSI vectors through the extension's registers: enable in
//! MSI_CSR, latch address and data, commit with MSI_CMD UPDATE, check MSI_CSR; mask/unmask.

use crate::virtio::mmio::Window;
use pulse_probe::virtio_spec::{self as v, reg};

/// One vector to program: its index (0 = config, q+1 = queue q), the APIC id it targets and
/// the IDT vector it raises.
#[derive(Clone, Copy)]
pub struct Message {
    pub index: u16,
    pub apic_id: u8,
    pub vector: u8,
}

/// Enables MSI and programs `msgs`. `device_vectors` is the count the device should report
/// (its queues + 1), checked when it offers MSI_VECTOR_COUNT. On error MSI is left disabled.
pub fn enable(
    w: &Window,
    msgs: &[Message],
    device_vectors: u16,
    has_count: bool,
) -> Result<(), &'static str> {
    w.write16(reg::MSI_CSR, reg::MSI_CSR_ENABLE);
    for m in msgs {
        w.write32(reg::MSI_ADDRESS_LOW, v::msi_address(m.apic_id));
        w.write32(reg::MSI_ADDRESS_HIGH, 0);
        w.write32(reg::MSI_DATA, v::msi_data(m.vector));
        w.write16(reg::MSI_CMD, v::msi_cmd(reg::MSI_CMD_UPDATE, m.index));
    }
    let csr = w.read16(reg::MSI_CSR);
    let checked = v::msi_csr_check(csr, device_vectors, has_count);
    if checked.is_err() {
        w.write16(reg::MSI_CSR, 0);
    }
    checked
}

pub fn mask(w: &Window, index: u16) {
    w.write16(reg::MSI_CMD, v::msi_cmd(reg::MSI_CMD_MASK, index));
}

pub fn unmask(w: &Window, index: u16) {
    w.write16(reg::MSI_CMD, v::msi_cmd(reg::MSI_CMD_UNMASK, index));
}
