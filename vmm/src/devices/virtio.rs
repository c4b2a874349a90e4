//! What a virtio device implements so that the virtio-mmio transport can carry it. The device
//! gets its queues, their doorbell eventfds and an [`Interrupt`] when the driver is ready, and
//! never learns whether the guest uses MSI or the legacy line.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::worker::{FaultCounts, FaultLog, LoopContext};
use crate::interrupts::Interrupt;
use crate::memory::GuestMemoryMmap;

/// Device status bits (virtio 1.x, 2.1), from pulse-virtio-spec: the probe guest's driver
/// sets the same ones.
pub use pulse_virtio_spec::status;

/// Feature bits shared by all devices: the ring features, from pulse-virtio-spec, which the
/// probe guest negotiates too, and those the VMM never offers.
pub mod features {
    pub use pulse_virtio_spec::feature::*;
    /// Never offered on an MSI-extended virtio-mmio device: bit 40 (RING_RESET) reuses 0x0C0.
    pub const RING_RESET: u64 = 1 << 40;
    /// Never offered either: bit 39 (NOTIF_CONFIG_DATA).
    pub const NOTIF_CONFIG_DATA: u64 = 1 << 39;
}

/// Virtio device types: those the probe guest drives too, from pulse-virtio-spec, and
/// virtio-fs.
pub mod device_type {
    pub use pulse_virtio_spec::device_type::*;
    /// File system device (virtio-fs).
    pub const FS: u32 = 26;
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A worker thread could not be started (or what it needs: an eventfd, an epoll).
    #[error("cannot start a worker: {0}")]
    Worker(#[from] std::io::Error),
    /// A worker thread could not be started confined (see [`crate::confine`]).
    #[error(transparent)]
    Confine(#[from] crate::confine::ConfineError),
    /// The driver set up fewer queues than the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// Anything else the device reports.
    #[error("{0}")]
    Other(String),
}

/// A queue handed to the device, with its doorbell.
pub struct ActiveQueue {
    /// Queue index on the device.
    pub index: u16,
    /// The virtqueue as the driver configured it.
    pub queue: Queue,
    /// Written by KVM on every guest notification of this queue.
    pub notifier: EventFd,
}

/// What the transport hands a device when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, where the rings and buffers are.
    pub mem: GuestMemoryMmap,
    /// The features the driver accepted.
    pub features: u64,
    /// The queues the driver made ready, in index order.
    pub queues: Vec<ActiveQueue>,
    /// How the device raises its interrupts.
    pub interrupt: Arc<dyn Interrupt>,
}

impl Activation {
    /// An activation with the driver's `features` and `queues`.
    pub fn new(
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Self {
        Self {
            mem,
            features,
            queues,
            interrupt,
        }
    }

    /// Takes the queues out, one slot per index below `count`: `None` where the driver left a
    /// queue out. Indexes from `count` up are dropped.
    pub fn take_queues(&mut self, count: usize) -> Vec<Option<ActiveQueue>> {
        let mut slots: Vec<Option<ActiveQueue>> = Vec::new();
        slots.resize_with(count, || None);
        for q in self.queues.drain(..) {
            if let Some(slot) = slots.get_mut(usize::from(q.index)) {
                *slot = Some(q);
            }
        }
        slots
    }

    /// The context of a worker loop that raises this activation's interrupt and counts the
    /// guest's faults in `faults`.
    pub fn loop_context(&self, faults: &Arc<FaultLog>) -> Result<LoopContext, ActivateError> {
        Ok(LoopContext::new(self.interrupt.clone(), faults.clone())?)
    }
}

/// A virtio device.
pub trait VirtioDevice: Send {
    /// Device type (virtio spec 5).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features the device offers.
    fn features(&self) -> u64;
    /// Short name for reports and queue names (e.g. `blk`).
    fn name(&self) -> &'static str;
    /// What names this device among the VM's devices of its kind, for reports (a disk's
    /// serial, a network card's tap). The default fits a kind a VM has at most one of.
    fn id(&self) -> String {
        format!("{}0", self.name())
    }
    /// Name of queue `index`, as a guest driver would name its interrupt.
    fn queue_name(&self, index: u16) -> String {
        format!("q{index}")
    }
    /// Reads device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Changes of the configuration space the device made on its own (e.g. a new disk
    /// capacity); the transport folds it into ConfigGeneration.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Starts the device with the negotiated features and the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device (workers joined, queues dropped) so it can be activated again.
    fn reset(&mut self);
    /// Requests the device completed, per queue (for reports).
    fn completed_requests(&self) -> Vec<u64> {
        Vec::new()
    }
    /// The guest's mistakes the device counted (malformed chains, broken rings), for reports.
    fn guest_faults(&self) -> FaultCounts {
        FaultCounts::default()
    }
}

/// Reads `data.len()` bytes at `offset` from a byte image of a config space; bytes beyond it
/// read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut buf = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut buf);
        assert_eq!(buf, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut buf);
        assert_eq!(buf, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
    }
}
