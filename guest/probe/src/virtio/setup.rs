//! A device's bring-up: transport checks, features, queues, MSI or the legacy line,
//! DRIVER_OK.

use super::blk::QueueRun;
use super::irq::{setup_legacy, setup_msi};
use super::mmio::Window;
use super::queue::{Virtq, MAX_QUEUES, QUEUE_SIZE_CAP};
use super::{console, net, vsock};
use super::{run_of, Device, Kind, LEGACY_VECTOR_BASE};
use pulse_probe::cmdline::{Config, IrqMode, MmioDevice};
use pulse_probe::devreport::{DeviceReport, MAX_NET_PAIRS, MAX_VECTORS};
use pulse_probe::net_spec::{self as ns, net_feature};
use pulse_probe::virtio_spec::{self as spec, blk as vblk, feature, reg, status};
use pulse_probe::vsock_spec;
use pulse_probe::workload::Plan;

/// Brings device `d` to DRIVER_OK, or says why not. `Ok(None)`: skipped (not a block device).
pub(super) fn setup(
    d: usize,
    arg: &MmioDevice,
    cfg: &Config,
    ioapic_addr: Option<u32>,
    next_vector: &mut u8,
    report: &mut DeviceReport,
) -> Result<Option<Device>, &'static str> {
    let w = Window::new(arg.base, arg.size)?;
    if w.read32(reg::MAGIC) != reg::MAGIC_VALUE {
        return Err("virtio: bad magic value");
    }
    if w.read32(reg::VERSION_REG) != reg::VERSION {
        return Err("virtio: not a virtio 1.x (Version 2) device");
    }
    report.device_id = w.read32(reg::DEVICE_ID);
    let Some(kind) = Kind::of(report.device_id) else {
        report.skipped = true;
        report.note = Some(if report.device_id == 0 {
            "no device in this slot, skipped"
        } else {
            "unsupported device type, skipped"
        });
        return Ok(None);
    };
    let vendor = spec::vendor_features(w.read32(reg::VENDOR_ID));

    // Reset, then ACKNOWLEDGE and DRIVER, then features.
    w.write32(reg::STATUS, 0);
    w.write32(reg::STATUS, status::ACKNOWLEDGE);
    w.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    let failed = |e| {
        w.write32(reg::STATUS, w.read32(reg::STATUS) | status::FAILED);
        Err(e)
    };
    w.write32(reg::DEVICE_FEATURES_SEL, 0);
    let lo = w.read32(reg::DEVICE_FEATURES) as u64;
    w.write32(reg::DEVICE_FEATURES_SEL, 1);
    let offered = lo | (w.read32(reg::DEVICE_FEATURES) as u64) << 32;
    let wanted = match kind {
        Kind::Blk => feature::BLK_MQ,
        Kind::Net => net_feature::MAC | net_feature::CTRL_VQ | net_feature::MQ,
        Kind::Vsock | Kind::Console => 0,
    };
    let accepted = match spec::negotiate_from(offered, wanted) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    w.write32(reg::DRIVER_FEATURES_SEL, 0);
    w.write32(reg::DRIVER_FEATURES, accepted as u32);
    w.write32(reg::DRIVER_FEATURES_SEL, 1);
    w.write32(reg::DRIVER_FEATURES, (accepted >> 32) as u32);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w.write32(reg::STATUS, st);
    if w.read32(reg::STATUS) & status::FEATURES_OK == 0 {
        return failed("virtio: device refused the features (FEATURES_OK clear)");
    }
    report.features = accepted;
    let event_idx = accepted & feature::RING_EVENT_IDX != 0;

    // Configuration, read consistently (ConfigGeneration): the block device's capacity and
    // queue count, the vsock device's CID (and its fixed three queues).
    // For net: 2N queues for N pairs, the control queue last; for the console, port 0's two.
    let (capacity, device_queues) = match kind {
        Kind::Blk => read_config(&w, accepted & feature::BLK_MQ != 0),
        Kind::Vsock => (
            w.read_config_consistent(|w| w.read_config_u64(vsock_spec::CFG_GUEST_CID)),
            3,
        ),
        Kind::Net => {
            let ctrl = accepted & net_feature::CTRL_VQ != 0;
            let pairs = if accepted & net_feature::MQ != 0 && ctrl {
                w.read16(reg::CONFIG_SPACE + ns::NET_CFG_MAX_PAIRS)
            } else {
                1
            };
            (pairs as u64, 2 * pairs + u16::from(ctrl))
        }
        Kind::Console => (0, 2),
    };
    if kind == Kind::Net && (capacity == 0 || capacity as usize > MAX_NET_PAIRS) {
        return failed("net: max_virtqueue_pairs is 0 or more than the probe drives");
    }
    if device_queues == 0 {
        return failed("blk: num_queues is 0");
    }
    let nq = device_queues.min(MAX_QUEUES as u16);
    if nq < device_queues {
        report.note = Some("more queues than the probe drives: extra ones unused");
    }
    report.queues = nq;

    // Queue sizes: the smallest of min(QueueNumMax, 64), so one plan fits every queue.
    let mut qsize = QUEUE_SIZE_CAP;
    for q in 0..nq {
        w.write32(reg::QUEUE_SEL, q as u32);
        if w.read32(reg::QUEUE_READY) != 0 {
            return failed("virtio: queue already ready after reset");
        }
        match spec::queue_size(w.read32(reg::QUEUE_NUM_MAX), QUEUE_SIZE_CAP) {
            Some(s) => qsize = qsize.min(s),
            None => return failed("virtio: queue missing (QueueNumMax 0)"),
        }
    }
    report.queue_size = qsize;
    let plan = match kind {
        Kind::Blk => {
            let Some(plan) = Plan::new(cfg.requests_per_queue(), qsize) else {
                return failed("virtio: queue too small for one request");
            };
            if plan.sectors_needed(nq) > capacity {
                return failed("blk: disk too small for the workload");
            }
            Some(plan)
        }
        Kind::Vsock | Kind::Net | Kind::Console => {
            if qsize < 4 {
                return failed("virtio: queues too small");
            }
            None
        }
    };

    // Interrupts: per-queue MSI when asked for and offered, else the legacy line.
    let mut dev = Device {
        kind,
        window: w,
        index: d as u8,
        queues: nq,
        plan,
        vsock: None,
        net: None,
        console: None,
        msi: false,
        vectors: [0; MAX_VECTORS],
        legacy_vector: LEGACY_VECTOR_BASE + d as u8,
    };
    if cfg.irq == IrqMode::Msi {
        match vendor {
            Some(f) if f & reg::VENDOR_F_MSI != 0 => {
                match setup_msi(&mut dev, device_queues, f, next_vector) {
                    Ok(()) => dev.msi = true,
                    Err(e) => report.note = Some(e),
                }
            }
            _ => report.note = Some("msi: not offered by the device, using the legacy line"),
        }
    }
    report.msi = dev.msi;
    if !dev.msi {
        if let Err(e) = setup_legacy(&dev, arg.irq, ioapic_addr) {
            return failed(e);
        }
    }

    // Queues and doorbells.
    let notify_info = match vendor {
        Some(f) if f & reg::VENDOR_F_PER_QUEUE_NOTIFY != 0 => Some(w.read32(reg::QUEUE_NOTIFY)),
        _ => None,
    };
    // The queues of the devices that the BSP drives (all but block).
    let mut queues = [Virtq::new(d, 0, qsize); MAX_QUEUES];
    let mut doorbells = [(0u64, 0u32); MAX_QUEUES];
    for q in 0..nq {
        let vq = Virtq::new(d, q as usize, qsize);
        vq.init();
        w.enable_queue(q, qsize, vq.desc_addr(), vq.avail_addr(), vq.used_addr());
        // Per-queue doorbell when offered (no shared register, no queue index to match);
        // QueueNotify otherwise. Both take the queue index.
        let doorbell = notify_info
            .and_then(|ni| spec::doorbell_offset(ni, q, w.size()))
            .unwrap_or(reg::QUEUE_NOTIFY);
        match (kind, plan) {
            (Kind::Blk, Some(plan)) => {
                let run = QueueRun::new(d as u8, q, vq, w.addr(doorbell), event_idx, plan);
                // SAFETY: BSP during setup; no job is posted, nothing else uses the queue.
                unsafe { *run_of(d, q) = Some(run) };
            }
            _ => {
                queues[q as usize] = vq;
                doorbells[q as usize] = (w.addr(doorbell), q as u32);
            }
        }
    }
    match kind {
        Kind::Vsock => {
            let q = vsock::Queues {
                rx: queues[0],
                tx: queues[1],
                ev: queues[2],
                doorbells: [doorbells[0], doorbells[1], doorbells[2]],
                size: qsize,
            };
            dev.vsock = Some((q, capacity));
        }
        Kind::Net => {
            let pairs = capacity as usize;
            let queue = |i: usize| net::Queue {
                vq: queues[i],
                doorbell: doorbells[i],
            };
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = w.read8(reg::CONFIG_SPACE + ns::NET_CFG_MAC + i as u64);
            }
            let mut q = net::Queues {
                pairs,
                rx: [None; MAX_NET_PAIRS],
                tx: [None; MAX_NET_PAIRS],
                ctrl: (accepted & net_feature::CTRL_VQ != 0).then(|| queue(2 * pairs)),
                mac,
            };
            for p in 0..pairs {
                q.rx[p] = Some(queue(2 * p));
                q.tx[p] = Some(queue(2 * p + 1));
            }
            dev.net = Some(q);
        }
        Kind::Console => {
            dev.console = Some(console::Queues {
                rx: queues[0],
                tx: queues[1],
                doorbells: [doorbells[0], doorbells[1]],
            });
        }
        Kind::Blk => {}
    }

    w.write32(reg::STATUS, st | status::DRIVER_OK);
    if w.read32(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0 {
        return failed("virtio: DEVICE_NEEDS_RESET after DRIVER_OK");
    }
    Ok(Some(dev))
}

/// (capacity in sectors, num_queues), retried while ConfigGeneration moves.
pub(super) fn read_config(w: &Window, mq: bool) -> (u64, u16) {
    w.read_config_consistent(|w| {
        let capacity = w.read_config_u64(vblk::CFG_CAPACITY);
        let queues = if mq {
            w.read16(reg::CONFIG_SPACE + vblk::CFG_NUM_QUEUES)
        } else {
            1
        };
        (capacity, queues)
    })
}
