//! The register space of one virtio-mmio window with the MSI extension: a sequence of reads
//! and writes (offset, width, value) and driver macros decoded from the input, on a fresh KVM
//! VM (no vCPU) with the small guest memory, against a recording device (which checks what it
//! is activated with) or a real block device. After every access the transport's invariants
//! are checked: status bits, DRIVER_OK only with FEATURES_OK and only with the device started,
//! every MSI route KVM holds is one an x86 LAPIC takes as a device interrupt, error counters
//! only grow, a reset leaves nothing behind, wrong-width reads read zero.
//!
//! Input: `cfg u8` (bit 0: block device instead of the recorder, bit 1: MSI not offered),
//! then operations until the input ends (at most 256): `op u8`, operands by kind (`op & 7`):
//! 0 read32 `off u16`; 1 write32 `off u16, value u32`; 2 access of width 1/2/4/8 (`op >> 3 &
//! 3`), a write if `op & 0x20`, `off u16, value u64`; 3 driver macro `op >> 3` (see
//! `Rig::driver_macro`); 4 device event `u8`; 5 16-bit write to MSI_CSR (`op & 8` clear) or
//! MSI_CMD, `value u16`; 6 STATUS write `value u8`; 7 notification `value u32`, to QueueNotify
//! (`op & 8` clear) or to a doorbell.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use kvm_ioctls::VmFd;
use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{guest_memory, Input, RING_STRIDE};
use pulse_vmm::bus::BusDevice;
use pulse_vmm::devices::block::{Block, BlockConfig};
use pulse_vmm::devices::virtio::{
    device_type, features, read_config_bytes, status, ActivateError, Activation, VirtioDevice,
};
use pulse_vmm::interrupts::{DeviceInterrupts, Interrupt, InterruptManager};
use pulse_vmm::mmio::registers::*;
use pulse_vmm::mmio::{MmioTransport, TransportErrors};
use virtio_queue::QueueT;

const BASE: u64 = 0xd000_0000;
const QUEUES: u16 = 2;
const QUEUE_MAX: u16 = 16;
const MAX_OPS: usize = 256;

/// Features the recorder offers: RING_RESET among them, which the transport must hide.
const OFFERED: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | features::RING_RESET
    | (1 << 3);

/// What the recorder saw.
#[derive(Default)]
struct Record {
    active: bool,
    activations: u64,
    resets: u64,
    interrupt: Option<Arc<dyn Interrupt>>,
}

/// A device that checks what the transport hands it at DRIVER_OK.
struct Recorder {
    record: Arc<Mutex<Record>>,
    config: [u8; 8],
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_MAX; usize::from(QUEUES)]
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (Some(b), Some(v)) = (self.config.get_mut(offset as usize), data.first()) {
            *b = *v;
        }
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let negotiated = activation.features;
        let mut r = self.record.lock().unwrap();
        assert!(!r.active, "activated twice without a reset");
        assert_eq!(
            negotiated & !(OFFERED & !(features::RING_RESET | features::NOTIF_CONFIG_DATA)),
            0,
            "activated with features {negotiated:#x} the device did not offer (or RING_RESET)"
        );
        assert_ne!(
            negotiated & features::VERSION_1,
            0,
            "activated without VERSION_1"
        );
        let mut seen = [false; QUEUES as usize];
        for q in &activation.queues {
            let i = usize::from(q.index);
            assert!(
                i < seen.len() && !seen[i],
                "queue {} handed over twice or out of range",
                q.index
            );
            seen[i] = true;
            assert!(q.queue.ready(), "queue {} handed over not ready", q.index);
            assert!(
                q.queue.is_valid(&activation.mem),
                "queue {}'s rings do not fit guest memory",
                q.index
            );
            assert!(q.queue.size().is_power_of_two() && q.queue.size() <= QUEUE_MAX);
            assert_eq!(
                q.queue.event_idx_enabled(),
                negotiated & features::RING_EVENT_IDX != 0
            );
        }
        r.active = true;
        r.activations += 1;
        r.interrupt = Some(activation.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        let mut r = self.record.lock().unwrap();
        r.active = false;
        r.resets += 1;
        r.interrupt = None;
    }
}

/// The block device's disk (shared by the runs; the rings never carry requests the runs
/// check).
fn disk() -> &'static tempfile::NamedTempFile {
    static DISK: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let f = tempfile::NamedTempFile::new().expect("disk image");
        f.as_file().set_len(64 * 512).expect("disk size");
        f
    })
}

struct Rig {
    t: MmioTransport,
    irq: Arc<DeviceInterrupts>,
    manager: Arc<InterruptManager>,
    record: Option<Arc<Mutex<Record>>>,
    errors: TransportErrors,
    _vm: Arc<VmFd>,
}

/// Runs that share one KVM VM (creating one costs tens of milliseconds here). Each run puts
/// its window at its own base: a transport's doorbell ioeventfds stay registered after it
/// goes (they go with the VM, as in the product), and KVM holds at most 1000 per bus; each
/// run also takes 3 GSIs of the 4096. What a run does never depends on its base.
const RUNS_PER_VM: u64 = 128;

struct SharedVm {
    vm: Arc<VmFd>,
    manager: Arc<InterruptManager>,
    runs: u64,
}

/// The VM, routing table and window base for the next run.
fn next_vm() -> (Arc<VmFd>, Arc<InterruptManager>, u64) {
    static KVM: OnceLock<kvm_ioctls::Kvm> = OnceLock::new();
    static SHARED: Mutex<Option<SharedVm>> = Mutex::new(None);
    let kvm = KVM.get_or_init(|| pulse_vmm::kvm::open_kvm().expect("/dev/kvm"));
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if shared.as_ref().is_none_or(|s| s.runs == RUNS_PER_VM) {
        *shared = None;
        let vm = Arc::new(pulse_vmm::kvm::create_vm(kvm, 1).expect("KVM VM"));
        let manager = InterruptManager::new(vm.clone()).expect("routing table");
        *shared = Some(SharedVm {
            vm,
            manager,
            runs: 0,
        });
    }
    let s = shared.as_mut().expect("just made");
    let base = BASE + s.runs * WINDOW_SIZE;
    s.runs += 1;
    (s.vm.clone(), s.manager.clone(), base)
}

impl Rig {
    fn new(block: bool, msi_offered: bool) -> Self {
        let (vm, manager, base) = next_vm();
        let irq = DeviceInterrupts::new(manager.clone(), 5, QUEUES).expect("interrupts");
        let (device, record): (Box<dyn VirtioDevice>, _) = if block {
            let b = Block::new(BlockConfig {
                path: disk().path().to_path_buf(),
                read_only: false,
                queues: QUEUES,
                queue_size: QUEUE_MAX,
                serial: None,
            })
            .expect("block device");
            (Box::new(b), None)
        } else {
            let record = Arc::new(Mutex::new(Record::default()));
            let r = Recorder {
                record: record.clone(),
                config: [1, 2, 3, 4, 5, 6, 7, 8],
            };
            (Box::new(r), Some(record))
        };
        let mut t = MmioTransport::new(&vm, base, device, guest_memory().clone(), irq.clone())
            .expect("transport");
        t.set_msi_offered(msi_offered);
        Self {
            t,
            irq,
            manager,
            record,
            errors: TransportErrors::default(),
            _vm: vm,
        }
    }

    fn read(&mut self, off: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.t.read(off, &mut b[..width]);
        let v = u64::from_le_bytes(b);
        // Registers (not the config space) read zero at any width but their own.
        let own = if off == MSI_CSR { 2 } else { 4 };
        if off < CONFIG_SPACE && width != own {
            assert_eq!(v, 0, "a {width}-byte read of register {off:#x} read {v:#x}");
        }
        v
    }

    fn write(&mut self, off: u64, width: usize, value: u64) {
        self.t.write(off, &value.to_le_bytes()[..width]);
    }

    fn r32(&mut self, off: u64) -> u32 {
        self.read(off, 4) as u32
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.write(off, 4, u64::from(v));
    }

    fn w16(&mut self, off: u64, v: u16) {
        self.write(off, 2, u64::from(v));
    }

    /// Well-formed driver steps, so that the fuzzer reaches the states behind them.
    fn driver_macro(&mut self, which: u8, input: &mut Input) {
        let add = |rig: &mut Self, bits: u32| {
            let st = rig.r32(STATUS) & !status::DEVICE_NEEDS_RESET;
            rig.w32(STATUS, st | bits);
        };
        match which % 8 {
            0 => {
                self.w32(STATUS, 0);
                self.w32(STATUS, status::ACKNOWLEDGE);
                self.w32(STATUS, status::ACKNOWLEDGE | status::DRIVER);
            }
            1 => {
                let extra = input.u32();
                self.w32(DRIVER_FEATURES_SEL, 1);
                self.w32(DRIVER_FEATURES, 1); // VERSION_1
                self.w32(DRIVER_FEATURES_SEL, 0);
                self.w32(DRIVER_FEATURES, (1 << 29) | (extra & (1 << 28)));
                add(self, status::FEATURES_OK);
            }
            2 => {
                let q = u32::from(input.u8()) % (u32::from(QUEUES) + 1);
                let size = 1u32 << (input.u8() % 5);
                let base = RING_STRIDE * u64::from(q);
                self.w32(QUEUE_SEL, q);
                self.w32(QUEUE_NUM, size);
                for (lo, hi, addr) in [
                    (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, base),
                    (QUEUE_AVAIL_LOW, QUEUE_AVAIL_HIGH, base + 0x1000),
                    (QUEUE_USED_LOW, QUEUE_USED_HIGH, base + 0x2000),
                ] {
                    self.w32(lo, addr as u32);
                    self.w32(hi, (addr >> 32) as u32);
                }
                self.w32(QUEUE_READY, 1);
            }
            3 => {
                let v = u16::from(input.u8() % 4);
                self.w16(MSI_CSR, MSI_CSR_ENABLE);
                self.w32(MSI_ADDRESS_LOW, 0xfee0_0000);
                self.w32(MSI_ADDRESS_HIGH, 0);
                self.w32(MSI_DATA, 0x40 + u32::from(v));
                self.w16(MSI_CMD, (MSI_CMD_UPDATE << 12) | v);
            }
            4 => {
                // A message from the input: NMI, SMI, INIT, ExtINT, low vectors, odd
                // addresses must all be refused.
                let v = u16::from(input.u8() % 4);
                self.w32(MSI_ADDRESS_LOW, input.u32());
                self.w32(MSI_ADDRESS_HIGH, u32::from(input.u8() & 1));
                self.w32(MSI_DATA, input.u32());
                self.w16(MSI_CMD, (MSI_CMD_UPDATE << 12) | v);
            }
            5 => add(self, status::DRIVER_OK),
            6 => {
                // The whole bring-up.
                self.driver_macro(0, input);
                self.driver_macro(1, input);
                for q in 0..QUEUES {
                    self.w32(QUEUE_SEL, u32::from(q));
                    self.w32(QUEUE_NUM, 8);
                    let base = RING_STRIDE * u64::from(q);
                    self.w32(QUEUE_DESC_LOW, base as u32);
                    self.w32(QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
                    self.w32(QUEUE_USED_LOW, (base + 0x2000) as u32);
                    self.w32(QUEUE_READY, 1);
                }
                if input.u8() & 1 == 0 {
                    self.w16(MSI_CSR, MSI_CSR_ENABLE);
                    for v in 0..=QUEUES {
                        self.w32(MSI_ADDRESS_LOW, 0xfee0_0000);
                        self.w32(MSI_DATA, 0x40 + u32::from(v));
                        self.w16(MSI_CMD, (MSI_CMD_UPDATE << 12) | v);
                    }
                }
                self.driver_macro(5, input);
            }
            _ => {
                let op = input.u8() % 4;
                let v = u16::from(input.u8() % 8);
                self.w16(MSI_CMD, (u16::from(op) << 12) | v);
            }
        }
    }

    /// The device raises something (recorder only: a real device decides for itself).
    fn device_event(&mut self, what: u8) {
        let Some(record) = &self.record else { return };
        let irq = record.lock().unwrap().interrupt.clone();
        let Some(irq) = irq else { return };
        match what % 4 {
            0 | 1 => irq.trigger(u16::from(what >> 2) % (QUEUES + 1)),
            2 => irq.trigger_config(),
            _ => irq.needs_reset(),
        }
    }

    fn check(&mut self, reset_written: bool) {
        let st = self.r32(STATUS);
        let allowed = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED
            | status::DEVICE_NEEDS_RESET;
        assert_eq!(st & !allowed, 0, "status {st:#x} has bits nobody may set");
        if st & status::DRIVER_OK != 0 {
            assert_ne!(
                st & status::FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK: {st:#x}"
            );
        }
        if self.irq.msi_active() {
            assert_ne!(
                st & status::DRIVER_OK,
                0,
                "MSI routes live before DRIVER_OK"
            );
        }
        if let Some(record) = &self.record {
            let active = record.lock().unwrap().active;
            if active {
                assert_ne!(
                    st & status::DRIVER_OK,
                    0,
                    "device running without DRIVER_OK"
                );
            }
            if st & status::DRIVER_OK != 0 && st & status::DEVICE_NEEDS_RESET == 0 {
                assert!(
                    active,
                    "DRIVER_OK shown, device not started, no NEEDS_RESET"
                );
            }
        }
        for v in self.irq.stats() {
            if let Some(msg) = self.manager.msi_route(v.gsi) {
                assert!(
                    ordinary_device_interrupt(msg.address_lo, msg.address_hi, msg.data),
                    "vector {} routed to {msg:?}, which is not an ordinary device interrupt",
                    v.index
                );
                assert!(v.configured, "vector {} routed but not configured", v.index);
            }
        }
        let errors = self.t.stats().errors;
        // Every counter now against its value before this access.
        macro_rules! counters {
            ($($field:ident),* $(,)?) => {
                [$((stringify!($field), errors.$field, self.errors.$field)),*]
            };
        }
        let counters = counters!(
            csr_after_driver_ok,
            msi_not_offered,
            unknown_msi_op,
            vector_out_of_range,
            msi_address_rejected,
            msi_data_rejected,
            bad_access_width,
            bad_notify,
            bad_status,
            bad_queue_setup,
            bad_features,
            activate_failed,
            interrupt_setup_failed,
        );
        for (name, now, before) in counters {
            assert!(now >= before, "error counter {name} went down: {errors:?}");
        }
        self.errors = errors;
        if reset_written {
            assert_eq!(st, 0, "status after a reset");
            assert!(!self.irq.msi_active() && !self.irq.msi_enabled());
            assert!(self.irq.stats().iter().all(|v| !v.configured && !v.masked));
            if let Some(record) = &self.record {
                assert!(
                    !record.lock().unwrap().active,
                    "device still running after a reset"
                );
            }
            for q in 0..=u32::from(QUEUES) {
                self.w32(QUEUE_SEL, q);
                assert_eq!(self.r32(QUEUE_READY), 0, "queue {q} ready after a reset");
            }
            self.w32(QUEUE_SEL, 0);
        }
    }
}

/// What an x86 LAPIC takes as an ordinary device interrupt, written out here rather than
/// taken from the VMM's own check: the LAPIC window with no high half, fixed or lowest-priority
/// delivery (not SMI, NMI, INIT, SIPI, ExtINT), a vector that is not an exception.
fn ordinary_device_interrupt(address_lo: u32, address_hi: u32, data: u32) -> bool {
    let window = address_hi == 0 && address_lo >> 20 == 0xfee;
    let delivery = (data >> 8) & 7;
    window && delivery <= 1 && (data & 0xff) >= 16
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let mut rig = Rig::new(cfg & 1 != 0, cfg & 2 == 0);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let mut reset_written = false;
        match op & 7 {
            0 => {
                let off = u64::from(input.u16()) % WINDOW_SIZE;
                rig.read(off, 4);
            }
            1 => {
                let off = u64::from(input.u16()) % WINDOW_SIZE;
                let value = input.u32();
                rig.w32(off, value);
                reset_written = off == STATUS && value == 0;
            }
            2 => {
                let width = 1usize << ((op >> 3) & 3);
                let off = u64::from(input.u16()) % WINDOW_SIZE;
                let value = input.u64();
                if op & 0x20 != 0 {
                    rig.write(off, width, value);
                    reset_written = off == STATUS && width == 4 && value as u32 == 0;
                } else {
                    rig.read(off, width);
                }
            }
            3 => {
                let which = op >> 3;
                rig.driver_macro(which, &mut input);
            }
            4 => rig.device_event(input.u8()),
            5 => {
                let off = if op & 8 == 0 { MSI_CSR } else { MSI_CMD };
                rig.w16(off, input.u16());
            }
            6 => {
                let value = u32::from(input.u8());
                rig.w32(STATUS, value);
                reset_written = value == 0;
            }
            _ => {
                let value = input.u32();
                if op & 8 == 0 {
                    rig.w32(QUEUE_NOTIFY, value);
                } else {
                    rig.w32(DOORBELLS + 4 * u64::from(value % 1024), 0);
                }
            }
        }
        rig.check(reset_written);
    }
});
