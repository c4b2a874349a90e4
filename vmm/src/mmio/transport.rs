//! One virtio-mmio device window: the standard registers, the MSI extension's registers, the
//! doorbells, and the driver state machine from reset to DRIVER_OK.
//!
//! Bad guest input never stops the VMM: each rule of the extension's (Pulse) section is counted
//! in [`TransportErrors`], and some set DEVICE_NEEDS_RESET.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use serde::Serialize;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::registers::*;
use crate::bus::BusDevice;
use crate::devices::virtio::{
    features, status, ActivateError, Activation, ActiveQueue, VirtioDevice,
};
use crate::devices::worker::{FaultCounts, FaultLog, GuestFault};
use crate::interrupts::{
    DeviceInterrupts, InterruptError, MsiMessage, MsiRejection, VectorStats, VectorUpdate,
};
use crate::memory::GuestMemoryMmap;

/// Counters of guest mistakes, per device.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TransportErrors {
    /// MSI_CSR written after DRIVER_OK.
    pub csr_after_driver_ok: u64,
    /// MSI registers written on a device that does not offer MSI.
    pub msi_not_offered: u64,
    /// MSI_CMD with an unknown operation.
    pub unknown_msi_op: u64,
    /// MSI_CMD naming a vector the device does not have.
    pub vector_out_of_range: u64,
    /// UPDATE with an address outside the x86 interrupt window (or a high half).
    pub msi_address_rejected: u64,
    /// UPDATE with data the VMM never routes: a delivery mode other than fixed or lowest
    /// priority (NMI, SMI, INIT, ExtINT), or a vector below 16.
    pub msi_data_rejected: u64,
    /// A register accessed with the wrong width.
    pub bad_access_width: u64,
    /// A notification for a queue the device does not have.
    pub bad_notify: u64,
    /// A status write that clears bits, skips a step, or sets bits that are not the driver's.
    pub bad_status: u64,
    /// Queue setup written after DRIVER_OK, or for a queue that does not exist.
    pub bad_queue_setup: u64,
    /// FEATURES_OK refused: features the device did not offer, or no VERSION_1.
    pub bad_features: u64,
    /// The device could not start at DRIVER_OK.
    pub activate_failed: u64,
    /// KVM refused a route or irqfd change.
    pub interrupt_setup_failed: u64,
}

/// A device as reports show it.
#[derive(Clone, Debug, Serialize)]
pub struct TransportStats {
    /// Device type name.
    #[serde(rename = "type")]
    pub device_type: &'static str,
    /// The device among the VM's devices of its type (a disk's serial, a network card's
    /// tap, a virtio-fs tag; `vsock0`, `hvc0`): what an embedder matches these stats by.
    pub id: String,
    /// Window base address.
    pub base: u64,
    /// Queues the device has.
    pub queues: u16,
    /// The guest enabled MSI and the routes are live.
    pub msi_enabled: bool,
    /// Legacy line.
    pub legacy_gsi: u32,
    /// Interrupts raised on the legacy line.
    pub legacy_sent: u64,
    /// MSI vectors.
    pub vectors: Vec<VectorStats>,
    /// Requests completed per queue.
    pub requests_completed: Vec<u64>,
    /// Guest mistakes the transport counted.
    pub errors: TransportErrors,
    /// Guest mistakes the device model counted (its queues and chains).
    pub faults: FaultCounts,
    /// The device status register.
    pub status: u32,
    /// Each ready queue's ring indices as guest memory holds them now (diagnostics: a ring
    /// whose avail index runs ahead of its used index for long is stalled).
    pub rings: Vec<RingSnapshot>,
}

/// One queue's split-ring indices and flags, read from guest memory.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RingSnapshot {
    /// Queue index.
    pub queue: u16,
    /// Queue size.
    pub size: u16,
    /// avail.idx: chains the driver has published.
    pub avail_idx: u16,
    /// avail.flags (bit 0: the driver wants no interrupts).
    pub avail_flags: u16,
    /// used_event (EVENT_IDX): interrupt once used.idx passes it.
    pub used_event: u16,
    /// used.idx: chains the device has returned.
    pub used_idx: u16,
    /// used.flags (bit 0: the device wants no doorbells).
    pub used_flags: u16,
    /// avail_event (EVENT_IDX): doorbell once avail.idx passes it.
    pub avail_event: u16,
}

/// A virtio-mmio device window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupts: Arc<DeviceInterrupts>,
    base: u64,
    queues: Vec<Queue>,
    notifiers: Vec<EventFd>,
    status: u32,
    needs_reset: bool,
    /// FEATURES_OK was refused: neither it nor DRIVER_OK can be set until a reset.
    features_refused: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    msi_address_lo: u32,
    msi_address_hi: u32,
    msi_data: u32,
    /// The MSI extension is offered (VendorID's MSI bit, MSI_CSR bit 15).
    msi_offered: bool,
    errors: TransportErrors,
    /// Guest mistakes worth a log line, rate limited (the driver decides how often it makes
    /// them): a device that cannot start with the driver's setup.
    faults: FaultLog,
}

/// Transport setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A queue size the virtio-queue crate refuses.
    #[error("device queue {index} has an invalid maximum size {size}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// Size.
        size: u16,
    },
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// KVM refused an ioeventfd.
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {source}")]
    IoEventFd {
        /// Address.
        addr: u64,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Interrupt resources could not be reserved.
    #[error(transparent)]
    Interrupts(#[from] InterruptError),
}

impl MmioTransport {
    /// Puts `device` in the window at `base`, with the interrupt resources `interrupts`
    /// (reserved for this device's queue count), and registers its doorbells with KVM: a
    /// zero-length ioeventfd per queue at base + 0x1000 + 4*q, and one on QueueNotify matched on
    /// the queue index, both signalling the queue's eventfd.
    pub fn new(
        vm: &VmFd,
        base: u64,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupts: Arc<DeviceInterrupts>,
    ) -> Result<Self, TransportError> {
        let sizes = device.queue_max_sizes();
        let mut queues = Vec::with_capacity(sizes.len());
        let mut notifiers = Vec::with_capacity(sizes.len());
        for (index, &size) in sizes.iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| TransportError::QueueSize { index, size })?);
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?;
            let doorbell = base + DOORBELLS + 4 * index as u64;
            vm.register_ioevent(&evt, &IoEventAddress::Mmio(doorbell), NoDatamatch)
                .map_err(|source| TransportError::IoEventFd {
                    addr: doorbell,
                    source,
                })?;
            let notify = base + QUEUE_NOTIFY;
            // The value the driver writes to QueueNotify: the queue's index.
            let datamatch =
                u32::try_from(index).map_err(|_| TransportError::QueueSize { index, size })?;
            vm.register_ioevent(&evt, &IoEventAddress::Mmio(notify), datamatch)
                .map_err(|source| TransportError::IoEventFd {
                    addr: notify,
                    source,
                })?;
            notifiers.push(evt);
        }
        let faults = FaultLog::new(device.name());
        Ok(Self {
            device,
            faults,
            mem,
            interrupts,
            base,
            queues,
            notifiers,
            status: 0,
            needs_reset: false,
            features_refused: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            msi_address_lo: 0,
            msi_address_hi: 0,
            msi_data: 0,
            msi_offered: true,
            errors: TransportErrors::default(),
        })
    }

    /// Offers per-queue MSI or not. Without it the device looks like a plain virtio-mmio
    /// device with the legacy line (doorbells stay), and the MSI registers do nothing.
    pub fn set_msi_offered(&mut self, offered: bool) {
        self.msi_offered = offered;
    }

    fn device_features(&self) -> u64 {
        // These two bits would collide with the extension's registers (see the protocol).
        self.device.features() & !(features::RING_RESET | features::NOTIF_CONFIG_DATA)
    }

    fn vendor_id(&self) -> u32 {
        if self.msi_offered {
            VENDOR_SIGNATURE | VENDOR_F_MSI | VENDOR_F_PER_QUEUE_NOTIFY | VENDOR_F_MSI_VECTOR_COUNT
        } else {
            VENDOR_SIGNATURE | VENDOR_F_PER_QUEUE_NOTIFY
        }
    }

    fn msi_csr(&self) -> u16 {
        if !self.msi_offered {
            return 0;
        }
        let mut csr = MSI_CSR_ENABLE | (self.interrupts.vector_count() & MSI_CSR_VECTORS_MASK);
        if self.interrupts.msi_enabled() {
            csr |= MSI_CSR_ACTIVE;
        }
        csr
    }

    fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_needs_reset(&mut self) {
        self.needs_reset = true;
    }

    /// Report view.
    pub fn stats(&self) -> TransportStats {
        TransportStats {
            device_type: self.device.name(),
            id: self.device.id(),
            base: self.base,
            queues: u16::try_from(self.queues.len()).unwrap_or(u16::MAX),
            msi_enabled: self.interrupts.msi_active(),
            legacy_gsi: self.interrupts.legacy_gsi(),
            legacy_sent: self.interrupts.legacy_sent(),
            vectors: self.interrupts.stats(),
            requests_completed: self.device.completed_requests(),
            errors: self.errors.clone(),
            faults: self.device.guest_faults().merged(&self.faults.counts()),
            status: self.read_status(),
            rings: self.ring_snapshots(),
        }
    }

    fn ring_snapshots(&self) -> Vec<RingSnapshot> {
        let read = |addr: u64| -> u16 {
            self.mem
                .read_obj::<u16>(vm_memory::GuestAddress(addr))
                .unwrap_or(u16::MAX)
        };
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready())
            .map(|(index, q)| {
                let size = q.size();
                let (avail, used) = (q.avail_ring(), q.used_ring());
                RingSnapshot {
                    queue: u16::try_from(index).unwrap_or(u16::MAX),
                    size,
                    avail_flags: read(avail),
                    avail_idx: read(avail.wrapping_add(2)),
                    used_event: read(avail.wrapping_add(4 + 2 * u64::from(size))),
                    used_flags: read(used),
                    used_idx: read(used.wrapping_add(2)),
                    avail_event: read(used.wrapping_add(4 + 8 * u64::from(size))),
                }
            })
            .collect()
    }

    fn read_status(&self) -> u32 {
        // The device model raises its own need (a queue the driver broke) through its
        // interrupt resources, from its worker threads.
        let needs_reset = self.needs_reset || self.interrupts.device_needs_reset();
        self.status
            | if needs_reset {
                status::DEVICE_NEEDS_RESET
            } else {
                0
            }
    }

    fn read_u32(&self, offset: u64) -> u32 {
        match offset {
            MAGIC => MAGIC_VALUE,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => self.vendor_id(),
            DEVICE_FEATURES => match self.device_features_sel {
                0 => (self.device_features() & 0xffff_ffff) as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            QUEUE_NOTIFY => NOTIFY_INFO,
            INTERRUPT_STATUS => self.interrupts.interrupt_status(),
            STATUS => self.read_status(),
            CONFIG_GENERATION => self
                .config_generation
                .wrapping_add(self.device.config_generation()),
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 || self.status & status::DRIVER == 0 {
                    self.errors.bad_features += 1;
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_AVAIL_LOW
            | QUEUE_AVAIL_HIGH | QUEUE_USED_LOW | QUEUE_USED_HIGH => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY => self.notify(value),
            INTERRUPT_ACK => self.interrupts.ack(value),
            STATUS => self.write_status(value),
            MSI_ADDRESS_LOW => self.msi_address_lo = value,
            MSI_ADDRESS_HIGH => self.msi_address_hi = value,
            MSI_DATA => self.msi_data = value,
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.driver_ok() || self.status & status::FEATURES_OK == 0 {
            self.errors.bad_queue_setup += 1;
            return;
        }
        let Some(queue) = self.selected_queue() else {
            self.errors.bad_queue_setup += 1;
            return;
        };
        // The `try_` setters: the plain ones log an ERROR line for every refused value, which
        // a guest could repeat without end. A refused value is counted instead.
        let accepted = match offset {
            QUEUE_NUM => u16::try_from(value).is_ok_and(|size| queue.try_set_size(size).is_ok()),
            QUEUE_READY => {
                queue.set_ready(value == 1);
                true
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => {
                let addr = with_half(queue.desc_table(), offset == QUEUE_DESC_HIGH, value);
                queue.try_set_desc_table_address(addr).is_ok()
            }
            QUEUE_AVAIL_LOW | QUEUE_AVAIL_HIGH => {
                let addr = with_half(queue.avail_ring(), offset == QUEUE_AVAIL_HIGH, value);
                queue.try_set_avail_ring_address(addr).is_ok()
            }
            QUEUE_USED_LOW | QUEUE_USED_HIGH => {
                let addr = with_half(queue.used_ring(), offset == QUEUE_USED_HIGH, value);
                queue.try_set_used_ring_address(addr).is_ok()
            }
            _ => true,
        };
        if !accepted {
            self.errors.bad_queue_setup += 1;
        }
    }

    /// A notification that reached userspace (the ioeventfds take the normal ones).
    fn notify(&mut self, queue: u32) {
        match self.notifiers.get(queue as usize) {
            Some(evt) => {
                let _ = evt.write(1);
            }
            None => self.errors.bad_notify += 1,
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver only ever adds bits (or writes 0 to reset); FAILED may come at any time.
        if value & old != old {
            self.errors.bad_status += 1;
            return;
        }
        if value & !DRIVER_STATUS_BITS != 0 {
            // Bits that are not the driver's to set (DEVICE_NEEDS_RESET, reserved ones): the
            // write is refused as a whole, so they never read back.
            self.errors.bad_status += 1;
            return;
        }
        let added = value & !old;
        if added & status::FAILED != 0 {
            // The driver gave up: nothing else it added in the same write takes effect.
            self.status = old | status::FAILED;
            return;
        }
        if self.features_refused && added & (status::FEATURES_OK | status::DRIVER_OK) != 0 {
            // Refused features stay refused until a reset.
            self.errors.bad_status += 1;
            return;
        }
        if added & status::FEATURES_OK != 0 {
            let offered = self.device_features();
            if self.driver_features & !offered != 0
                || self.driver_features & features::VERSION_1 == 0
            {
                // Leaving FEATURES_OK clear tells the driver the features were refused; a
                // DRIVER_OK in the same write is refused with it.
                self.errors.bad_features += 1;
                self.features_refused = true;
                self.status = value & !(status::FEATURES_OK | status::DRIVER_OK);
                return;
            }
        }
        if added & status::DRIVER_OK != 0 {
            if old & status::FEATURES_OK == 0 {
                self.errors.bad_status += 1;
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            if !rings_fit(queue, &self.mem) {
                // The rings do not fit in guest memory, or are misaligned.
                self.errors.bad_queue_setup += 1;
                self.needs_reset = true;
                return;
            }
            queue.set_event_idx(event_idx);
            let notifier = match self.notifiers[index].try_clone() {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("cannot clone a queue notifier: {e}");
                    self.errors.activate_failed += 1;
                    self.needs_reset = true;
                    return;
                }
            };
            // The device works on its own copy; the transport keeps the driver's setup until reset.
            let Ok(copy) = Queue::try_from(queue.state()) else {
                self.errors.bad_queue_setup += 1;
                self.needs_reset = true;
                return;
            };
            // The device's queues number at most a u16 (their MSI vectors are counted in one).
            let Ok(index) = u16::try_from(index) else {
                self.errors.bad_queue_setup += 1;
                self.needs_reset = true;
                return;
            };
            active.push(ActiveQueue {
                index,
                queue: copy,
                notifier,
            });
        }
        if let Err(e) = self.interrupts.activate() {
            tracing::error!(base = self.base, "MSI activation failed: {e}");
            self.errors.interrupt_setup_failed += 1;
            self.needs_reset = true;
            return;
        }
        let interrupt = self.interrupts.clone();
        let activation = Activation::new(self.mem.clone(), self.driver_features, active, interrupt);
        match self.device.activate(activation) {
            Ok(()) => {}
            // The driver's doing, as often as it likes: counted, logged at most at the fault
            // log's rate.
            Err(e @ ActivateError::QueueNotReady(_)) => {
                self.faults.record(
                    GuestFault::IncompleteSetup,
                    &format_args!("device at {:#x} cannot start: {e}", self.base),
                );
                self.errors.activate_failed += 1;
                self.needs_reset = true;
            }
            Err(e) => {
                tracing::error!(base = self.base, "device activation failed: {e}");
                self.errors.activate_failed += 1;
                self.needs_reset = true;
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        if let Err(e) = self.interrupts.reset() {
            tracing::error!(base = self.base, "interrupt reset failed: {e}");
            self.errors.interrupt_setup_failed += 1;
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        for evt in &self.notifiers {
            // Forget notifications the stopped workers did not consume.
            let _ = evt.read();
        }
        self.status = 0;
        self.needs_reset = false;
        self.features_refused = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.msi_address_lo = 0;
        self.msi_address_hi = 0;
        self.msi_data = 0;
    }

    fn write_msi_csr(&mut self, value: u16) {
        if !self.msi_offered {
            self.errors.msi_not_offered += 1;
            return;
        }
        if self.driver_ok() {
            self.errors.csr_after_driver_ok += 1;
            self.set_needs_reset();
            return;
        }
        self.interrupts.set_msi_enabled(value & MSI_CSR_ENABLE != 0);
    }

    fn write_msi_cmd(&mut self, value: u16) {
        if !self.msi_offered {
            self.errors.msi_not_offered += 1;
            return;
        }
        let op = value >> 12;
        let vector = value & 0x0fff;
        if !matches!(op, MSI_CMD_UPDATE | MSI_CMD_MASK | MSI_CMD_UNMASK) {
            self.errors.unknown_msi_op += 1;
            self.set_needs_reset();
            return;
        }
        if vector >= self.interrupts.vector_count() {
            self.errors.vector_out_of_range += 1;
            self.set_needs_reset();
            return;
        }
        let result = match op {
            MSI_CMD_UPDATE => {
                let msg = MsiMessage {
                    address_lo: self.msi_address_lo,
                    address_hi: self.msi_address_hi,
                    data: self.msi_data,
                };
                self.interrupts
                    .update_vector(vector, msg)
                    .map(|update| match update {
                        VectorUpdate::Refused(MsiRejection::Address) => {
                            self.errors.msi_address_rejected += 1
                        }
                        VectorUpdate::Refused(_) => self.errors.msi_data_rejected += 1,
                        VectorUpdate::Stored | VectorUpdate::NoSuchVector => {}
                    })
            }
            MSI_CMD_MASK => self.interrupts.mask(vector).map(drop),
            _ => self.interrupts.unmask(vector).map(drop),
        };
        if let Err(e) = result {
            tracing::error!(base = self.base, "MSI command failed: {e}");
            self.errors.interrupt_setup_failed += 1;
        }
    }
}

/// The status bits a driver may write (virtio 1.x, 2.1); DEVICE_NEEDS_RESET is the device's.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// `current` with its low (or high) 32 bits replaced by `value`.
fn with_half(current: u64, high: bool, value: u32) -> vm_memory::GuestAddress {
    let value = u64::from(value);
    vm_memory::GuestAddress(if high {
        (current & 0xffff_ffff) | (value << 32)
    } else {
        (current & !0xffff_ffff) | value
    })
}

/// Whether the rings of a ready queue lie in guest memory: `Queue::is_valid` without its
/// ERROR line per refusal (the driver decides how often it asks).
fn rings_fit(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let size = u64::from(queue.size());
    let fits = |addr: u64, len: u64| {
        usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
    };
    // Descriptor table: 16 bytes each; available ring: flags, idx, ring, used_event; used
    // ring: flags, idx, 8 bytes each, avail_event.
    queue.ready()
        && fits(queue.desc_table(), 16 * size)
        && fits(queue.avail_ring(), 6 + 2 * size)
        && fits(queue.used_ring(), 6 + 8 * size)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            CONFIG_SPACE..CONFIG_SPACE_END => {
                self.device.read_config(offset - CONFIG_SPACE, data);
            }
            MSI_CSR => match data.len() {
                2 => data.copy_from_slice(&self.msi_csr().to_le_bytes()),
                _ => {
                    self.errors.bad_access_width += 1;
                    data.fill(0);
                }
            },
            _ if offset < CONFIG_SPACE && data.len() == 4 => {
                data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
            }
            _ => {
                self.errors.bad_access_width += 1;
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            CONFIG_SPACE..CONFIG_SPACE_END => {
                self.device.write_config(offset - CONFIG_SPACE, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            MSI_CSR | MSI_CMD => match <[u8; 2]>::try_from(data) {
                Ok(bytes) => {
                    let value = u16::from_le_bytes(bytes);
                    if offset == MSI_CSR {
                        self.write_msi_csr(value);
                    } else {
                        self.write_msi_cmd(value);
                    }
                }
                Err(_) => self.errors.bad_access_width += 1,
            },
            DOORBELLS..WINDOW_SIZE => {
                // Normally handled by KVM; reached only without the ioeventfd.
                if let Ok(queue) = u32::try_from((offset - DOORBELLS) / 4) {
                    self.notify(queue);
                }
            }
            _ if offset < CONFIG_SPACE => match <[u8; 4]>::try_from(data) {
                Ok(bytes) => self.write_u32(offset, u32::from_le_bytes(bytes)),
                Err(_) => self.errors.bad_access_width += 1,
            },
            _ => self.errors.bad_access_width += 1,
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.device.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{device_type, read_config_bytes, ActivateError};
    use crate::interrupts::{Interrupt, InterruptManager};
    use std::sync::Mutex;

    /// Negotiated features and queue indexes of each activation.
    type Activations = Arc<Mutex<Vec<(u64, Vec<u16>)>>>;

    /// A device with two queues that records its activations.
    struct Dummy {
        config: [u8; 8],
        /// Fewer ready queues fail the activation, as vsock, net and console do.
        needs_queues: usize,
        activations: Activations,
        interrupt: Arc<Mutex<Option<Arc<dyn Interrupt>>>>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            device_type::BLOCK
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn features(&self) -> u64 {
            features::VERSION_1 | features::RING_EVENT_IDX | features::RING_RESET
        }
        fn name(&self) -> &'static str {
            "dummy"
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            if let Some(b) = self.config.get_mut(usize::try_from(offset).unwrap()) {
                *b = data[0];
            }
        }
        fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
            let ready = activation.queues.len();
            if ready < self.needs_queues {
                return Err(ActivateError::QueueNotReady(ready));
            }
            let indexes = activation.queues.iter().map(|q| q.index).collect();
            self.activations
                .lock()
                .unwrap()
                .push((activation.features, indexes));
            *self.interrupt.lock().unwrap() = Some(activation.interrupt);
            Ok(())
        }
        fn reset(&mut self) {
            *self.interrupt.lock().unwrap() = None;
        }
    }

    struct Rig {
        t: MmioTransport,
        irq: Arc<DeviceInterrupts>,
        activations: Activations,
        device_irq: Arc<Mutex<Option<Arc<dyn Interrupt>>>>,
        _vm: Arc<VmFd>,
    }

    const BASE: u64 = 0xd000_0000;

    fn rig() -> Rig {
        rig_with(0)
    }

    /// A rig whose device needs `needs_queues` ready queues to start.
    fn rig_with(needs_queues: usize) -> Rig {
        let kvm = crate::kvm::open_kvm().unwrap();
        let vm = Arc::new(crate::kvm::create_vm(&kvm, 1).unwrap());
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let manager = InterruptManager::new(vm.clone()).unwrap();
        let irq = DeviceInterrupts::new(manager, 5, 2).unwrap();
        let activations = Arc::new(Mutex::new(Vec::new()));
        let device_irq = Arc::new(Mutex::new(None));
        let dummy = Dummy {
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            needs_queues,
            activations: activations.clone(),
            interrupt: device_irq.clone(),
        };
        let t = MmioTransport::new(&vm, BASE, Box::new(dummy), mem, irq.clone()).unwrap();
        Rig {
            t,
            irq,
            activations,
            device_irq,
            _vm: vm,
        }
    }

    impl Rig {
        fn read<const N: usize>(&mut self, off: u64) -> [u8; N] {
            let mut b = [0u8; N];
            self.t.read(off, &mut b);
            b
        }
        fn r32(&mut self, off: u64) -> u32 {
            u32::from_le_bytes(self.read(off))
        }
        fn w32(&mut self, off: u64, v: u32) {
            self.t.write(off, &v.to_le_bytes());
        }
        fn r16(&mut self, off: u64) -> u16 {
            u16::from_le_bytes(self.read(off))
        }
        fn w16(&mut self, off: u64, v: u16) {
            self.t.write(off, &v.to_le_bytes());
        }
        /// The guest sequence up to (not including) DRIVER_OK, queues set up in low memory.
        fn negotiate(&mut self) {
            self.w32(STATUS, 0);
            self.w32(STATUS, status::ACKNOWLEDGE);
            self.w32(STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w32(DRIVER_FEATURES_SEL, 1);
            self.w32(DRIVER_FEATURES, 1); // VERSION_1
            self.w32(DRIVER_FEATURES_SEL, 0);
            self.w32(DRIVER_FEATURES, 1 << 29); // EVENT_IDX
            self.w32(
                STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            for q in 0..2u32 {
                let base = 0x10_0000 + q * 0x1000;
                self.w32(QUEUE_SEL, q);
                self.w32(QUEUE_NUM, 16);
                self.w32(QUEUE_DESC_LOW, base);
                self.w32(QUEUE_DESC_HIGH, 0);
                self.w32(QUEUE_AVAIL_LOW, base + 0x200);
                self.w32(QUEUE_AVAIL_HIGH, 0);
                self.w32(QUEUE_USED_LOW, base + 0x400);
                self.w32(QUEUE_USED_HIGH, 0);
                self.w32(QUEUE_READY, 1);
            }
        }
        fn program(&mut self, vector: u16, address: u32) {
            self.w32(MSI_ADDRESS_LOW, address);
            self.w32(MSI_ADDRESS_HIGH, 0);
            self.w32(MSI_DATA, 0x40 + u32::from(vector));
            self.w16(MSI_CMD, (MSI_CMD_UPDATE << 12) | vector);
        }
        fn driver_ok(&mut self) {
            self.w32(
                STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            );
        }
        /// The whole guest sequence with MSI: vector 1 (queue 0's) programmed, DRIVER_OK.
        fn start_with_msi(&mut self) {
            self.negotiate();
            self.w16(MSI_CSR, MSI_CSR_ENABLE);
            self.program(1, 0xfee0_0000);
            self.driver_ok();
        }
        fn needs_reset(&mut self) -> bool {
            self.r32(STATUS) & status::DEVICE_NEEDS_RESET != 0
        }
        fn errors(&self) -> TransportErrors {
            self.t.stats().errors
        }
        fn device_interrupt(&self) -> Arc<dyn Interrupt> {
            self.device_irq
                .lock()
                .unwrap()
                .clone()
                .expect("device active")
        }
    }

    #[test]
    fn identifies_as_a_virtio_1_device_with_the_extension() {
        let mut r = rig();
        assert_eq!(r.r32(MAGIC), MAGIC_VALUE);
        assert_eq!(r.r32(VERSION_REG), 2);
        assert_eq!(r.r32(DEVICE_ID), device_type::BLOCK);
        let vendor = r.r32(VENDOR_ID);
        assert_eq!(vendor >> 8, 0xdb_fcdb);
        assert_eq!(vendor & 0xff, 0x02 | 0x04 | 0x10);
        assert_eq!(r.r32(QUEUE_NOTIFY), 0x0004_1000);
        // MSI offered, not enabled, 3 vectors.
        assert_eq!(r.r16(MSI_CSR), 0x8000 | 3);
        // RING_RESET (bit 40) is never offered.
        r.w32(DEVICE_FEATURES_SEL, 1);
        assert_eq!(r.r32(DEVICE_FEATURES) & (1 << 8), 0);
        assert_eq!(r.r32(DEVICE_FEATURES) & 1, 1);
        r.w32(QUEUE_SEL, 1);
        assert_eq!(r.r32(QUEUE_NUM_MAX), 16);
        r.w32(QUEUE_SEL, 2);
        assert_eq!(r.r32(QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 2];
        r.t.read(CONFIG_SPACE + 2, &mut b);
        assert_eq!(b, [3, 4]);
    }

    #[test]
    fn msi_guest_sequence_activates_routes_and_queues() {
        let mut r = rig();
        r.negotiate();
        r.w16(MSI_CSR, MSI_CSR_ENABLE);
        for v in 0..3 {
            r.program(v, 0xfee0_0000);
        }
        assert_eq!(r.r16(MSI_CSR) & MSI_CSR_ACTIVE, MSI_CSR_ACTIVE);
        r.driver_ok();
        assert!(r.irq.msi_active());
        let acts = r.activations.lock().unwrap().clone();
        assert_eq!(acts.len(), 1);
        assert_eq!(acts[0].1, vec![0, 1]);
        assert_ne!(acts[0].0 & features::RING_EVENT_IDX, 0);
        // A queue interrupt goes to its vector; InterruptStatus stays 0.
        r.device_interrupt().trigger(1);
        assert_eq!(r.irq.stats()[2].sent, 1);
        assert_eq!(r.r32(INTERRUPT_STATUS), 0);
        assert!(r.t.stats().msi_enabled);
    }

    #[test]
    fn update_works_before_and_after_the_csr_enable() {
        let mut r = rig();
        r.negotiate();
        r.program(0, 0xfee0_0000);
        r.w16(MSI_CSR, MSI_CSR_ENABLE);
        r.program(1, 0xfee0_1000);
        r.driver_ok();
        assert!(r.irq.vector_configured(0) && r.irq.vector_configured(1));
        assert!(!r.irq.vector_configured(2));
    }

    #[test]
    fn without_msi_offered_the_device_is_plain_virtio_mmio() {
        let mut r = rig();
        r.t.set_msi_offered(false);
        assert_eq!(r.r32(VENDOR_ID) & VENDOR_F_MSI, 0);
        assert_eq!(r.r16(MSI_CSR), 0);
        r.w16(MSI_CSR, MSI_CSR_ENABLE);
        r.w16(MSI_CMD, 0x1000);
        assert_eq!(r.r16(MSI_CSR), 0, "the enable does nothing");
        assert_eq!(r.t.stats().errors.msi_not_offered, 2);
        assert!(!r.t.stats().msi_enabled);
    }

    #[test]
    fn legacy_mode_uses_interrupt_status() {
        let mut r = rig();
        r.negotiate();
        r.driver_ok();
        assert!(!r.irq.msi_active());
        r.device_interrupt().trigger(0);
        assert_eq!(r.r32(INTERRUPT_STATUS), 1);
        r.w32(INTERRUPT_ACK, 1);
        assert_eq!(r.r32(INTERRUPT_STATUS), 0);
        assert_eq!(r.irq.legacy_sent(), 1);
    }

    #[test]
    fn csr_after_driver_ok_is_ignored_and_needs_reset() {
        let mut r = rig();
        r.negotiate();
        r.driver_ok();
        r.w16(MSI_CSR, MSI_CSR_ENABLE);
        assert!(!r.irq.msi_enabled());
        assert!(r.needs_reset());
        assert_eq!(r.errors().csr_after_driver_ok, 1);
    }

    #[test]
    fn unknown_op_and_vector_out_of_range_need_reset() {
        let mut r = rig();
        r.negotiate();
        r.w16(MSI_CMD, (7 << 12) | 1);
        assert!(r.needs_reset());
        assert_eq!(r.errors().unknown_msi_op, 1);
        r.w32(STATUS, 0);
        assert!(!r.needs_reset(), "reset clears DEVICE_NEEDS_RESET");
        r.negotiate();
        r.program(3, 0xfee0_0000);
        r.w16(MSI_CMD, (MSI_CMD_MASK << 12) | 0xfff);
        assert!(r.needs_reset());
        assert_eq!(r.errors().vector_out_of_range, 2);
        assert!(!r.irq.vector_configured(2));
    }

    #[test]
    fn addresses_outside_the_interrupt_window_are_rejected() {
        let mut r = rig();
        r.negotiate();
        r.w16(MSI_CSR, MSI_CSR_ENABLE);
        r.program(1, 0xfec0_0000);
        r.w32(MSI_ADDRESS_LOW, 0xfee0_0000);
        r.w32(MSI_ADDRESS_HIGH, 1);
        r.w16(MSI_CMD, (MSI_CMD_UPDATE << 12) | 2);
        assert!(!r.irq.vector_configured(1) && !r.irq.vector_configured(2));
        assert_eq!(r.errors().msi_address_rejected, 2);
        assert!(!r.needs_reset());
    }

    #[test]
    fn wrong_widths_are_ignored() {
        let mut r = rig();
        r.negotiate();
        r.t.write(MSI_CSR, &[0x00, 0x80, 0, 0]); // 32-bit write to a 16-bit register
        r.t.write(STATUS, &[0]); // 8-bit write to a 32-bit register
        r.t.write(MSI_CMD, &[1]);
        let mut b = [0u8; 1];
        r.t.read(MAGIC, &mut b);
        assert_eq!(b, [0]);
        assert!(!r.irq.msi_enabled());
        assert_ne!(r.r32(STATUS), 0, "the narrow status write did not reset");
        assert_eq!(r.errors().bad_access_width, 4);
    }

    #[test]
    fn interrupt_for_an_unconfigured_vector_is_dropped() {
        let mut r = rig();
        r.start_with_msi();
        let irq = r.device_interrupt();
        irq.trigger(1); // vector 2: never programmed
        irq.trigger_config(); // vector 0: never programmed
        let stats = r.irq.stats();
        assert_eq!((stats[2].sent, stats[2].dropped), (0, 1));
        assert_eq!((stats[0].sent, stats[0].dropped), (0, 1));
        assert_eq!(
            r.irq.legacy_sent(),
            0,
            "no fallback to the legacy line either"
        );
    }

    #[test]
    fn mask_interrupt_unmask() {
        let mut r = rig();
        r.start_with_msi();
        r.w16(MSI_CMD, (MSI_CMD_MASK << 12) | 1);
        r.device_interrupt().trigger(0);
        assert_eq!(r.irq.stats()[1].sent, 1);
        r.w16(MSI_CMD, (MSI_CMD_UNMASK << 12) | 1);
        assert_eq!(r.errors(), TransportErrors::default());
    }

    #[test]
    fn reset_in_every_state() {
        // Reset after each step of the guest sequence leaves a clean device that can be driven
        // through the whole sequence again.
        for step in 0..6 {
            let mut r = rig();
            r.negotiate();
            if step >= 1 {
                r.w16(MSI_CSR, MSI_CSR_ENABLE);
            }
            if step >= 2 {
                r.program(0, 0xfee0_0000);
                r.program(1, 0xfee0_0000);
            }
            if step >= 3 {
                r.driver_ok();
            }
            if step >= 4 {
                r.w16(MSI_CMD, (MSI_CMD_MASK << 12) | 1);
                r.device_interrupt().trigger(0);
            }
            if step >= 5 {
                r.w16(MSI_CSR, 0); // after DRIVER_OK: needs reset
            }
            r.w32(STATUS, 0);
            assert_eq!(r.r32(STATUS), 0, "step {step}");
            assert_eq!(r.r16(MSI_CSR) & MSI_CSR_ACTIVE, 0, "step {step}");
            assert!(!r.irq.msi_active());
            assert!(r.irq.stats().iter().all(|v| !v.configured));
            assert!(r.device_irq.lock().unwrap().is_none(), "device stopped");
            r.w32(QUEUE_SEL, 0);
            assert_eq!(r.r32(QUEUE_READY), 0);
            // And it works again.
            r.start_with_msi();
            assert!(r.irq.msi_active(), "step {step}");
        }
    }

    #[test]
    fn bad_status_and_feature_sequences() {
        let mut r = rig();
        r.w32(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        r.w32(DRIVER_FEATURES_SEL, 0);
        r.w32(DRIVER_FEATURES, 1 << 3); // not offered
        r.w32(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r.r32(STATUS) & status::FEATURES_OK, 0, "features refused");
        // DRIVER_OK without FEATURES_OK.
        r.w32(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert!(r.activations.lock().unwrap().is_empty());
        // Clearing a bit without a reset.
        r.w32(STATUS, status::ACKNOWLEDGE);
        assert_eq!(r.errors().bad_status, 2);
        assert_eq!(r.errors().bad_features, 1);
        // Notify of a queue that does not exist.
        r.w32(QUEUE_NOTIFY, 9);
        r.t.write(DOORBELLS + 4 * 7, &[0; 4]);
        assert_eq!(r.errors().bad_notify, 2);
    }

    #[test]
    fn a_failed_write_with_garbage_bits_does_not_read_back() {
        let mut r = rig();
        r.w32(STATUS, status::ACKNOWLEDGE);
        r.w32(STATUS, 0xffff_ffff);
        assert_eq!(r.r32(STATUS), status::ACKNOWLEDGE, "garbage refused");
        r.w32(
            STATUS,
            status::ACKNOWLEDGE | status::FAILED | status::DRIVER_OK,
        );
        assert_eq!(
            r.r32(STATUS),
            status::ACKNOWLEDGE | status::FAILED,
            "FAILED is taken, nothing else of that write"
        );
        assert!(r.activations.lock().unwrap().is_empty());
        assert_eq!(r.errors().bad_status, 1);
    }

    #[test]
    fn refused_features_never_show_driver_ok() {
        let mut r = rig();
        r.w32(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        r.w32(DRIVER_FEATURES, 1 << 3); // not offered, and no VERSION_1
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        r.w32(STATUS, all);
        assert_eq!(r.r32(STATUS), status::ACKNOWLEDGE | status::DRIVER);
        // Trying again without a reset does not help either.
        r.w32(STATUS, all);
        assert_eq!(r.r32(STATUS) & (status::FEATURES_OK | status::DRIVER_OK), 0);
        assert!(r.activations.lock().unwrap().is_empty());
        // A reset starts over.
        r.negotiate();
        r.driver_ok();
        assert_ne!(r.r32(STATUS) & status::DRIVER_OK, 0);
    }

    #[test]
    fn msi_data_for_nmi_smi_init_extint_or_low_vectors_is_refused_and_counted() {
        let mut r = rig();
        r.negotiate();
        r.w16(MSI_CSR, MSI_CSR_ENABLE);
        for data in [0x400 | 0x41, 0x200 | 0x41, 0x500, 0x700 | 0x41, 0x02] {
            r.w32(MSI_ADDRESS_LOW, 0xfee0_0000);
            r.w32(MSI_ADDRESS_HIGH, 0);
            r.w32(MSI_DATA, data);
            r.w16(MSI_CMD, (MSI_CMD_UPDATE << 12) | 1);
        }
        r.driver_ok();
        assert!(!r.irq.vector_configured(1));
        assert_eq!(r.errors().msi_data_rejected, 5);
        r.device_interrupt().trigger(0);
        assert_eq!(r.irq.stats()[1].sent, 0, "never injected");
    }

    #[test]
    fn update_on_a_masked_vector_keeps_it_masked() {
        let mut r = rig();
        r.start_with_msi();
        r.w16(MSI_CMD, (MSI_CMD_MASK << 12) | 1);
        r.program(1, 0xfee0_1000);
        // Still masked: an interrupt waits in the eventfd, which UNMASK would deliver.
        let before = r.irq.stats()[1].sent;
        r.device_interrupt().trigger(0);
        assert_eq!(r.irq.stats()[1].sent, before + 1);
        assert!(r.irq.vector_masked(1));
    }

    #[test]
    fn a_device_that_needs_a_reset_shows_it_until_the_reset() {
        let mut r = rig();
        r.negotiate();
        r.driver_ok();
        r.device_interrupt().needs_reset();
        assert!(r.needs_reset());
        assert_eq!(r.r32(INTERRUPT_STATUS) & 2, 2, "configuration interrupt");
        r.w32(STATUS, 0);
        assert!(!r.needs_reset());
    }

    #[test]
    fn refused_queue_setup_values_are_counted() {
        let mut r = rig();
        r.negotiate();
        r.w32(QUEUE_SEL, 0);
        r.w32(QUEUE_NUM, 3); // not a power of two
        r.w32(QUEUE_DESC_LOW, 0x10_0001); // misaligned
        assert_eq!(r.errors().bad_queue_setup, 2);
    }

    #[test]
    fn queue_setup_after_driver_ok_is_refused() {
        let mut r = rig();
        r.negotiate();
        r.driver_ok();
        r.w32(QUEUE_SEL, 0);
        r.w32(QUEUE_NUM, 8);
        assert_eq!(r.errors().bad_queue_setup, 1);
    }

    #[test]
    fn a_driver_that_starts_without_queues_in_a_loop_gets_no_line_per_try() {
        // Found by the hostile probe's reset storm: every DRIVER_OK without the queues a
        // device needs wrote an ERROR line, so a guest resetting in a loop filled the log.
        let mut r = rig_with(2);
        for _ in 0..1000 {
            r.w32(STATUS, 0);
            r.w32(STATUS, status::ACKNOWLEDGE | status::DRIVER);
            r.w32(DRIVER_FEATURES_SEL, 1);
            r.w32(DRIVER_FEATURES, 1);
            let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
            r.w32(STATUS, ok);
            r.w32(STATUS, ok | status::DRIVER_OK);
            assert!(r.needs_reset());
        }
        assert!(r.activations.lock().unwrap().is_empty());
        let stats = r.t.stats();
        assert_eq!(stats.errors.activate_failed, 1000);
        assert_eq!(stats.faults.incomplete_setup, 1000);
        assert_eq!(stats.faults.log_lines, 1, "the first one, then summaries");
    }

    #[test]
    fn rings_outside_memory_fail_activation_not_the_vmm() {
        let mut r = rig();
        r.negotiate();
        r.w32(QUEUE_SEL, 1);
        r.w32(QUEUE_DESC_LOW, 0xffff_0000); // far beyond 16 MiB
        r.driver_ok();
        assert!(r.needs_reset());
        assert!(r.activations.lock().unwrap().is_empty());
    }
}
