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

use super::buf::{read_byte, read_bytes, write_bytes};
use super::mmio::{ring_doorbell, Window};
use super::queue::{Virtq, MAX_QUEUES, QUEUE_SIZE_CAP};
use super::{cpus, Kind, Outcome, MAX_DEVICES};
use crate::arch::{self, Deadline, RacyCell};
use crate::idt;
use core::mem::MaybeUninit;
use pulse_probe::cmdline::Config;
use pulse_probe::devreport::{DeviceReport, HostileResult};
use pulse_probe::errors::ErrorList;
use pulse_probe::net_spec::{self as ns, net_feature};
use pulse_probe::virtio_spec::{self as spec, reg, ring, status};
use pulse_probe::vsock_spec::{self as vs, Header, HEADER_SIZE, HOST_CID, TYPE_STREAM};

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

/// virtio-blk request types and statuses.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSET: u8 = 0xff;

/// Pages of buffers per device.
const PAGES_PER_DEVICE: usize = 12;

#[repr(C, align(4096))]
struct Pages([[u8; 4096]; PAGES_PER_DEVICE * MAX_DEVICES]);

/// Not zeroed: the probe writes what the device reads first.
#[link_section = ".noinit.hostile_bufs"]
static PAGES: RacyCell<MaybeUninit<Pages>> = RacyCell::new(MaybeUninit::uninit());

/// Address of page `i` of device `d`'s buffers.
fn page(d: usize, i: usize) -> u64 {
    assert!(d < MAX_DEVICES && i < PAGES_PER_DEVICE);
    // SAFETY: address computation inside the static (no access).
    unsafe {
        core::ptr::addr_of!((*(PAGES.get() as *mut Pages)).0[d * PAGES_PER_DEVICE + i]) as u64
    }
}

/// One device as the hostile driver holds it.
struct HDev {
    d: usize,
    kind: Kind,
    w: Window,
    nq: u16,
    qsize: u16,
    vq: [Virtq; MAX_QUEUES],
    /// Free-running: next avail index to publish, next used entry to take.
    avail: [u16; MAX_QUEUES],
    used: [u16; MAX_QUEUES],
    doorbell: [u64; MAX_QUEUES],
    /// Queue 0's MSI vector got only refused messages.
    bsp_apic: u8,
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

impl HDev {
    fn new(d: usize, kind: Kind, w: Window, nq: u16) -> Self {
        let notify = w.read32(reg::QUEUE_NOTIFY);
        let vendor = spec::vendor_features(w.read32(reg::VENDOR_ID)).unwrap_or(0);
        let doorbell =
            core::array::from_fn(
                |q| match spec::doorbell_offset(notify, q as u16, w.size()) {
                    Some(off) if vendor & spec::VENDOR_F_PER_QUEUE_NOTIFY != 0 => w.addr(off),
                    _ => w.addr(reg::QUEUE_NOTIFY),
                },
            );
        Self {
            d,
            kind,
            w,
            nq,
            qsize: QUEUE_SIZE_CAP,
            vq: [Virtq::new(d, 0, QUEUE_SIZE_CAP); MAX_QUEUES],
            avail: [0; MAX_QUEUES],
            used: [0; MAX_QUEUES],
            doorbell,
            bsp_apic: cpus()[0].1,
        }
    }

    fn status(&self) -> u32 {
        self.w.read32(reg::STATUS)
    }

    fn reset(&mut self) {
        self.w.write32(reg::STATUS, 0);
        self.avail = [0; MAX_QUEUES];
        self.used = [0; MAX_QUEUES];
    }

    /// Up to FEATURES_OK with VERSION_1 and `extra` (those offered).
    fn negotiate(&self, extra: u64) -> Result<(), &'static str> {
        let w = &self.w;
        w.write32(reg::STATUS, status::ACKNOWLEDGE);
        w.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = w.read32(reg::DEVICE_FEATURES) as u64;
        w.write32(reg::DEVICE_FEATURES_SEL, 1);
        let offered = lo | (w.read32(reg::DEVICE_FEATURES) as u64) << 32;
        let accepted = offered & (spec::feature::VERSION_1 | extra);
        w.write32(reg::DRIVER_FEATURES_SEL, 0);
        w.write32(reg::DRIVER_FEATURES, accepted as u32);
        w.write32(reg::DRIVER_FEATURES_SEL, 1);
        w.write32(reg::DRIVER_FEATURES, (accepted >> 32) as u32);
        w.write32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        if w.read32(reg::STATUS) & status::FEATURES_OK == 0 {
            return Err("hostile: the device refused well-formed features");
        }
        Ok(())
    }

    /// Sets up every queue (queue `bad_q`'s descriptor table far outside guest RAM).
    fn setup_queues(&mut self, bad_q: Option<u16>) -> Result<(), &'static str> {
        let w = self.w;
        for q in 0..self.nq {
            w.write32(reg::QUEUE_SEL, q as u32);
            match spec::queue_size(w.read32(reg::QUEUE_NUM_MAX), QUEUE_SIZE_CAP) {
                Some(s) => self.qsize = self.qsize.min(s),
                None => return Err("hostile: a queue is missing"),
            }
        }
        if self.qsize < 16 {
            return Err("hostile: queues too small");
        }
        for q in 0..self.nq {
            let vq = Virtq::new(self.d, q as usize, self.qsize);
            vq.init();
            self.vq[q as usize] = vq;
            w.write32(reg::QUEUE_SEL, q as u32);
            w.write32(reg::QUEUE_NUM, self.qsize as u32);
            let desc = if bad_q == Some(q) {
                0xf_0000_0000
            } else {
                vq.desc_addr()
            };
            for (lo, hi, addr) in [
                (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc),
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
        }
        Ok(())
    }

    /// MSI: the configuration vector and every queue vector at the BSP, except queue 0's when
    /// `refuse_q0`, which gets only messages the VMM must refuse.
    fn program_msi(&self, refuse_q0: bool) {
        let w = &self.w;
        w.write16(reg::MSI_CSR, spec::MSI_CSR_ENABLE);
        let update = |index: u16, lo: u32, hi: u32, data: u32| {
            w.write32(reg::MSI_ADDRESS_LOW, lo);
            w.write32(reg::MSI_ADDRESS_HIGH, hi);
            w.write32(reg::MSI_DATA, data);
            w.write16(reg::MSI_CMD, spec::msi_cmd(spec::MSI_OP_UPDATE, index));
        };
        let lapic = spec::msi_address(self.bsp_apic);
        for v in 0..=self.nq {
            if v == 1 && refuse_q0 {
                // NMI, SMI, INIT, ExtINT, an exception vector, outside the LAPIC window, a
                // high half: each one refused, the vector keeps having no message.
                for data in [0x400 | 0x41, 0x200 | 0x41, 0x500, 0x700 | 0x41, 0x02] {
                    update(1, lapic, 0, data);
                }
                update(1, 0xfec0_0000, 0, 0x41);
                update(1, lapic, 1, 0x41);
                continue;
            }
            let vector = if v == 0 {
                CONFIG_VECTOR + self.d as u8
            } else {
                QUEUE_VECTOR
            };
            update(v, lapic, 0, vector as u32);
        }
    }

    /// Reset, features, queues, MSI, DRIVER_OK.
    fn bring_up(&mut self, extra: u64, refuse_q0: bool) -> Result<(), &'static str> {
        self.reset();
        self.negotiate(extra)?;
        self.setup_queues(None)?;
        self.program_msi(refuse_q0);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w.write32(reg::STATUS, st | status::DRIVER_OK);
        let now = self.status();
        if now & status::DRIVER_OK == 0 || now & status::DEVICE_NEEDS_RESET != 0 {
            return Err("hostile: a clean bring-up did not reach DRIVER_OK");
        }
        Ok(())
    }

    fn desc(&self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.vq[q as usize].set_desc(i, addr, len, flags, next);
    }

    fn kick(&self, q: u16) {
        ring_doorbell(self.doorbell[q as usize], q as u32);
    }

    /// Puts `heads` in the avail ring, publishes them with one index store, rings once.
    fn publish(&mut self, q: u16, heads: &[u16]) {
        let qi = q as usize;
        for &h in heads {
            self.vq[qi].put_avail(self.avail[qi], h);
            self.avail[qi] = self.avail[qi].wrapping_add(1);
        }
        self.vq[qi].publish(self.avail[qi]);
        self.kick(q);
    }

    /// Used entries the device added since the last `take`.
    fn new_used(&self, q: u16) -> u16 {
        self.vq[q as usize]
            .used_idx()
            .wrapping_sub(self.used[q as usize])
    }

    /// Waits until `n` new used entries are there (or `ms` pass); returns how many are.
    fn wait_used(&self, q: u16, n: u16, ms: u64) -> u16 {
        Deadline::after_ms(ms).wait_for(|| self.new_used(q) >= n);
        self.new_used(q)
    }

    /// Takes the next used entry: (head, length).
    fn take(&mut self, q: u16) -> (u32, u32) {
        let qi = q as usize;
        let e = self.vq[qi].used_elem(self.used[qi]);
        self.used[qi] = self.used[qi].wrapping_add(1);
        e
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
                let queues = w.read16(reg::CONFIG + spec::blk::CFG_NUM_QUEUES);
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

/// Step 1: the register rules, on a device not set up yet. Leaves it reset.
fn register_rules(dev: &mut HDev, t: &mut Tally) {
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
        w.read16(reg::VERSION) == 0,
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
    w.write32(reg::MSI_CSR, spec::MSI_CSR_ENABLE as u32);
    w.write8(reg::MSI_CMD, 0x10);
    t.check(
        w.read16(reg::MSI_CSR) & spec::MSI_CSR_ACTIVE == 0,
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
        spec::msi_cmd(spec::MSI_OP_UPDATE, 0x7ff),
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
fn queue_setup_after_driver_ok(dev: &mut HDev, t: &mut Tally) {
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
fn csr_after_driver_ok(dev: &mut HDev, t: &mut Tally) {
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
fn reset_storm(dev: &mut HDev, t: &mut Tally) {
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
        dev.publish(q, &[0]);
        if dev.wait_used(q, 1, WAIT_MS) == 0 {
            t.errors
                .push("hostile: a chain was not returned in the reset storm");
            break;
        }
        dev.take(q);
    }
    t.r.flood += STORM_CYCLES;
    dev.reset();
}

/// A chain the hostile code publishes: its head, and whether the rules say it comes back.
#[derive(Clone, Copy)]
struct Hostile {
    head: u16,
    returns: bool,
}

/// Publishes `chains` on queue `q` at once, waits for what should come back, and counts.
/// Returns the used entries taken (head, length), at most 64.
fn run_chains(
    dev: &mut HDev,
    t: &mut Tally,
    q: u16,
    chains: &[Hostile],
) -> ([(u32, u32); 64], usize) {
    let heads: [u16; 64] = core::array::from_fn(|i| chains.get(i).map_or(0, |c| c.head));
    let n = chains.len().min(64);
    let expected = chains[..n].iter().filter(|c| c.returns).count() as u16;
    t.r.chains += n as u32;
    t.r.chains_expected += expected as u32;
    dev.publish(q, &heads[..n]);
    let got = dev.wait_used(q, expected, WAIT_MS);
    // A little longer: an entry the rules say is skipped must not show up either.
    Deadline::after_ms(10).wait();
    let got = got.max(dev.new_used(q));
    let mut used = [(0u32, 0u32); 64];
    let mut k = 0;
    for _ in 0..got {
        let e = dev.take(q);
        if k < used.len() {
            used[k] = e;
            k += 1;
        }
        if !chains[..n]
            .iter()
            .any(|c| c.head as u32 == e.0 && c.returns)
        {
            t.errors
                .push("hostile: a used entry names a head that was not published");
        }
    }
    t.r.chains_returned += (got as u32).min(expected as u32);
    if got > expected {
        t.errors
            .push("hostile: more chains came back than were published");
    }
    (used, k)
}

fn blk_header(at: u64, kind: u32, sector: u64) {
    write_bytes(at, &kind.to_le_bytes());
    write_bytes(at + 4, &0u32.to_le_bytes());
    write_bytes(at + 8, &sector.to_le_bytes());
}

/// One block request on queue `q` with descriptors `first..first + 3`: header, 512 bytes of
/// data at `data`, status. Returns the status (None: not completed in time).
fn blk_request(
    dev: &mut HDev,
    q: u16,
    first: u16,
    kind: u32,
    sector: u64,
    data: u64,
) -> Option<u8> {
    let (hdr, st) = (
        page(dev.d, 0) + 0x800 + 32 * first as u64,
        page(dev.d, 1) + 0x800 + first as u64,
    );
    blk_header(hdr, kind, sector);
    write_bytes(st, &[S_UNSET]);
    let data_flags = if kind == T_IN { F_WRITE } else { 0 };
    dev.desc(q, first, hdr, 16, F_NEXT, first + 1);
    dev.desc(q, first + 1, data, 512, F_NEXT | data_flags, first + 2);
    dev.desc(q, first + 2, st, 1, F_WRITE, 0);
    dev.publish(q, &[first]);
    if dev.wait_used(q, 1, WAIT_MS) == 0 {
        return None;
    }
    dev.take(q);
    Some(read_byte(st))
}

/// A write and a read back on queue `q`: both OK and the data the same.
fn blk_roundtrip(dev: &mut HDev, q: u16, sector: u64, tag: u8) -> bool {
    let (wpage, rpage) = (page(dev.d, 6), page(dev.d, 7));
    for i in 0..512u64 {
        write_bytes(wpage + i, &[tag ^ i as u8]);
        write_bytes(rpage + i, &[0]);
    }
    if blk_request(dev, q, 0, T_OUT, sector, wpage) != Some(S_OK) {
        return false;
    }
    if blk_request(dev, q, 0, T_IN, sector, rpage) != Some(S_OK) {
        return false;
    }
    (0..512u64).all(|i| read_byte(rpage + i) == tag ^ i as u8)
}

fn block(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let (hdrs, stat, data, tables) = (page(d, 0), page(d, 1), page(d, 2), page(d, 4));
    let hdr = |k: u64| hdrs + 32 * k;
    let st = |k: u64| stat + k;
    for k in 0..16 {
        blk_header(hdr(k), T_IN, 0);
        write_bytes(st(k), &[S_UNSET]);
    }
    for i in 0..512 {
        write_bytes(data + i, &[S_UNSET]);
    }
    blk_header(hdr(5), T_IN, 1 << 40); // beyond the disk
    blk_header(hdr(6), T_OUT, 0);
    // An indirect table longer than the queue: header, 198 data buffers, status.
    let long = page(d, 5);
    let entry = |table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let at = table + 16 * i;
        write_bytes(at, &addr.to_le_bytes());
        write_bytes(at + 8, &len.to_le_bytes());
        write_bytes(at + 12, &flags.to_le_bytes());
        write_bytes(at + 14, &next.to_le_bytes());
    };
    let long_len = 200u64;
    entry(long, 0, hdr(7), 16, F_NEXT, 1);
    for i in 1..long_len - 1 {
        entry(long, i, page(d, 3), 8, F_NEXT | F_WRITE, i as u16 + 1);
    }
    entry(long, long_len - 1, st(7), 1, F_WRITE, 0);
    // A nested indirect table, and a misaligned one.
    entry(tables, 0, tables + 0x100, 48, F_INDIRECT, 0);
    entry(tables, 8, hdr(8), 16, F_NEXT, 1);

    let q = 0;
    let mut chains = [Hostile {
        head: 0,
        returns: true,
    }; 16];
    let mut n = 0;
    let mut add = |head: u16, returns: bool| {
        chains[n] = Hostile { head, returns };
        n += 1;
    };
    // A loop: a writable buffer whose next is itself.
    dev.desc(q, 0, hdr(0), 16, F_NEXT, 1);
    dev.desc(q, 1, data, 512, F_WRITE | F_NEXT, 1);
    add(0, true);
    // A length of u32::MAX.
    dev.desc(q, 2, hdr(1), 16, F_NEXT, 3);
    dev.desc(q, 3, data, u32::MAX, F_WRITE | F_NEXT, 4);
    dev.desc(q, 4, st(1), 1, F_WRITE, 0);
    add(2, true);
    // Zero-length data (a valid read of nothing).
    dev.desc(q, 5, hdr(2), 16, F_NEXT, 6);
    dev.desc(q, 6, data, 0, F_WRITE | F_NEXT, 7);
    dev.desc(q, 7, st(2), 1, F_WRITE, 0);
    add(5, true);
    // Indirect table outside guest memory; nested; misaligned; longer than the queue.
    dev.desc(q, 8, FAR, 48, F_INDIRECT, 0);
    add(8, true);
    dev.desc(q, 9, tables, 16, F_INDIRECT, 0);
    add(9, true);
    dev.desc(q, 10, tables + 0x80, 40, F_INDIRECT, 0);
    add(10, true);
    dev.desc(q, 11, long, (16 * long_len) as u32, F_INDIRECT, 0);
    add(11, true);
    // A writable header (read needed); a read-only status; data outside memory; a sector
    // beyond the disk; a status at the top of the address space; a next beyond the table.
    dev.desc(q, 12, hdr(3), 16, F_NEXT | F_WRITE, 13);
    dev.desc(q, 13, st(3), 1, F_WRITE, 0);
    add(12, true);
    dev.desc(q, 14, hdr(4), 16, F_NEXT, 15);
    dev.desc(q, 15, data, 512, F_NEXT | F_WRITE, 16);
    dev.desc(q, 16, st(4), 1, 0, 0);
    add(14, true);
    dev.desc(q, 17, hdr(5), 16, F_NEXT, 18);
    dev.desc(q, 18, data, 512, F_NEXT | F_WRITE, 19);
    dev.desc(q, 19, st(5), 1, F_WRITE, 0);
    add(17, true);
    dev.desc(q, 20, hdr(6), 16, F_NEXT, 21);
    dev.desc(q, 21, FAR, 512, F_NEXT, 22);
    dev.desc(q, 22, st(6), 1, F_WRITE, 0);
    add(20, true);
    dev.desc(q, 23, hdr(2), 16, F_NEXT, 24);
    dev.desc(q, 24, TOP, 16, F_WRITE, 0);
    add(23, true);
    dev.desc(q, 25, hdr(2), 16, F_NEXT, 500);
    add(25, true);
    // A head beyond the table: skipped, never returned.
    add(1000, false);
    let (_, _) = run_chains(dev, t, q, &chains[..n]);
    let ioerr = |k: u64| read_byte(st(k)) == S_IOERR;
    t.check(
        read_byte(data + 511) == S_IOERR,
        "hostile: a looping request did not fail",
    );
    t.check(
        read_byte(st(2)) == S_OK,
        "hostile: a zero-length read failed",
    );
    t.check(
        ioerr(3) && ioerr(5) && ioerr(6) && ioerr(7),
        "hostile: a malformed request did not fail with IOERR",
    );
    t.check(
        read_byte(st(4)) == S_UNSET,
        "hostile: a read-only status byte was written",
    );

    // The healthy queue serves, queue 0 is broken on purpose (its avail index far past the
    // ring), the healthy one still serves, the device asks for a reset with one config
    // interrupt. Single-queue devices skip the healthy part.
    let healthy = dev.nq > 1;
    let mut healthy_ok = !healthy || blk_roundtrip(dev, 1, 64, 0x5a);
    let cpu = cpus()[0].0;
    let config_vector = CONFIG_VECTOR + d as u8;
    let irqs_before = idt::count(cpu, config_vector);
    let far = dev.avail[0].wrapping_add(dev.qsize + 40);
    dev.vq[0].publish(far);
    dev.kick(0);
    let broken =
        Deadline::after_ms(WAIT_MS).wait_for(|| dev.status() & status::DEVICE_NEEDS_RESET != 0);
    t.r.broken_queue_seen = Some(broken);
    arch::sti();
    Deadline::after_ms(2000).wait_for(|| idt::count(cpu, config_vector) > irqs_before);
    // A little longer: a second one would be a duplicate.
    Deadline::after_ms(20).wait();
    arch::cli();
    t.r.config_interrupts = idt::count(cpu, config_vector) - irqs_before;
    t.check(
        t.r.config_interrupts == 1,
        "hostile: not exactly one config interrupt for a broken queue",
    );
    // Notification storms: the broken queue, the healthy one with nothing new, absent queues.
    for _ in 0..5000 {
        dev.kick(0);
    }
    for _ in 0..2000 {
        dev.kick(1 % dev.nq);
    }
    for _ in 0..500 {
        dev.w.write32(reg::QUEUE_NOTIFY, 77);
    }
    t.r.flood += 7500;
    healthy_ok &= !healthy || blk_roundtrip(dev, 1, 72, 0xa5);
    if healthy {
        t.r.healthy_queue = Some(healthy_ok);
    }
    // Busy workers: a ring of 16 MiB write-zeroes on the healthy queue, reset at once.
    let zq = if healthy { 1 } else { 0 };
    if healthy {
        let seg = page(d, 8);
        write_bytes(seg, &0u64.to_le_bytes());
        write_bytes(seg + 8, &(32768u32).to_le_bytes());
        write_bytes(seg + 12, &0u32.to_le_bytes());
        blk_header(hdr(9), T_WRITE_ZEROES, 0);
        let mut heads = [0u16; 20];
        for (k, head) in heads.iter_mut().enumerate() {
            let i = 3 * k as u16;
            dev.desc(zq, i, hdr(9), 16, F_NEXT, i + 1);
            dev.desc(zq, i + 1, seg, 16, F_NEXT, i + 2);
            dev.desc(zq, i + 2, st(10), 1, F_WRITE, 0);
            *head = i;
        }
        dev.publish(zq, &heads);
        t.r.flood += heads.len() as u32;
        // The reset comes with the next bring-up, while the worker is at it.
    }
}

fn alive(dev: &mut HDev, t: &mut Tally) -> bool {
    match dev.kind {
        Kind::Blk => blk_roundtrip(dev, 0, 80, 0x3c),
        Kind::Net => net_alive(dev, t),
        Kind::Vsock => vsock_alive(dev, t),
        Kind::Console => console_write(dev, 1, b"pulse-probe hostile: console alive\n"),
    }
}

// ---- net -------------------------------------------------------------------------------

const NET_RX: u16 = 0;
const NET_TX: u16 = 1;
const NET_CTRL: u16 = 2;
const CLASS_RX: u8 = 0;
const CLASS_MAC: u8 = 1;
const MAC_TABLE_SET: u8 = 0;
const MAC_ADDR_SET: u8 = 1;
const CTRL_ERR: u8 = 1;

/// One control command with its ack; returns the ack (None: not answered in time).
fn net_command(dev: &mut HDev, cmd: &[u8]) -> Option<u8> {
    let (c, ack) = (page(dev.d, 8), page(dev.d, 8) + 0x800);
    write_bytes(c, cmd);
    write_bytes(ack, &[S_UNSET]);
    dev.desc(NET_CTRL, 0, c, cmd.len() as u32, F_NEXT, 1);
    dev.desc(NET_CTRL, 1, ack, 1, F_WRITE, 0);
    dev.publish(NET_CTRL, &[0]);
    if dev.wait_used(NET_CTRL, 1, WAIT_MS) == 0 {
        return None;
    }
    dev.take(NET_CTRL);
    Some(read_byte(ack))
}

fn net_mac(dev: &HDev) -> [u8; 6] {
    core::array::from_fn(|i| dev.w.read8(reg::CONFIG + ns::NET_CFG_MAC + i as u64))
}

fn net_alive(dev: &mut HDev, t: &mut Tally) -> bool {
    let original = net_mac(dev);
    let mac = [0x02, 0x48, 0x4f, 0x53, 0x54, dev.d as u8];
    let mut cmd = [CLASS_MAC, MAC_ADDR_SET, 0, 0, 0, 0, 0, 0];
    cmd[2..].copy_from_slice(&mac);
    let ok = net_command(dev, &cmd) == Some(ns::CTRL_OK) && net_mac(dev) == mac;
    // A reset gives the device its own MAC back.
    dev.reset();
    let back = net_mac(dev) == original;
    t.check(back, "hostile: a reset did not restore the MAC");
    if let Err(e) = dev.bring_up(features_of(Kind::Net), false) {
        t.errors.push(e);
        return false;
    }
    ok
}

fn net(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let buf = page(d, 2);
    // A valid frame: a zero virtio-net header and a broadcast frame of the probe's type.
    write_bytes(buf, &[0u8; ns::NET_HDR_LEN]);
    let frame = ns::probe_frame([0x02, 0, 0, 0, 0, 1], 0, 0);
    write_bytes(buf + ns::NET_HDR_LEN as u64, &frame);
    let frame_len = (ns::NET_HDR_LEN + frame.len()) as u32;

    let q = NET_TX;
    let mut chains = [Hostile {
        head: 0,
        returns: true,
    }; 16];
    let mut n = 0;
    let mut add = |head: u16, returns: bool| {
        chains[n] = Hostile { head, returns };
        n += 1;
    };
    dev.desc(q, 0, buf, frame_len, F_NEXT, 0); // a loop
    add(0, true);
    dev.desc(q, 1, buf, frame_len, F_WRITE, 0); // writable on transmit
    add(1, true);
    dev.desc(q, 2, SCRATCH_RAM, 0x1_0000, F_NEXT, 3); // longer than any frame
    dev.desc(q, 3, SCRATCH_RAM, 0x1_0000, 0, 0);
    add(2, true);
    dev.desc(q, 4, buf, 0, 0, 0); // zero length: shorter than a header
    add(4, true);
    dev.desc(q, 5, FAR, 32, F_INDIRECT, 0);
    add(5, true);
    dev.desc(q, 6, buf, u32::MAX, 0, 0);
    add(6, true);
    dev.desc(q, 7, buf, 12, F_NEXT, 300); // next beyond the table
    add(7, true);
    add(2000, false);
    dev.desc(q, 8, buf, frame_len, 0, 0); // and one good frame
    add(8, true);
    let (used, k) = run_chains(dev, t, q, &chains[..n]);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: a transmit chain came back with a length",
    );

    // Receive buffers the wrong way round, looping, too small, outside memory: each returned
    // empty at once (no frame needed).
    let q = NET_RX;
    let rx = page(d, 3);
    let mut chains = [Hostile {
        head: 0,
        returns: true,
    }; 4];
    dev.desc(q, 0, rx, 2048, 0, 0);
    dev.desc(q, 1, rx, 2048, F_WRITE | F_NEXT, 1);
    dev.desc(q, 2, rx, 8, F_WRITE, 0);
    dev.desc(q, 3, FAR, 2048, F_WRITE, 0);
    for (i, c) in chains.iter_mut().enumerate() {
        c.head = i as u16;
    }
    let (used, k) = run_chains(dev, t, q, &chains);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: a malformed receive chain got bytes",
    );

    // Control-queue flood: commands the device refuses (MQ not negotiated, no filtering, a
    // multicast MAC, unknown classes, ack before the command), commands without an ack.
    let cmds = page(d, 4);
    let acks = page(d, 5);
    let batch = dev.qsize / 2;
    let mut answers = 0u32;
    let mut sent = 0u32;
    for round in 0..32u16 {
        let mut heads = [0u16; 32];
        for j in 0..batch.min(32) {
            let c = cmds + 16 * j as u64;
            let ack = acks + j as u64;
            write_bytes(ack, &[S_UNSET]);
            let (class, cmd, data): (u8, u8, &[u8]) = match (round + j) % 6 {
                0 => (ns::CTRL_CLASS_MQ, ns::CTRL_MQ_VQ_PAIRS_SET, &[9, 0]),
                1 => (CLASS_MAC, MAC_TABLE_SET, &[0, 0, 0, 0, 0, 0, 0, 0]),
                2 => (CLASS_MAC, MAC_ADDR_SET, &[0x01, 0, 0x5e, 0, 0, 1]),
                3 => (CLASS_RX, 0, &[1]),
                4 => (77, 3, &[]),
                _ => (CLASS_MAC, MAC_ADDR_SET, &[0x02, 1, 2, 3, 4, 5]),
            };
            write_bytes(c, &[class, cmd]);
            write_bytes(c + 2, data);
            let len = 2 + data.len() as u32;
            let i = 2 * j;
            match (round + j) % 6 {
                // The ack first, then the command: malformed, answered ERR.
                5 => {
                    dev.desc(NET_CTRL, i, ack, 1, F_WRITE | F_NEXT, i + 1);
                    dev.desc(NET_CTRL, i + 1, c, len, 0, 0);
                }
                // No ack at all on every 7th: returned unanswered.
                _ if j % 7 == 3 => dev.desc(NET_CTRL, i, c, len, 0, 0),
                _ => {
                    dev.desc(NET_CTRL, i, c, len, F_NEXT, i + 1);
                    dev.desc(NET_CTRL, i + 1, ack, 1, F_WRITE, 0);
                }
            }
            heads[j as usize] = i;
        }
        let m = batch.min(32);
        dev.publish(NET_CTRL, &heads[..m as usize]);
        let got = dev.wait_used(NET_CTRL, m, WAIT_MS);
        for _ in 0..got {
            dev.take(NET_CTRL);
        }
        sent += m as u32;
        answers += (0..m as u64)
            .filter(|&j| read_byte(acks + j) == CTRL_ERR)
            .count() as u32;
        if got < m {
            t.errors.push("hostile: control commands were not returned");
            break;
        }
    }
    t.r.flood += sent;
    t.r.flood_answers += answers;
    t.check(answers > 0, "hostile: no control command was refused");
    // A doorbell storm with nothing new.
    for _ in 0..2000 {
        dev.kick(NET_TX);
    }
    t.r.flood += 2000;
}

// ---- vsock -----------------------------------------------------------------------------

const VS_RX: u16 = 0;
const VS_TX: u16 = 1;
/// Receive buffers: header plus a little payload.
const VS_RX_BUF: u64 = 128;
const GUEST_CID: u64 = 3;

fn vs_header(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// Sends `count` packets made by `make(i)` in batches on the tx queue; returns how many went.
fn vs_send(dev: &mut HDev, count: u32, make: impl Fn(u32) -> Header) -> u32 {
    let hdrs = page(dev.d, 4);
    let batch = (dev.qsize - 1).min(63) as u32;
    let mut sent = 0;
    while sent < count {
        let m = batch.min(count - sent);
        let mut heads = [0u16; 64];
        for j in 0..m {
            let at = hdrs + 64 * j as u64;
            write_bytes(at, &make(sent + j).encode());
            dev.desc(VS_TX, j as u16, at, HEADER_SIZE as u32, 0, 0);
            heads[j as usize] = j as u16;
        }
        dev.publish(VS_TX, &heads[..m as usize]);
        let got = dev.wait_used(VS_TX, m as u16, WAIT_MS);
        for _ in 0..got {
            dev.take(VS_TX);
        }
        if got < m as u16 {
            break;
        }
        sent += m;
    }
    sent
}

/// Posts 31 receive buffers, waits (up to `wait_ms`) until `want` of them are used, and takes
/// the packets there are; calls `seen(header)` for each. Returns how many came.
fn vs_receive(dev: &mut HDev, want: u16, wait_ms: u64, mut seen: impl FnMut(&Header)) -> u32 {
    let bufs = page(dev.d, 5);
    let m = (dev.qsize - 1).min(31);
    let mut heads = [0u16; 32];
    for j in 0..m {
        let at = bufs + VS_RX_BUF * j as u64;
        dev.desc(VS_RX, j, at, VS_RX_BUF as u32, F_WRITE, 0);
        heads[j as usize] = j;
    }
    dev.publish(VS_RX, &heads[..m as usize]);
    let got = dev.wait_used(VS_RX, want.min(m), wait_ms);
    // The buffers not used stay posted: take them back with a reset later; count what came.
    for _ in 0..got {
        let (id, len) = dev.take(VS_RX);
        if id < m as u32 && len as usize >= HEADER_SIZE {
            let raw: [u8; HEADER_SIZE] = read_bytes(bufs + VS_RX_BUF * id as u64);
            seen(&Header::decode(&raw));
        }
    }
    got as u32
}

fn vsock(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let pk = page(d, 2);
    // Hostile transmit chains.
    let put = |at: u64, h: Header| write_bytes(at, &h.encode());
    put(pk, vs_header(40000, 50000, vs::op::REQUEST));
    let mut big = vs_header(40001, 50001, vs::op::RW);
    big.len = 0x10001;
    put(pk + 0x80, big);
    let mut short = vs_header(40002, 50002, vs::op::RW);
    short.len = 100;
    put(pk + 0x100, short);
    let mut bad_cid = vs_header(40003, 50003, vs::op::REQUEST);
    bad_cid.src_cid = 9;
    put(pk + 0x180, bad_cid);
    let mut not_host = vs_header(40004, 50004, vs::op::REQUEST);
    not_host.dst_cid = 5;
    put(pk + 0x200, not_host);
    let mut seqpacket = vs_header(40005, 50005, vs::op::REQUEST);
    seqpacket.kind = 2;
    put(pk + 0x280, seqpacket);
    put(pk + 0x300, vs_header(40006, 50006, 99));

    let q = VS_TX;
    let mut chains = [Hostile {
        head: 0,
        returns: true,
    }; 16];
    let mut n = 0;
    let mut add = |head: u16, returns: bool| {
        chains[n] = Hostile { head, returns };
        n += 1;
    };
    dev.desc(q, 0, pk, HEADER_SIZE as u32, F_NEXT, 0); // a looping REQUEST
    add(0, true);
    dev.desc(q, 1, pk, HEADER_SIZE as u32, F_WRITE, 0); // writable
    add(1, true);
    dev.desc(q, 2, pk, 20, 0, 0); // shorter than a header
    add(2, true);
    dev.desc(q, 3, pk + 0x80, HEADER_SIZE as u32, F_NEXT, 4); // a payload beyond the maximum
    dev.desc(q, 4, SCRATCH_RAM, 0x1_0001, 0, 0);
    add(3, true);
    dev.desc(q, 5, pk + 0x100, HEADER_SIZE as u32, 0, 0); // len beyond what is there
    add(5, true);
    for (i, off) in [(6u16, 0x180u64), (7, 0x200), (8, 0x280), (9, 0x300)] {
        dev.desc(q, i, pk + off, HEADER_SIZE as u32, 0, 0);
        add(i, true);
    }
    dev.desc(q, 10, FAR, 32, F_INDIRECT, 0);
    add(10, true);
    dev.desc(q, 11, pk, HEADER_SIZE as u32, F_NEXT, 400);
    add(11, true);
    add(3000, false);
    let (used, k) = run_chains(dev, t, q, &chains[..n]);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: a transmit chain came back with a length",
    );

    // Floods with no receive buffer posted: connects to host ports nobody listens on (each
    // answered with an RST the device must queue, up to its cap, and drop beyond), then RSTs
    // for connections that do not exist (never answered).
    let connects = vs_send(dev, 5000, |i| {
        vs_header(41000 + i, 20000 + i, vs::op::REQUEST)
    });
    let rsts = vs_send(dev, 2000, |i| vs_header(46000 + i, 30000 + i, vs::op::RST));
    t.r.flood += connects + rsts;
    t.check(
        connects == 5000 && rsts == 2000,
        "hostile: a flood was not taken",
    );
    // Now take the replies: every one an RST to this guest.
    let mut answers = 0u32;
    let mut wrong = 0u32;
    loop {
        let got = vs_receive(dev, 31, 200, |h| {
            if h.op != vs::op::RST || h.dst_cid != GUEST_CID || h.src_cid != HOST_CID {
                wrong += 1;
            }
        });
        answers += got;
        if got == 0 || answers > 10_000 {
            break;
        }
    }
    t.r.flood_answers += answers;
    t.check(wrong == 0, "hostile: a reply to the flood was not an RST");
    t.check(
        answers > 0 && answers < connects + 16,
        "hostile: the flood's replies did not come back, or more came than were asked for",
    );
    // Receive buffers the wrong way round, looping, too small: returned empty once there is
    // something to deliver (an RST for a connect to a port nobody listens on).
    dev.reset();
    if let Err(e) = dev.bring_up(0, true) {
        t.errors.push(e);
        return;
    }
    let rx = page(d, 6);
    let mut chains = [Hostile {
        head: 0,
        returns: true,
    }; 4];
    dev.desc(VS_RX, 0, rx, 256, 0, 0);
    dev.desc(VS_RX, 1, rx, 256, F_WRITE | F_NEXT, 1);
    dev.desc(VS_RX, 2, rx, 16, F_WRITE, 0);
    dev.desc(VS_RX, 3, rx + 0x800, 256, F_WRITE, 0);
    for (i, c) in chains.iter_mut().enumerate() {
        c.head = i as u16;
    }
    vs_send(dev, 1, |_| vs_header(47000, 20999, vs::op::REQUEST));
    let (used, k) = run_chains(dev, t, VS_RX, &chains);
    t.check(
        used[..k]
            .iter()
            .all(|e| (e.0 == 3) == (e.1 as usize >= HEADER_SIZE)),
        "hostile: a malformed receive chain got a packet",
    );
}

fn vsock_alive(dev: &mut HDev, _t: &mut Tally) -> bool {
    // A connect to a port nobody listens on: the device must answer it with an RST.
    if vs_send(dev, 1, |_| vs_header(48000, 21999, vs::op::REQUEST)) != 1 {
        return false;
    }
    let mut rst = false;
    vs_receive(dev, 1, WAIT_MS, |h| {
        rst |= h.op == vs::op::RST && h.src_port == 21999 && h.dst_port == 48000;
    });
    rst
}

// ---- console ---------------------------------------------------------------------------

/// One output chain on transmitq0; true when it came back.
fn console_write(dev: &mut HDev, q: u16, text: &[u8]) -> bool {
    let at = page(dev.d, 7);
    write_bytes(at, text);
    dev.desc(q, 0, at, text.len() as u32, 0, 0);
    dev.publish(q, &[0]);
    if dev.wait_used(q, 1, WAIT_MS) == 0 {
        return false;
    }
    dev.take(q);
    true
}

fn console(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let text = page(d, 2);
    write_bytes(text, b"pulse-probe hostile\n");
    let q = 1;
    let mut chains = [Hostile {
        head: 0,
        returns: true,
    }; 12];
    let mut n = 0;
    let mut add = |head: u16, returns: bool| {
        chains[n] = Hostile { head, returns };
        n += 1;
    };
    dev.desc(q, 0, text, 20, F_NEXT, 0); // a loop
    add(0, true);
    dev.desc(q, 1, text, 20, F_WRITE, 0); // writable output
    add(1, true);
    dev.desc(q, 2, SCRATCH_RAM, 0x1_0000, F_NEXT, 3); // more than 64 KiB
    dev.desc(q, 3, SCRATCH_RAM, 0x1_0000, 0, 0);
    add(2, true);
    dev.desc(q, 4, text, 0, 0, 0); // zero length
    add(4, true);
    dev.desc(q, 5, FAR, 32, F_INDIRECT, 0);
    add(5, true);
    dev.desc(q, 6, TOP, 64, 0, 0);
    add(6, true);
    dev.desc(q, 7, text, 4, F_NEXT, 999);
    add(7, true);
    add(4000, false);
    dev.desc(q, 8, text, 20, 0, 0);
    add(8, true);
    let (used, k) = run_chains(dev, t, q, &chains[..n]);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: an output chain came back with a length",
    );
    // A storm on the input queue with nothing posted.
    for _ in 0..2000 {
        dev.kick(0);
    }
    t.r.flood += 2000;
    // The output ring published far past the device: broken, DEVICE_NEEDS_RESET.
    let far = dev.avail[1].wrapping_add(dev.qsize + 1);
    dev.vq[1].publish(far);
    dev.kick(1);
    let broken =
        Deadline::after_ms(WAIT_MS).wait_for(|| dev.status() & status::DEVICE_NEEDS_RESET != 0);
    t.r.broken_queue_seen = Some(broken);
}
