//! The hostile mode (`probe.hostile=1`): the probe plays a guest that breaks the rules of the
//! transport and of every device it finds, then checks that each device still works where
//! `docs/virtio-mmio-msi.md` says it should. All on the BSP, polling (interrupts off).
//!
//! Per device, in order:
//!
//! 1. Register rules, before the device is set up: reads and writes of the wrong width,
//!    status writes that clear bits, skip a step or set bits that are not the driver's,
//!    FAILED with other bits, features that were not offered, MSI commands with unknown
//!    operations and for absent vectors, notifications for absent queues, queue setup before
//!    FEATURES_OK and with sizes that are not powers of two, rings outside guest memory.
//! 2. A bring-up where queue 0's MSI vector gets only messages the VMM must refuse (NMI, SMI,
//!    INIT, ExtINT, vector 2, an address outside the LAPIC window, a high half): the device's
//!    interrupts for queue 0 must be dropped, never injected (an NMI or an exception vector
//!    would end the probe with an exception report). Then phase mark 1.
//! 3. The device's hostile chains (loops, chains longer than the queue, lengths of
//!    u32::MAX, zero lengths, indirect tables outside memory, nested or misaligned, buffers
//!    the wrong way round, heads beyond the table), floods (block: notification storms and a
//!    ring of write-zeroes reset mid-way; net: control-queue commands; vsock: connects to host
//!    ports nobody listens on and RSTs for nothing, with no receive buffer posted), register
//!    writes after DRIVER_OK, a queue broken on purpose (block); each device must return what
//!    the rules say, and (block) its healthy queue must go on serving.
//! 4. A reset storm: cycles of DRIVER_OK with no queue ready, then a clean bring-up with one
//!    malformed chain and a reset (the VMM's log must not grow with the cycles).
//! 5. A reset, a clean bring-up, and one request that must succeed. Phase mark 2 after the
//!    last device: the VMM compares its thread counts at the two marks (every device is running
//!    at both, so a worker left behind by one of the resets shows).

mod block;
mod chains;
mod console;
mod device;
mod net;
mod rules;
mod vsock;

use super::buf::{dma_addr, DmaBufs};
use super::mmio::Window;
use super::queue::MAX_QUEUES;
use super::{Kind, Outcome, MAX_DEVICES};
use crate::arch::{self, Deadline};
use block::{blk_roundtrip, block};
use console::{console, console_write};
use device::HDev;
use net::{net, net_alive};
use pulse_probe::cmdline::Config;
use pulse_probe::devreport::{DeviceReport, HostileResult};
use pulse_probe::errors::ErrorList;
use pulse_probe::net_spec::net_feature;
use pulse_probe::virtio_spec::{self as spec, reg, ring};
use rules::{csr_after_driver_ok, queue_setup_after_driver_ok, register_rules, reset_storm};
use vsock::{vsock, vsock_alive};

const PHASE_PORT: u16 = 0x441;
const PHASE_START: u8 = 1;
const PHASE_DONE: u8 = 2;

/// IDT vectors: device d's configuration vector, and one vector for every queue interrupt
/// (not counted: the hostile mode polls).
const CONFIG_VECTOR: u8 = 0xc0;
const QUEUE_VECTOR: u8 = 0xcf;

/// Far outside guest RAM, and the top of the address space.
const FAR: u64 = 0xffff_ffff_0000;
const TOP: u64 = 0xffff_ffff_ffff_fff0;
/// Guest RAM the probe does not use (reads of the device only): for over-long buffers.
const SCRATCH_RAM: u64 = 0x200_0000;

const WAIT_MS: u64 = 5000;

const F_NEXT: u16 = ring::DESC_F_NEXT;
const F_WRITE: u16 = ring::DESC_F_WRITE;
const F_INDIRECT: u16 = 4;

/// Pages of buffers per device.
const PAGES_PER_DEVICE: usize = 12;

#[repr(C, align(4096))]
struct Pages([[u8; 4096]; PAGES_PER_DEVICE * MAX_DEVICES]);

/// Not zeroed: the probe writes what the device reads first.
#[link_section = ".noinit.hostile_bufs"]
static PAGES: DmaBufs<Pages> = DmaBufs::new();

/// Address of page `i` of device `d`'s buffers.
fn page(d: usize, i: usize) -> u64 {
    assert!(d < MAX_DEVICES && i < PAGES_PER_DEVICE);
    dma_addr!(PAGES, 0[d * PAGES_PER_DEVICE + i])
}

/// The outcome of one device, built up as it goes.
struct Tally {
    r: HostileResult,
    errors: ErrorList,
}

impl Tally {
    fn check(&mut self, ok: bool, what: &'static str) {
        self.r.checks += 1;
        if ok {
            self.r.checks_passed += 1;
        } else {
            self.errors.push(what);
        }
    }
}

/// Drives every device named on the command line in hostile mode.
pub fn run(cfg: &Config) -> Outcome {
    let mut out = Outcome {
        devices: [DeviceReport::default(); MAX_DEVICES],
        n: cfg.devices().len(),
    };
    let mut devs: [Option<HDev>; MAX_DEVICES] = [const { None }; MAX_DEVICES];
    let mut tallies: [Option<Tally>; MAX_DEVICES] = [const { None }; MAX_DEVICES];
    for (d, arg) in cfg.devices().iter().enumerate() {
        let report = &mut out.devices[d];
        *report = DeviceReport::new(arg.base, arg.irq);
        let w = match Window::new(arg.base, arg.size) {
            Ok(w) => w,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        report.device_id = w.read32(reg::DEVICE_ID);
        let Some(kind) = Kind::of(report.device_id) else {
            report.skipped = true;
            report.note = Some("no device the hostile mode drives, skipped");
            continue;
        };
        let nq = match kind {
            Kind::Blk => {
                let queues = w.read16(reg::CONFIG_SPACE + spec::blk::CFG_NUM_QUEUES);
                queues.clamp(1, MAX_QUEUES as u16)
            }
            // rx, tx, control (one pair); rx, tx, event; receiveq0, transmitq0.
            Kind::Net | Kind::Vsock => 3,
            Kind::Console => 2,
        };
        let mut dev = HDev::new(d, kind, w, nq);
        let mut t = Tally {
            r: HostileResult::default(),
            errors: ErrorList::new(),
        };
        register_rules(&mut dev, &mut t);
        if let Err(e) = dev.bring_up(features_of(kind), true) {
            t.errors.push(e);
        }
        report.queues = nq;
        report.queue_size = dev.qsize;
        report.msi = true;
        devs[d] = Some(dev);
        tallies[d] = Some(t);
    }

    arch::outb(PHASE_PORT, PHASE_START);
    for d in 0..out.n {
        let (Some(dev), Some(t)) = (devs[d].as_mut(), tallies[d].as_mut()) else {
            continue;
        };
        queue_setup_after_driver_ok(dev, t);
        match dev.kind {
            Kind::Blk => block(dev, t),
            Kind::Net => net(dev, t),
            Kind::Vsock => vsock(dev, t),
            Kind::Console => console(dev, t),
        }
        csr_after_driver_ok(dev, t);
        reset_storm(dev, t);
        t.r.alive = match dev.bring_up(features_of(dev.kind), false) {
            Ok(()) => alive(dev, t),
            Err(e) => {
                t.errors.push(e);
                false
            }
        };
    }
    arch::outb(PHASE_PORT, PHASE_DONE);

    // Interrupts the devices raised meanwhile land now (each vector at most once: they were
    // pending with interrupts off).
    arch::sti();
    Deadline::after_ms(20).wait();
    arch::cli();

    for (report, tally) in out.devices[..out.n].iter_mut().zip(tallies.iter_mut()) {
        let Some(t) = tally.take() else { continue };
        report.hostile = Some(t.r);
        report.errors.extend(&t.errors);
        report.judge();
    }
    out
}

fn features_of(kind: Kind) -> u64 {
    match kind {
        Kind::Blk => spec::feature::BLK_MQ,
        Kind::Net => net_feature::CTRL_VQ | net_feature::MAC | CTRL_MAC_ADDR,
        Kind::Vsock | Kind::Console => 0,
    }
}

/// VIRTIO_NET_F_CTRL_MAC_ADDR.
const CTRL_MAC_ADDR: u64 = 1 << 23;

fn alive(dev: &mut HDev, t: &mut Tally) -> bool {
    match dev.kind {
        Kind::Blk => blk_roundtrip(dev, 0, 80, 0x3c),
        Kind::Net => net_alive(dev, t),
        Kind::Vsock => vsock_alive(dev, t),
        Kind::Console => console_write(dev, 1, b"pulse-probe hostile: console alive\n"),
    }
}
