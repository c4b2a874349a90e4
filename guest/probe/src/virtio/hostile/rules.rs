//! Steps 1 and 4 and the register writes after DRIVER_OK: the transport's rules broken on
//! purpose, and a reset storm.

use super::device::HDev;
use super::{features_of, page, Tally, F_NEXT};
use crate::virtio::buf::write_bytes;
use crate::virtio::mmio::ring_doorbell;
use crate::virtio::Kind;
use pulse_probe::virtio_spec::{self as spec, reg, status};
/// Step 1: the register rules, on a device not set up yet. Leaves it reset.
pub(super) fn register_rules(dev: &mut HDev, t: &mut Tally) {
    let w = dev.w;
    let ack = status::ACKNOWLEDGE;
    let drv = status::DRIVER;
    dev.reset();
    // Wrong widths: reads give zero, writes do nothing.
    t.check(
        w.read8(reg::MAGIC) == 0,
        "hostile: an 8-bit read of MagicValue was not 0",
    );
    t.check(
        w.read16(reg::VERSION_REG) == 0,
        "hostile: a 16-bit read of Version was not 0",
    );
    t.check(
        w.read32(reg::MSI_CSR) == 0,
        "hostile: a 32-bit read of MSI_CSR was not 0",
    );
    w.write32(reg::STATUS, ack);
    w.write16(reg::STATUS, 0);
    w.write8(reg::STATUS, 0);
    t.check(
        dev.status() == ack,
        "hostile: a narrow write to Status took effect",
    );
    w.write32(reg::MSI_CSR, reg::MSI_CSR_ENABLE as u32);
    w.write8(reg::MSI_CMD, 0x10);
    t.check(
        w.read16(reg::MSI_CSR) & reg::MSI_CSR_ACTIVE == 0,
        "hostile: a 32-bit write to MSI_CSR enabled MSI",
    );
    // Status: bits that are not the driver's, clearing bits, skipping FEATURES_OK.
    w.write32(reg::STATUS, ack | status::DEVICE_NEEDS_RESET);
    t.check(
        dev.status() == ack,
        "hostile: the driver could set DEVICE_NEEDS_RESET",
    );
    w.write32(reg::STATUS, ack | drv);
    w.write32(reg::STATUS, ack);
    t.check(
        dev.status() == ack | drv,
        "hostile: a status bit was cleared without a reset",
    );
    w.write32(reg::STATUS, ack | drv | status::DRIVER_OK);
    t.check(
        dev.status() == ack | drv,
        "hostile: DRIVER_OK was taken before FEATURES_OK",
    );
    // Features the device never offered (bit 63), DRIVER_OK in the same write.
    w.write32(reg::DRIVER_FEATURES_SEL, 1);
    w.write32(reg::DRIVER_FEATURES, 1 | 1 << 31);
    w.write32(reg::DRIVER_FEATURES_SEL, 0);
    w.write32(reg::DRIVER_FEATURES, 0);
    w.write32(
        reg::STATUS,
        ack | drv | status::FEATURES_OK | status::DRIVER_OK,
    );
    t.check(
        dev.status() == ack | drv,
        "hostile: features never offered were accepted",
    );
    w.write32(
        reg::STATUS,
        ack | drv | status::FAILED | status::FEATURES_OK,
    );
    t.check(
        dev.status() == ack | drv | status::FAILED,
        "hostile: FAILED took other bits along",
    );
    dev.reset();
    t.check(dev.status() == 0, "hostile: a reset left status bits");
    // MSI commands: an unknown operation, a vector the device does not have.
    for cmd in [
        spec::msi_cmd(7, 0),
        spec::msi_cmd(reg::MSI_CMD_UPDATE, 0x7ff),
    ] {
        w.write16(reg::MSI_CMD, cmd);
        t.check(
            dev.status() & status::DEVICE_NEEDS_RESET != 0,
            "hostile: a bad MSI command did not set DEVICE_NEEDS_RESET",
        );
        dev.reset();
        t.check(
            dev.status() == 0,
            "hostile: a reset did not clear DEVICE_NEEDS_RESET",
        );
    }
    // Notifications for queues the device does not have (QueueNotify and a doorbell).
    for _ in 0..64 {
        w.write32(reg::QUEUE_NOTIFY, 999);
        ring_doorbell(w.addr(0x1000 + 4 * 200), 200);
    }
    t.check(
        dev.status() == 0,
        "hostile: notifications for absent queues changed the status",
    );
    // Queue setup before FEATURES_OK, then a size that is not a power of two, then a queue
    // the device does not have.
    w.write32(reg::QUEUE_SEL, 0);
    w.write32(reg::QUEUE_NUM, 8);
    w.write32(reg::QUEUE_READY, 1);
    t.check(
        w.read32(reg::QUEUE_READY) == 0,
        "hostile: a queue got ready before FEATURES_OK",
    );
    if let Err(e) = dev.negotiate(0) {
        t.errors.push(e);
        dev.reset();
        return;
    }
    w.write32(reg::QUEUE_NUM, 3);
    w.write32(reg::QUEUE_SEL, 99);
    w.write32(reg::QUEUE_NUM, 8);
    w.write32(reg::QUEUE_READY, 1);
    t.check(
        w.read32(reg::QUEUE_READY) == 0 && w.read32(reg::QUEUE_NUM_MAX) == 0,
        "hostile: a queue the device does not have looks ready",
    );
    // Rings outside guest memory: DRIVER_OK must end in DEVICE_NEEDS_RESET.
    if let Err(e) = dev.setup_queues(Some(0)) {
        t.errors.push(e);
    }
    let st = status::ACKNOWLEDGE | drv | status::FEATURES_OK;
    w.write32(reg::STATUS, st | status::DRIVER_OK);
    t.check(
        dev.status() & status::DEVICE_NEEDS_RESET != 0,
        "hostile: rings outside guest memory were accepted",
    );
    dev.reset();
    t.check(dev.status() == 0, "hostile: a reset left status bits");
}

/// On a running device: queue setup after DRIVER_OK is ignored.
pub(super) fn queue_setup_after_driver_ok(dev: &mut HDev, t: &mut Tally) {
    let w = dev.w;
    w.write32(reg::QUEUE_SEL, (dev.nq - 1) as u32);
    w.write32(reg::QUEUE_READY, 0);
    w.write32(reg::QUEUE_NUM, 2);
    t.check(
        w.read32(reg::QUEUE_READY) == 1,
        "hostile: a queue was changed after DRIVER_OK",
    );
}

/// On a running device: MSI_CSR after DRIVER_OK sets DEVICE_NEEDS_RESET (seen from here only
/// when nothing set it before; the VMM counts it either way).
pub(super) fn csr_after_driver_ok(dev: &mut HDev, t: &mut Tally) {
    let before = dev.status() & status::DEVICE_NEEDS_RESET != 0;
    dev.w.write16(reg::MSI_CSR, 0);
    if !before {
        t.check(
            dev.status() & status::DEVICE_NEEDS_RESET != 0,
            "hostile: MSI_CSR after DRIVER_OK did not set DEVICE_NEEDS_RESET",
        );
    }
}

/// Cycles of the reset storm.
const STORM_CYCLES: u32 = 50;

/// A guest that resets in a loop, to make the VMM write a log line per cycle: DRIVER_OK with
/// no queue ready (a device that needs queues cannot start), then a clean bring-up with one
/// malformed chain, served, then the reset that stops the worker. The VMM's log must not grow
/// with the cycles (the host side checks); here only that the device still answers after it.
pub(super) fn reset_storm(dev: &mut HDev, t: &mut Tally) {
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    // The queue a chain goes to: block's first, the others' transmit queue.
    let q = match dev.kind {
        Kind::Blk => 0,
        Kind::Net | Kind::Vsock | Kind::Console => 1,
    };
    let text = page(dev.d, 9);
    write_bytes(text, &[0u8; 64]);
    for _ in 0..STORM_CYCLES {
        dev.reset();
        if dev.negotiate(features_of(dev.kind)).is_err() {
            break;
        }
        dev.w.write32(reg::STATUS, st | status::DRIVER_OK);
        if dev.bring_up(features_of(dev.kind), false).is_err() {
            t.errors
                .push("hostile: a clean bring-up failed in the reset storm");
            break;
        }
        dev.desc(q, 0, text, 64, F_NEXT, 0); // a loop
        if !dev.roundtrip(q, 0) {
            t.errors
                .push("hostile: a chain was not returned in the reset storm");
            break;
        }
    }
    t.r.flood += STORM_CYCLES;
    dev.reset();
}
