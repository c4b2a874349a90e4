//! The virtio-mmio block driver with per-queue MSI (Pulse's extension, see
//! `docs/virtio-mmio-msi.md`, "What a guest driver does").
//!
//! The BSP sets up every `virtio_mmio.device=` from the command line (reset, features, MSI
//! vectors or the legacy IOAPIC line, queues, DRIVER_OK), marks "workload starts" on port
//! 0x441, runs each device's workload with every queue on its owner CPU (queue q on online
//! CPU q % n; APs get the work as an smp job), marks "workload done", and then runs the
//! optional mask test. The counts end up in [`DeviceReport`]s for the JSON line.

pub mod blk;
pub mod buf;
pub mod console;
pub mod hostile;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod vsock;

use crate::arch::{self, Deadline, RacyCell};
use crate::ioapic::IoApic;
use crate::msi::{self, Message};
use crate::smp::{self, MAX_CPUS};
use crate::{idt, lapic};
use blk::QueueRun;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use mmio::Window;
use pulse_probe::cmdline::{Config, IrqMode, MmioDevice, MAX_MMIO_DEVICES};
use pulse_probe::devreport::{
    DeviceReport, Expect, MaskTest, VectorReport, MAX_NET_PAIRS, MAX_VECTORS,
};
use pulse_probe::net_spec::{self as ns, net_feature};
use pulse_probe::virtio_spec::{self as spec, blk as vblk, feature, reg, status};
use pulse_probe::vsock_spec;
use pulse_probe::workload::{owner, Plan};
use queue::{Virtq, MAX_QUEUES, QUEUE_SIZE_CAP};

pub const MAX_DEVICES: usize = MAX_MMIO_DEVICES;

/// IDT vectors: MSI vectors are handed out from 0x40 up (N+1 per device), legacy lines get
/// 0xe0 + device index; the watchdog timer has its own.
const FIRST_MSI_VECTOR: u8 = 0x40;
const LAST_MSI_VECTOR: u8 = 0xdf;
const LEGACY_VECTOR_BASE: u8 = 0xe0;
const WATCHDOG_VECTOR: u8 = 0x32;
/// The watchdog only ends `hlt` waits whose interrupt never came; its period bounds how
/// late such a wait notices its deadline.
const WATCHDOG_MS: u32 = 100;

/// Real time (the TSC runs at host speed; the emulated guest is ~1000x slower than native).
const BATCH_TIMEOUT_MS: u64 = 5000;
const LATE_IRQ_MS: u64 = 1000;

/// Phase-marker port: the VMM snapshots its exit counters on each write.
const PHASE_PORT: u16 = 0x441;
const PHASE_START: u8 = 1;
const PHASE_DONE: u8 = 2;
/// "Change my disk now" (the resize test); the host answers with a config-change interrupt.
const PHASE_RESIZE: u8 = 3;
const RESIZE_WAIT_MS: u64 = 10_000;

/// The device types the probe drives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blk,
    Vsock,
    Net,
    Console,
}

impl Kind {
    fn of(device_id: u32) -> Option<Kind> {
        match device_id {
            spec::DEVICE_ID_BLOCK => Some(Kind::Blk),
            spec::DEVICE_ID_VSOCK => Some(Kind::Vsock),
            spec::DEVICE_ID_NET => Some(Kind::Net),
            spec::DEVICE_ID_CONSOLE => Some(Kind::Console),
            _ => None,
        }
    }

    /// Position (in the online CPU list) of the CPU that owns queue `q`: block queues are
    /// spread over the CPUs, the other devices run on the BSP.
    fn owner(self, q: u16, cpus: usize) -> usize {
        match self {
            Kind::Blk => owner(q, cpus),
            Kind::Vsock | Kind::Net | Kind::Console => 0,
        }
    }
}

/// What the workload needs of a device; written by the BSP during setup, read-only after.
#[derive(Clone, Copy)]
struct Device {
    kind: Kind,
    window: Window,
    index: u8,
    queues: u16,
    /// The block workload's plan.
    plan: Option<Plan>,
    /// The vsock device's queues and CID.
    vsock: Option<(vsock::Queues, u64)>,
    net: Option<net::Queues>,
    console: Option<console::Queues>,
    msi: bool,
    /// IDT vector of MSI index i (0 = config, q+1 = queue q).
    vectors: [u8; MAX_VECTORS],
    legacy_vector: u8,
}

/// Devices that finished setup (None: failed or skipped).
static DEVICES: RacyCell<[Option<Device>; MAX_DEVICES]> = RacyCell::new([None; MAX_DEVICES]);

const NO_RUN: Option<QueueRun> = None;
/// Per device and queue: the queue's running state, used by its owner CPU only.
static RUNS: RacyCell<[[Option<QueueRun>; MAX_QUEUES]; MAX_DEVICES]> =
    RacyCell::new([[NO_RUN; MAX_QUEUES]; MAX_DEVICES]);

/// The online CPUs (index, APIC id), BSP first; written before the first job is posted.
static CPUS: RacyCell<([(usize, u8); MAX_CPUS], usize)> = RacyCell::new(([(0, 0); MAX_CPUS], 0));

/// The device whose workload the posted jobs run.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Set by an AP when its job is done (the BSP reads its queues only then).
static DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Window base per legacy vector, for the legacy interrupt hook.
static LEGACY_WINDOWS: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];
/// Configuration changes the legacy handler saw per device (InterruptStatus bit 1).
static LEGACY_CONFIG: [AtomicU32; MAX_DEVICES] = [const { AtomicU32::new(0) }; MAX_DEVICES];

fn cpus() -> &'static [(usize, u8)] {
    // SAFETY: written once in `run` before any job is posted or any reader runs; read-only
    // afterwards.
    let c = unsafe { &*CPUS.get() };
    &c.0[..c.1]
}

fn device(d: usize) -> Option<Device> {
    // SAFETY: the BSP writes DEVICES only during setup, before any job is posted; jobs and
    // the interrupt path only read it afterwards.
    unsafe { (*DEVICES.get())[d] }
}

/// The running state of queue `q` of device `d`.
///
/// # Safety
/// Only the queue's owner may call this while the workload runs (the BSP also before and
/// after, when no job is posted), and it must not hold two references to the same queue.
unsafe fn run_of(d: usize, q: u16) -> &'static mut Option<QueueRun> {
    // SAFETY: upheld by the caller; the indexes are in bounds (panics otherwise).
    unsafe { &mut (*RUNS.get())[d][q as usize] }
}

/// Total interrupts taken on `vector` by the online CPUs.
fn received(vector: u8) -> u32 {
    cpus().iter().map(|&(cpu, _)| idt::count(cpu, vector)).sum()
}

/// Result of the whole driver run, for the report.
pub struct Outcome {
    pub devices: [DeviceReport; MAX_DEVICES],
    pub n: usize,
}

impl Outcome {
    pub fn devices(&self) -> &[DeviceReport] {
        &self.devices[..self.n]
    }

    pub fn ok(&self) -> bool {
        self.devices().iter().all(DeviceReport::ok)
    }
}

/// Drives every device named on the command line. Runs on the BSP with interrupts off and
/// returns with them off.
pub fn run(cfg: &Config, ioapic_addr: Option<u32>) -> Outcome {
    // SAFETY: no job has been posted yet; nothing else reads CPUS.
    let list = unsafe { &mut *CPUS.get() };
    list.1 = smp::online_cpus(&mut list.0);
    if cfg.hostile {
        return hostile::run(cfg);
    }

    let mut out = Outcome {
        devices: [DeviceReport::default(); MAX_DEVICES],
        n: cfg.devices().len(),
    };
    let mut next_vector = FIRST_MSI_VECTOR;
    for (d, arg) in cfg.devices().iter().enumerate() {
        let report = &mut out.devices[d];
        *report = DeviceReport::new(arg.base, arg.irq);
        match setup(d, arg, cfg, ioapic_addr, &mut next_vector, report) {
            // SAFETY: BSP only, before any job is posted (see `device`).
            Ok(dev) => unsafe { (*DEVICES.get())[d] = dev },
            Err(e) => report.errors.push(e),
        }
    }

    arch::outb(PHASE_PORT, PHASE_START);
    for (d, report) in out.devices[..out.n].iter_mut().enumerate() {
        match device(d) {
            Some(dev) if dev.kind == Kind::Blk => run_device(d, report),
            Some(dev) if dev.kind == Kind::Vsock => run_vsock(&dev, cfg, report),
            Some(dev) if dev.kind == Kind::Net => run_net(&dev, cfg, report),
            Some(dev) if dev.kind == Kind::Console => run_console(&dev, cfg, report),
            _ => {}
        }
    }
    arch::outb(PHASE_PORT, PHASE_DONE);

    // A legacy interrupt may still be on its way to the BSP: let it land before counting.
    if (0..out.n).any(|d| device(d).is_some_and(|dev| !dev.msi)) {
        arch::sti();
        Deadline::after_ms(20).wait();
        arch::cli();
    }

    for (d, report) in out.devices[..out.n].iter_mut().enumerate() {
        let Some(dev) = device(d) else { continue };
        if cfg.blk_resize && dev.kind == Kind::Blk {
            resize_test(d, report);
        }
        if cfg.masktest && dev.kind == Kind::Blk {
            if dev.msi {
                mask_test(d, report);
            } else {
                report.note = Some("mask test needs msi: not run");
            }
        }
        collect(d, &dev, report);
        report.judge();
    }
    out
}

/// Brings device `d` to DRIVER_OK, or says why not. `Ok(None)`: skipped (not a block device).
fn setup(
    d: usize,
    arg: &MmioDevice,
    cfg: &Config,
    ioapic_addr: Option<u32>,
    next_vector: &mut u8,
    report: &mut DeviceReport,
) -> Result<Option<Device>, &'static str> {
    let w = Window::new(arg.base, arg.size)?;
    if w.read32(reg::MAGIC) != spec::MAGIC_VALUE {
        return Err("virtio: bad magic value");
    }
    if w.read32(reg::VERSION) != spec::VERSION_1X {
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
        Kind::Vsock => (read_config_u64(&w, vsock_spec::CFG_GUEST_CID), 3),
        Kind::Net => {
            let ctrl = accepted & net_feature::CTRL_VQ != 0;
            let pairs = if accepted & net_feature::MQ != 0 && ctrl {
                w.read16(reg::CONFIG + ns::NET_CFG_MAX_PAIRS)
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
            Some(f) if f & spec::VENDOR_F_MSI != 0 => {
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
        Some(f) if f & spec::VENDOR_F_PER_QUEUE_NOTIFY != 0 => Some(w.read32(reg::QUEUE_NOTIFY)),
        _ => None,
    };
    // The queues of the devices that the BSP drives (all but block).
    let mut queues = [Virtq::new(d, 0, qsize); MAX_QUEUES];
    let mut doorbells = [(0u64, 0u32); MAX_QUEUES];
    for q in 0..nq {
        let vq = Virtq::new(d, q as usize, qsize);
        vq.init();
        w.write32(reg::QUEUE_SEL, q as u32);
        w.write32(reg::QUEUE_NUM, qsize as u32);
        for (lo, hi, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, vq.desc_addr()),
            (
                reg::QUEUE_DRIVER_LOW,
                reg::QUEUE_DRIVER_HIGH,
                vq.avail_addr(),
            ),
            (
                reg::QUEUE_DEVICE_LOW,
                reg::QUEUE_DEVICE_HIGH,
                vq.used_addr(),
            ),
        ] {
            w.write32(lo, addr as u32);
            w.write32(hi, (addr >> 32) as u32);
        }
        w.write32(reg::QUEUE_READY, 1);
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
                *b = w.read8(reg::CONFIG + ns::NET_CFG_MAC + i as u64);
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
fn read_config(w: &Window, mq: bool) -> (u64, u16) {
    let mut result = (0, 0);
    for _ in 0..4 {
        let generation = w.read32(reg::CONFIG_GENERATION);
        let cap = reg::CONFIG + vblk::CFG_CAPACITY;
        let capacity = w.read32(cap) as u64 | (w.read32(cap + 4) as u64) << 32;
        let queues = if mq {
            w.read16(reg::CONFIG + vblk::CFG_NUM_QUEUES)
        } else {
            1
        };
        result = (capacity, queues);
        if w.read32(reg::CONFIG_GENERATION) == generation {
            break;
        }
    }
    result
}

/// A 64-bit little-endian configuration field at `offset`, read consistently.
fn read_config_u64(w: &Window, offset: u64) -> u64 {
    let mut value = 0;
    for _ in 0..4 {
        let generation = w.read32(reg::CONFIG_GENERATION);
        let at = reg::CONFIG + offset;
        value = w.read32(at) as u64 | (w.read32(at + 4) as u64) << 32;
        if w.read32(reg::CONFIG_GENERATION) == generation {
            break;
        }
    }
    value
}

/// Allocates N+1 IDT vectors and programs them: vector 0 (config) at the BSP, queue q's at
/// its owner CPU. An error leaves MSI disabled (the caller falls back to legacy).
fn setup_msi(
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
    let has_count = vendor_features & spec::VENDOR_F_MSI_VECTOR_COUNT != 0;
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
fn setup_legacy(dev: &Device, pin: u32, ioapic_addr: Option<u32>) -> Result<(), &'static str> {
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
fn config_interrupts(d: usize, dev: &Device) -> u32 {
    if dev.msi {
        received(dev.vectors[0])
    } else {
        LEGACY_CONFIG[d].load(Ordering::Acquire)
    }
}

/// Resize test: asks the host (phase mark 3) to change the disk, waits for the configuration
/// interrupt, and reads the new capacity (consistently, with ConfigGeneration).
fn resize_test(d: usize, report: &mut DeviceReport) {
    let Some(dev) = device(d) else { return };
    let w = dev.window;
    let (before, _) = read_config(&w, true);
    let generation = w.read32(reg::CONFIG_GENERATION);
    let irqs_before = config_interrupts(d, &dev);
    arch::outb(PHASE_PORT, PHASE_RESIZE);
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    wait(true, RESIZE_WAIT_MS, || {
        config_interrupts(d, &dev) > irqs_before
    });
    // A second interrupt would be a duplicate: give it time to show.
    arch::sti();
    Deadline::after_ms(20).wait();
    arch::cli();
    lapic::stop_watchdog();
    let (after, _) = read_config(&w, true);
    report.resize = Some(pulse_probe::devreport::ResizeResult {
        capacity_before: before,
        capacity_after: after,
        config_interrupts: config_interrupts(d, &dev) - irqs_before,
        config_generation_moved: w.read32(reg::CONFIG_GENERATION) != generation,
    });
}

/// Waits for `done()`. With `halt` (MSI mode), sleeps in `sti; hlt` between checks and
/// returns with interrupts off; otherwise spins and leaves the interrupt flag alone.
fn wait(halt: bool, ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let mut deadline = Deadline::after_ms(ms);
    loop {
        if halt {
            arch::cli();
        }
        if done() {
            return true;
        }
        if deadline.expired() {
            return done();
        }
        if halt {
            arch::sti_hlt();
        } else {
            arch::pause();
        }
    }
}

/// Paces the interrupts of a queue whose device decides when to raise them (vsock, net),
/// so that the counts stay exact: with EVENT_IDX the device interrupts once when its used
/// index passes `used_event`, and the driver moves `used_event` on only after that
/// interrupt was taken. So at most one is in flight and none merges with another in the
/// LAPIC (one request bit per vector). Without MSI (legacy line) it just keeps re-arming.
#[derive(Clone, Copy)]
pub struct IrqPacer {
    msi: Option<(usize, u8)>,
    seen: u32,
    armed_at: u16,
    since: u64,
    lost_after: u64,
}

impl IrqPacer {
    /// How long an armed queue whose used index moved may wait for its interrupt before the
    /// arm counts as lost (the device read `used_event` just before the driver moved it).
    const LOST_MS: u64 = 500;

    /// Counts the interrupts of IDT vector `vector` on CPU `cpu`.
    pub fn msi(cpu: usize, vector: u8) -> Self {
        Self {
            msi: Some((cpu, vector)),
            seen: idt::count(cpu, vector),
            armed_at: 0,
            since: arch::rdtsc(),
            lost_after: arch::tsc_khz() * Self::LOST_MS,
        }
    }

    pub fn legacy() -> Self {
        Self {
            msi: None,
            seen: 0,
            armed_at: 0,
            since: 0,
            lost_after: 0,
        }
    }

    /// Call after consuming the used ring up to `consumed`.
    pub fn rearm(&mut self, vq: &Virtq, consumed: u16) {
        let Some((cpu, vector)) = self.msi else {
            vq.set_used_event(consumed);
            return;
        };
        let mut count = idt::count(cpu, vector);
        let now = arch::rdtsc();
        let mut lost = count == self.seen
            && vq.used_idx() != self.armed_at
            && now.wrapping_sub(self.since) > self.lost_after;
        if lost {
            // Maybe it is only pending (a short `sti` window does not always let it in):
            // give it a millisecond with interrupts on before calling the arm lost.
            arch::sti();
            Deadline::after_ms(1).wait();
            arch::cli();
            count = idt::count(cpu, vector);
            lost = count == self.seen;
        }
        if count != self.seen || lost {
            self.seen = count;
            self.armed_at = consumed;
            self.since = now;
            vq.set_used_event(consumed);
        }
    }
}

/// Runs the vsock workload of `dev` on the BSP.
fn run_vsock(dev: &Device, cfg: &Config, report: &mut DeviceReport) {
    let Some((queues, cid)) = dev.vsock else {
        return;
    };
    let bsp = cpus()[0].0;
    let pacer = |q: usize| {
        if dev.msi {
            IrqPacer::msi(bsp, dev.vectors[q + 1])
        } else {
            IrqPacer::legacy()
        }
    };
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let result = vsock::run(queues, cid, cfg.vsock, [pacer(0), pacer(1), pacer(2)]);
    lapic::stop_watchdog();
    arch::cli();
    report.vsock = Some(result);
}

/// The pacers of a BSP-driven device's queues, indexed like its queues.
fn pacers(dev: &Device) -> [IrqPacer; MAX_QUEUES] {
    let bsp = cpus()[0].0;
    core::array::from_fn(|q| {
        if dev.msi && q + 1 < MAX_VECTORS {
            IrqPacer::msi(bsp, dev.vectors[q + 1])
        } else {
            IrqPacer::legacy()
        }
    })
}

/// Runs the net workload of `dev` on the BSP.
fn run_net(dev: &Device, cfg: &Config, report: &mut DeviceReport) {
    let Some(queues) = dev.net else {
        return;
    };
    let mut pacers = pacers(dev);
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let result = net::run(&queues, cfg.net, &mut pacers);
    lapic::stop_watchdog();
    arch::cli();
    report.net = Some(result);
}

/// Runs the console workload of `dev` on the BSP.
fn run_console(dev: &Device, cfg: &Config, report: &mut DeviceReport) {
    let Some(queues) = dev.console else {
        return;
    };
    let all = pacers(dev);
    let mut pacers = [all[0], all[1]];
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let result = console::run(&queues, cfg.console_echo, &mut pacers);
    lapic::stop_watchdog();
    arch::cli();
    report.console = Some(result);
}

/// Runs device `d`'s workload on every CPU that owns one of its queues; returns when all
/// are done or timed out.
fn run_device(d: usize, report: &mut DeviceReport) {
    let Some(dev) = device(d) else { return };
    let Some(plan) = dev.plan else { return };
    let cpus = cpus();
    ACTIVE.store(d, Ordering::Release);
    let mut posted = [false; MAX_CPUS];
    for (pos, &(cpu, _)) in cpus.iter().enumerate().skip(1) {
        if (0..dev.queues).any(|q| owner(q, cpus.len()) == pos) {
            DONE[cpu].store(false, Ordering::Release);
            match smp::post_job(cpu, ap_job) {
                Ok(()) => posted[cpu] = true,
                Err(e) => report.errors.push(e),
            }
        }
    }
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    run_owned(d, 0);
    // Each AP's job gets the time its batches may take, plus some.
    let limit = BATCH_TIMEOUT_MS * (plan.batches() as u64 + 2);
    let all_done = || {
        cpus.iter()
            .all(|&(cpu, _)| !posted[cpu] || DONE[cpu].load(Ordering::Acquire))
    };
    if !wait(true, limit, all_done) {
        report
            .errors
            .push("smp: a cpu did not finish its queues in time");
    }
    lapic::stop_watchdog();
    arch::cli();
}

/// An AP's part of the workload of the device in `ACTIVE`.
fn ap_job(cpu: usize) {
    let d = ACTIVE.load(Ordering::Acquire);
    if let Some(pos) = cpus().iter().position(|&(c, _)| c == cpu) {
        lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
        run_owned(d, pos);
        lapic::stop_watchdog();
    }
    DONE[cpu].store(true, Ordering::Release);
    let _ = lapic::send_fixed(cpus()[0].1, smp::WAKE_VECTOR);
}

/// Runs the queues of device `d` owned by the CPU at position `pos` of the online list, in
/// lock step: each round submits one batch on every owned queue, then waits for each.
fn run_owned(d: usize, pos: usize) {
    let Some(dev) = device(d) else { return };
    let Some(plan) = dev.plan else { return };
    let (cpu, _) = cpus()[pos];
    let n = cpus().len();
    let mut owned = [0u16; MAX_QUEUES];
    let mut k = 0;
    for q in 0..dev.queues {
        if owner(q, n) == pos {
            owned[k] = q;
            k += 1;
        }
    }
    let owned = &owned[..k];
    if !dev.msi && pos == 0 {
        // Legacy: the line goes to the BSP, which must take it (and ack it) while it polls.
        arch::sti();
    }
    for round in 0..plan.batches() {
        for &q in owned {
            // SAFETY: this CPU owns queue q during the workload; one reference at a time.
            if let Some(run) = unsafe { run_of(d, q) } {
                if run.failed.is_none() {
                    run.submit(plan.batch(round));
                }
            }
        }
        for &q in owned {
            // SAFETY: as above.
            let Some(run) = (unsafe { run_of(d, q) }) else {
                continue;
            };
            if run.failed.is_some() {
                continue;
            }
            // MSI: sleep until the queue's interrupt (or another) arrives. Legacy: poll.
            if wait(dev.msi, BATCH_TIMEOUT_MS, || run.batch_done()) {
                run.finish();
            } else {
                run.abandon("blk: batch not completed in time");
                continue;
            }
            if dev.msi {
                // The used index can be seen before the batch's interrupt is taken. Take it
                // before the next batch: two interrupts pending on one vector merge into one
                // (the LAPIC has one request bit per vector), and the counts must be exact.
                let vector = dev.vectors[q as usize + 1];
                let batches = run.batches;
                wait(true, LATE_IRQ_MS, || idt::count(cpu, vector) >= batches);
            }
        }
    }
    if pos == 0 {
        arch::cli();
    }
}

/// Mask test on queue 0's vector (index 1): no interrupt while masked, exactly one after
/// unmasking for the request completed meanwhile.
fn mask_test(d: usize, report: &mut DeviceReport) {
    let Some(dev) = device(d) else { return };
    // SAFETY: after the workload: no job is posted, the BSP is the only user.
    let Some(run) = (unsafe { run_of(d, 0) }) else {
        return;
    };
    if run.failed.is_some() {
        report
            .errors
            .push("msi: mask test not run (queue 0 failed)");
        return;
    }
    let vector = dev.vectors[1];
    let before = received(vector);
    msi::mask(&dev.window, 1);
    run.submit_single_read();
    // Interrupts on: a delivery despite the mask would be taken and counted here.
    arch::sti();
    let completed = wait(false, BATCH_TIMEOUT_MS, || run.batch_done());
    Deadline::after_ms(20).wait();
    arch::cli();
    let while_masked = received(vector) - before;
    if !completed {
        run.abandon("msi: mask test request not completed");
        report.errors.push("msi: mask test request not completed");
    } else if !run.finish_single() {
        report.errors.push("msi: mask test request failed");
    }
    msi::unmask(&dev.window, 1);
    lapic::start_watchdog(WATCHDOG_VECTOR, WATCHDOG_MS);
    let base = before + while_masked;
    wait(true, 2000, || received(vector) > base);
    // A little longer: a second delivery would be a duplicate.
    arch::sti();
    Deadline::after_ms(50).wait();
    arch::cli();
    lapic::stop_watchdog();
    report.mask_test = Some(MaskTest {
        received_while_masked: while_masked,
        delivered_after_unmask: received(vector) - base,
    });
}

fn cfg_console_echo(report: &DeviceReport) -> bool {
    report.console.is_some_and(|c| c.echo_asked)
}

/// Fills the report with the queues' results and the interrupt counts.
fn collect(d: usize, dev: &Device, report: &mut DeviceReport) {
    let cpus = cpus();
    for q in 0..dev.queues {
        let (cpu, _) = cpus[dev.kind.owner(q, cpus.len())];
        if cpu != 0 && !DONE[cpu].load(Ordering::Acquire) {
            // Its CPU never finished: its state may still change, so leave it out.
            report
                .errors
                .push("blk: results of an unfinished cpu left out");
            continue;
        }
        // SAFETY: the owner is done (or is the BSP, which is running this).
        let Some(run) = (unsafe { run_of(d, q) }).as_ref() else {
            continue;
        };
        report.requests += run.completed;
        report.request_errors += run.request_errors;
        report.data_errors += run.data_errors;
        report.used_len_errors += run.used_len_errors;
        if let Some(e) = run.failed {
            report.errors.push(e);
        }
    }
    if dev.msi {
        report.n_vectors = dev.queues as usize + 1;
        for i in 0..report.n_vectors {
            let pos = if i == 0 {
                0
            } else {
                dev.kind.owner(i as u16 - 1, cpus.len())
            };
            let (cpu, apic_id) = cpus[pos];
            let vector = dev.vectors[i];
            let total = received(vector);
            let batches = if i == 0 {
                0
            } else {
                // SAFETY: as above (read only).
                unsafe { run_of(d, i as u16 - 1) }.map_or(0, |r| r.batches)
            };
            report.vectors[i] = VectorReport {
                index: i as u16,
                vector,
                cpu: cpu as u32,
                apic_id: apic_id as u32,
                received: total,
                elsewhere: total - idt::count(cpu, vector),
                batches,
                extra: u32::from(i == 1 && report.mask_test.is_some()),
                expect: match dev.kind {
                    Kind::Blk => Expect::Batches,
                    // The event queue only carries the transport resets asked for.
                    Kind::Vsock
                        if i == 3 && report.vsock.is_some_and(|v| v.events_expected == 0) =>
                    {
                        Expect::Any
                    }
                    Kind::Vsock => Expect::Some,
                    // The control queue carries one command, and only with several pairs.
                    Kind::Net if report.net.is_some_and(|n| n.pairs > 1 || i < 3) => Expect::Some,
                    Kind::Net => Expect::Any,
                    // receiveq0 only has traffic when host input was asked for.
                    Kind::Console if i == 1 && !cfg_console_echo(report) => Expect::Any,
                    Kind::Console => Expect::Some,
                },
            };
        }
    } else {
        report.legacy_received = received(dev.legacy_vector);
    }
}
