//! One device's interrupt resources, reserved when the device is created: its legacy IOAPIC line
//! and N+1 MSI vectors (vector 0 for configuration changes, vector q+1 for queue q), each with a
//! GSI and an eventfd. The transport drives the MSI state from guest register writes; devices
//! raise interrupts through the [`Interrupt`] trait.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, InterruptError, InterruptManager, MsiMessage, MsiRejection};

/// InterruptStatus bit: used buffers.
pub const INT_VRING: u32 = 0x1;
/// InterruptStatus bit: configuration change.
pub const INT_CONFIG: u32 = 0x2;

/// What a vector is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "role", content = "queue")]
pub enum VectorRole {
    /// Configuration change (vector 0).
    Config,
    /// Queue q (vector q+1).
    Queue(u16),
}

struct MsiVector {
    gsi: u32,
    evt: EventFd,
    message: Mutex<Option<MsiMessage>>,
    configured: AtomicBool,
    masked: AtomicBool,
    /// The irqfd is attached (MSI active and vector not masked).
    attached: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// Counters of one vector for reports.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VectorStats {
    /// Vector index (0 = config).
    pub index: u16,
    /// What it serves.
    #[serde(flatten)]
    pub role: VectorRole,
    /// Its GSI.
    pub gsi: u32,
    /// Interrupts the host raised on it.
    pub sent: u64,
    /// Interrupts dropped because the guest never configured the vector.
    pub dropped: u64,
    /// The guest programmed it.
    pub configured: bool,
    /// The guest masked it.
    pub masked: bool,
}

/// What became of an UPDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorUpdate {
    /// The message is stored (and routed, once the driver is ready and the vector unmasked).
    Stored,
    /// The message is refused and never routed; the vector keeps what it had.
    Refused(MsiRejection),
    /// The device has no such vector.
    NoSuchVector,
}

/// Interrupt resources and MSI state of one device.
pub struct DeviceInterrupts {
    manager: Arc<InterruptManager>,
    legacy_gsi: u32,
    legacy_evt: EventFd,
    legacy_sent: AtomicU64,
    status: AtomicU32,
    vectors: Vec<MsiVector>,
    msi_enabled: AtomicBool,
    /// MSI routes are live (MSI enabled and the driver reached DRIVER_OK).
    active: AtomicBool,
    /// Serialises the slow path (route and irqfd changes) against itself.
    control: Mutex<()>,
    /// The device model asked for a reset (a queue the driver broke).
    needs_reset: AtomicBool,
}

impl DeviceInterrupts {
    /// Reserves the resources of a device with `queues` queues and legacy line `legacy_gsi`, and
    /// attaches the legacy line's irqfd.
    pub fn new(
        manager: Arc<InterruptManager>,
        legacy_gsi: u32,
        queues: u16,
    ) -> Result<Arc<Self>, InterruptError> {
        let count = usize::from(queues) + 1;
        let first = manager.allocate_gsis(count)?;
        let mut vectors = Vec::with_capacity(count);
        for gsi in (first..).take(count) {
            vectors.push(MsiVector {
                gsi,
                evt: EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?,
                message: Mutex::new(None),
                configured: AtomicBool::new(false),
                masked: AtomicBool::new(false),
                attached: AtomicBool::new(false),
                sent: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            });
        }
        let legacy_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        manager.register_irqfd(&legacy_evt, legacy_gsi)?;
        Ok(Arc::new(Self {
            manager,
            legacy_gsi,
            legacy_evt,
            legacy_sent: AtomicU64::new(0),
            status: AtomicU32::new(0),
            vectors,
            msi_enabled: AtomicBool::new(false),
            active: AtomicBool::new(false),
            control: Mutex::new(()),
            needs_reset: AtomicBool::new(false),
        }))
    }

    /// Number of MSI vectors (queues + 1).
    pub fn vector_count(&self) -> u16 {
        // `queues` (a u16) + 1: saturates only for 65535 queues.
        u16::try_from(self.vectors.len()).unwrap_or(u16::MAX)
    }

    /// The legacy line's GSI.
    pub fn legacy_gsi(&self) -> u32 {
        self.legacy_gsi
    }

    /// Interrupts raised on the legacy line.
    pub fn legacy_sent(&self) -> u64 {
        self.legacy_sent.load(Ordering::Relaxed)
    }

    /// The guest enabled MSI.
    pub fn msi_enabled(&self) -> bool {
        self.msi_enabled.load(Ordering::SeqCst)
    }

    /// MSI routes are live.
    pub fn msi_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Enables or disables MSI (MSI_CSR bit 15). Only meaningful before DRIVER_OK.
    pub fn set_msi_enabled(&self, enabled: bool) {
        self.msi_enabled.store(enabled, Ordering::SeqCst);
    }

    /// Stores `msg` in `vector` (MSI_CMD UPDATE). A message [`MsiMessage::check_x86`] refuses
    /// is never stored nor routed; after DRIVER_OK the route is rewritten at once, and a masked
    /// vector stays masked (its irqfd is attached only by UNMASK).
    pub fn update_vector(
        &self,
        vector: u16,
        msg: MsiMessage,
    ) -> Result<VectorUpdate, InterruptError> {
        let Some(v) = self.vectors.get(usize::from(vector)) else {
            return Ok(VectorUpdate::NoSuchVector);
        };
        if let Err(why) = msg.check_x86() {
            return Ok(VectorUpdate::Refused(why));
        }
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        *v.message.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
        v.configured.store(true, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) {
            self.manager.set_msi_route(v.gsi, Some(msg))?;
            if !v.masked.load(Ordering::SeqCst) {
                self.attach(v)?;
            }
        }
        Ok(VectorUpdate::Stored)
    }

    /// Whether the device model asked for a reset since the last one.
    pub fn device_needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Masks `vector`: its irqfd is detached, so interrupts wait in the eventfd.
    pub fn mask(&self, vector: u16) -> Result<bool, InterruptError> {
        let Some(v) = self.vectors.get(usize::from(vector)) else {
            return Ok(false);
        };
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        v.masked.store(true, Ordering::SeqCst);
        self.detach(v)?;
        Ok(true)
    }

    /// Unmasks `vector`: re-attaching the irqfd delivers an interrupt raised while masked
    /// (KVM checks the eventfd on attach), exactly once.
    pub fn unmask(&self, vector: u16) -> Result<bool, InterruptError> {
        let Some(v) = self.vectors.get(usize::from(vector)) else {
            return Ok(false);
        };
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        v.masked.store(false, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) && v.configured.load(Ordering::SeqCst) {
            self.attach(v)?;
        }
        Ok(true)
    }

    /// DRIVER_OK: with MSI enabled, every configured vector gets its route and irqfd.
    pub fn activate(&self) -> Result<(), InterruptError> {
        if !self.msi_enabled() {
            return Ok(());
        }
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.active.store(true, Ordering::SeqCst);
        for v in &self.vectors {
            if !v.configured.load(Ordering::SeqCst) {
                continue;
            }
            let msg = *v.message.lock().unwrap_or_else(|p| p.into_inner());
            self.manager.set_msi_route(v.gsi, msg)?;
            if !v.masked.load(Ordering::SeqCst) {
                self.attach(v)?;
            }
        }
        Ok(())
    }

    /// Device reset: MSI off, vectors unconfigured and unmasked, routes and irqfds removed,
    /// pending interrupts and InterruptStatus cleared.
    pub fn reset(&self) -> Result<(), InterruptError> {
        let _guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.active.store(false, Ordering::SeqCst);
        self.msi_enabled.store(false, Ordering::SeqCst);
        let mut result = Ok(());
        for v in &self.vectors {
            if let Err(e) = self.detach(v) {
                result = Err(e);
            }
            if let Err(e) = self.manager.set_msi_route(v.gsi, None) {
                result = Err(e);
            }
            *v.message.lock().unwrap_or_else(|p| p.into_inner()) = None;
            v.configured.store(false, Ordering::SeqCst);
            v.masked.store(false, Ordering::SeqCst);
            // Drain what was raised but never delivered.
            let _ = v.evt.read();
        }
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        result
    }

    fn attach(&self, v: &MsiVector) -> Result<(), InterruptError> {
        if !v.attached.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.manager.register_irqfd(&v.evt, v.gsi) {
                v.attached.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    fn detach(&self, v: &MsiVector) -> Result<(), InterruptError> {
        if v.attached.swap(false, Ordering::SeqCst) {
            self.manager.unregister_irqfd(&v.evt, v.gsi)?;
        }
        Ok(())
    }

    /// InterruptStatus as the guest reads it: 0 in MSI mode.
    pub fn interrupt_status(&self) -> u32 {
        if self.msi_enabled() {
            0
        } else {
            self.status.load(Ordering::SeqCst)
        }
    }

    /// InterruptACK: clears the acknowledged bits (ignored in MSI mode).
    pub fn ack(&self, bits: u32) {
        if !self.msi_enabled() {
            self.status.fetch_and(!bits, Ordering::SeqCst);
        }
    }

    /// Per-vector counters.
    pub fn stats(&self) -> Vec<VectorStats> {
        self.vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let index = u16::try_from(i).unwrap_or(u16::MAX);
                VectorStats {
                    index,
                    role: if index == 0 {
                        VectorRole::Config
                    } else {
                        VectorRole::Queue(index - 1)
                    },
                    gsi: v.gsi,
                    sent: v.sent.load(Ordering::Relaxed),
                    dropped: v.dropped.load(Ordering::Relaxed),
                    configured: v.configured.load(Ordering::Relaxed),
                    masked: v.masked.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Whether `vector` is configured.
    pub fn vector_configured(&self, vector: u16) -> bool {
        self.vectors
            .get(usize::from(vector))
            .is_some_and(|v| v.configured.load(Ordering::SeqCst))
    }

    /// Whether the guest masked `vector`.
    pub fn vector_masked(&self, vector: u16) -> bool {
        self.vectors
            .get(usize::from(vector))
            .is_some_and(|v| v.masked.load(Ordering::SeqCst))
    }

    fn raise(&self, vector: usize, status_bit: u32) {
        if self.msi_enabled() {
            let Some(v) = self.vectors.get(vector) else {
                return;
            };
            if !v.configured.load(Ordering::SeqCst) {
                // Never inject a message the guest did not program.
                v.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            v.sent.fetch_add(1, Ordering::Relaxed);
            // A masked vector has no irqfd: the count waits in the eventfd until unmask.
            if let Err(e) = v.evt.write(1) {
                tracing::warn!("MSI eventfd write failed: {e}");
            }
        } else {
            self.status.fetch_or(status_bit, Ordering::SeqCst);
            self.legacy_sent.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.legacy_evt.write(1) {
                tracing::warn!("legacy irq eventfd write failed: {e}");
            }
        }
    }

    #[cfg(test)]
    fn pending(&self, vector: u16) -> u64 {
        self.vectors[usize::from(vector)].evt.read().unwrap_or(0)
    }
}

impl Interrupt for DeviceInterrupts {
    fn trigger(&self, queue: u16) {
        self.raise(usize::from(queue) + 1, INT_VRING);
    }

    fn trigger_config(&self) {
        self.raise(0, INT_CONFIG);
    }

    fn queue_irqfd(&self, queue: u16) -> Option<EventFd> {
        if !self.msi_enabled() {
            return None;
        }
        let v = self.vectors.get(usize::from(queue) + 1)?;
        if !v.configured.load(Ordering::SeqCst) {
            return None;
        }
        v.evt.try_clone().ok()
    }

    fn needs_reset(&self) {
        // One interrupt per reset cycle: a device that keeps failing must not flood the guest.
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.raise(0, INT_CONFIG);
        }
    }
}

impl Drop for DeviceInterrupts {
    fn drop(&mut self) {
        let _ = self.reset();
        let _ = self
            .manager
            .unregister_irqfd(&self.legacy_evt, self.legacy_gsi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(queues: u16) -> Arc<DeviceInterrupts> {
        let kvm = crate::kvm::open_kvm().unwrap();
        let vm = crate::kvm::create_vm(&kvm, 1).unwrap();
        let manager = InterruptManager::new(Arc::new(vm)).unwrap();
        DeviceInterrupts::new(manager, 5, queues).unwrap()
    }

    /// One queue, MSI enabled, its vector (1) programmed with vector 0x40, active.
    fn active_msi_device() -> Arc<DeviceInterrupts> {
        let d = device(1);
        d.set_msi_enabled(true);
        d.update_vector(1, msg(0x40)).unwrap();
        d.activate().unwrap();
        d
    }

    fn msg(vector: u8) -> MsiMessage {
        MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: u32::from(vector),
        }
    }

    #[test]
    fn legacy_mode_sets_interrupt_status() {
        let d = device(2);
        d.trigger(1);
        d.trigger_config();
        assert_eq!(d.interrupt_status(), INT_VRING | INT_CONFIG);
        d.ack(INT_VRING);
        assert_eq!(d.interrupt_status(), INT_CONFIG);
        assert_eq!(d.legacy_sent(), 2);
    }

    #[test]
    fn msi_mode_routes_configured_vectors_and_drops_the_rest() {
        let d = device(2);
        assert_eq!(d.vector_count(), 3);
        d.set_msi_enabled(true);
        assert_eq!(d.update_vector(2, msg(0x41)).unwrap(), VectorUpdate::Stored);
        d.activate().unwrap();
        assert!(d.msi_active());
        assert_eq!(d.manager.msi_route(d.vectors[2].gsi), Some(msg(0x41)));
        d.trigger(1); // vector 2
        d.trigger(0); // vector 1, never configured
        let stats = d.stats();
        assert_eq!((stats[2].sent, stats[2].dropped), (1, 0));
        assert_eq!((stats[1].sent, stats[1].dropped), (0, 1));
        assert_eq!(
            d.interrupt_status(),
            0,
            "InterruptStatus reads 0 in MSI mode"
        );
        assert_eq!(d.legacy_sent(), 0);
    }

    #[test]
    fn a_queue_irqfd_is_its_configured_vectors_eventfd_only_with_msi() {
        let d = device(2);
        assert!(d.queue_irqfd(0).is_none(), "legacy: the line, no irqfd");
        d.set_msi_enabled(true);
        assert_eq!(d.update_vector(2, msg(0x41)).unwrap(), VectorUpdate::Stored);
        d.activate().unwrap();
        assert!(d.queue_irqfd(0).is_none(), "vector 1 was never programmed");
        assert!(d.queue_irqfd(2).is_none(), "no queue 2");
        let irqfd = d.queue_irqfd(1).expect("queue 1's vector 2");
        // What another process writes to it is the vector's interrupt (a masked vector keeps
        // it for the unmask, as for the VMM's own).
        d.mask(2).unwrap();
        irqfd.write(1).unwrap();
        assert_eq!(d.pending(2), 1);
    }

    #[test]
    fn invalid_messages_and_vectors_are_refused() {
        let d = device(1);
        let bad = MsiMessage {
            address_lo: 0x1000,
            ..msg(0x30)
        };
        assert_eq!(
            d.update_vector(0, bad).unwrap(),
            VectorUpdate::Refused(MsiRejection::Address)
        );
        assert!(!d.vector_configured(0));
        assert_eq!(
            d.update_vector(2, msg(0x30)).unwrap(),
            VectorUpdate::NoSuchVector
        );
        assert!(!d.mask(7).unwrap());
    }

    #[test]
    fn masked_interrupt_waits_for_unmask() {
        let d = active_msi_device();
        d.mask(1).unwrap();
        assert!(!d.vectors[1].attached.load(Ordering::SeqCst));
        d.trigger(0);
        d.trigger(0);
        // Held in the eventfd while masked; no route lost.
        assert_eq!(d.pending(1), 2);
        d.trigger(0);
        d.unmask(1).unwrap();
        assert!(d.vectors[1].attached.load(Ordering::SeqCst));
    }

    #[test]
    fn nmi_smi_init_extint_and_low_vectors_are_never_routed() {
        let d = device(1);
        d.set_msi_enabled(true);
        d.activate().unwrap();
        for data in [0x400 | 0x41, 0x200 | 0x41, 0x500, 0x700, 0x0e] {
            let m = MsiMessage { data, ..msg(0) };
            assert!(matches!(
                d.update_vector(1, m).unwrap(),
                VectorUpdate::Refused(_)
            ));
            assert!(!d.vector_configured(1));
            assert_eq!(d.manager.msi_route(d.vectors[1].gsi), None);
            assert!(!d.vectors[1].attached.load(Ordering::SeqCst));
        }
    }

    #[test]
    fn update_keeps_a_masked_vector_masked() {
        let d = active_msi_device();
        d.mask(1).unwrap();
        d.update_vector(1, msg(0x41)).unwrap();
        assert!(
            !d.vectors[1].attached.load(Ordering::SeqCst),
            "UPDATE must not unmask"
        );
        assert_eq!(d.manager.msi_route(d.vectors[1].gsi), Some(msg(0x41)));
        d.unmask(1).unwrap();
        assert!(d.vectors[1].attached.load(Ordering::SeqCst));
    }

    #[test]
    fn needs_reset_raises_one_config_interrupt_until_reset() {
        let d = device(1);
        d.needs_reset();
        d.needs_reset();
        assert!(d.device_needs_reset());
        assert_eq!(d.legacy_sent(), 1);
        assert_eq!(d.interrupt_status(), INT_CONFIG);
        d.reset().unwrap();
        assert!(!d.device_needs_reset());
    }

    #[test]
    fn update_after_activation_rewrites_the_route() {
        let d = active_msi_device();
        let moved = MsiMessage {
            address_lo: 0xfee0_1000,
            ..msg(0x40)
        };
        d.update_vector(1, moved).unwrap();
        assert_eq!(d.manager.msi_route(d.vectors[1].gsi), Some(moved));
    }

    #[test]
    fn reset_clears_everything() {
        let d = device(2);
        d.set_msi_enabled(true);
        for v in 0..3u8 {
            d.update_vector(u16::from(v), msg(0x40 + v)).unwrap();
        }
        d.activate().unwrap();
        d.mask(1).unwrap();
        d.trigger(0);
        d.reset().unwrap();
        assert!(!d.msi_enabled() && !d.msi_active());
        for v in &d.vectors {
            assert!(!v.configured.load(Ordering::SeqCst));
            assert!(!v.masked.load(Ordering::SeqCst));
            assert!(!v.attached.load(Ordering::SeqCst));
            assert_eq!(d.manager.msi_route(v.gsi), None);
        }
        assert_eq!(d.pending(1), 0);
        // After reset the device is back in legacy mode.
        d.trigger(0);
        assert_eq!(d.interrupt_status(), INT_VRING);
    }
}
