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
mod collect;
pub mod console;
pub mod hostile;
mod irq;
pub mod mmio;
pub mod net;
mod optional_tests;
mod pacer;
pub mod queue;
mod setup;
pub mod vsock;
mod workload;

pub use pacer::IrqPacer;

use crate::arch::{self, Deadline, RacyCell};
use crate::idt;
use crate::smp::{self, MAX_CPUS};
use blk::QueueRun;
use collect::collect;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use mmio::Window;
use optional_tests::{mask_test, resize_test};
use pulse_probe::cmdline::{Config, MAX_MMIO_DEVICES};
use pulse_probe::devreport::{DeviceReport, MAX_VECTORS};
use pulse_probe::virtio_spec::device_type;
use pulse_probe::workload::{owner, Plan};
use queue::MAX_QUEUES;
use setup::setup;
use workload::{run_console, run_device, run_net, run_vsock};

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
            device_type::BLOCK => Some(Kind::Blk),
            device_type::VSOCK => Some(Kind::Vsock),
            device_type::NET => Some(Kind::Net),
            device_type::CONSOLE => Some(Kind::Console),
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

/// A polled workload's wait when nothing moved: halts until an interrupt (a queue's, the
/// legacy line's or the watchdog's) and returns with interrupts off.
fn idle() {
    arch::sti_hlt();
    arch::cli();
}

/// How long a polled workload still takes interrupts after its end.
const SETTLE_MS: u64 = 50;

/// Takes the interrupts raised just before a polled workload's end, so that what the guest
/// counts is what the device sent.
fn settle() {
    arch::sti();
    Deadline::after_ms(SETTLE_MS).wait();
    arch::cli();
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
