//! virtio-net over a Linux tap: N queue pairs (VIRTIO_NET_F_MQ), each served by its own worker
//! thread on its own tap queue, plus the control queue (on pair 0's thread). Checksum and
//! segmentation offloads pass through the virtio-net header to the tap, received frames may
//! span buffers (MRG_RXBUF), EVENT_IDX and indirect descriptors are offered.
//!
//! Queue layout (virtio 1.2, 5.1.2): rx0, tx0, rx1, tx1, ..., rx(N-1), tx(N-1), control; a
//! driver that does not negotiate MQ finds the control queue at index 2.
//!
//! Modules: [`tap`] (the host backend), [`chain`] (descriptor chains as host memory for
//! `readv`/`writev`), `worker` (one thread per pair), [`ctrl`] (the control queue).

pub mod chain;
mod config;
pub mod ctrl;
#[cfg(any(test, feature = "test-utils"))]
pub mod packet_socket;
pub mod tap;
pub(crate) mod worker;

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::confine::ThreadKind;
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateError, Activation, ActiveQueue, VirtioDevice,
};
use crate::devices::worker::{FaultLog, GuestFault, Workers};
pub use config::{MacAddr, NetConfig, NetConfigError, TapSource};
use ctrl::{Ctrl, Shared};
use tap::{Tap, TapError, TapOrigin};
use worker::{PairParts, PairWorker, RxMode, Vring};
pub use worker::{QueueCounters, MAX_FRAME_LEN};

/// Feature: the device handles partial checksums (guest to host).
pub const F_CSUM: u64 = 1 << 0;
/// Feature: the driver handles partial checksums (host to guest).
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// Feature: guest offloads can be changed through the control queue.
pub const F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
/// Feature: `mtu` in config space is valid.
pub const F_MTU: u64 = 1 << 3;
/// Feature: `mac` in config space is valid.
pub const F_MAC: u64 = 1 << 5;
/// Feature: the driver takes TSOv4.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// Feature: the driver takes TSOv6.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// Feature: the driver takes TSO with ECN.
pub const F_GUEST_ECN: u64 = 1 << 9;
/// Feature: the driver takes UFO.
pub const F_GUEST_UFO: u64 = 1 << 10;
/// Feature: the device takes TSOv4.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// Feature: the device takes TSOv6.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// Feature: the device takes TSO with ECN.
pub const F_HOST_ECN: u64 = 1 << 13;
/// Feature: the device takes UFO.
pub const F_HOST_UFO: u64 = 1 << 14;
/// Feature: received frames may span buffers (`num_buffers`).
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Feature: `status` in config space is valid.
pub const F_STATUS: u64 = 1 << 16;
/// Feature: control queue.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// Feature: receive filtering through the control queue (not offered).
pub const F_CTRL_RX: u64 = 1 << 18;
/// Feature: multiple queue pairs.
pub const F_MQ: u64 = 1 << 22;
/// Feature: the MAC can be set through the control queue.
pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;

/// The checksum and segmentation offloads the device offers, both ways.
pub const OFFLOADS: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_GUEST_UFO
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN
    | F_HOST_UFO;

/// The offloads the driver can switch with GUEST_OFFLOADS_SET.
pub const GUEST_OFFLOAD_MASK: u64 =
    F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN | F_GUEST_UFO;

/// `status`: link up.
pub const STATUS_LINK_UP: u16 = 1;

/// Default size of each queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Size of the control queue.
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// Most queue pairs.
pub const MAX_QUEUE_PAIRS: u16 = 32;
/// Smallest MTU Linux accepts.
pub const MIN_MTU: u16 = 68;

/// Net device errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Queue pair count out of range.
    #[error("net device on {tap}: {pairs} queue pairs requested, 1 to {MAX_QUEUE_PAIRS} allowed")]
    QueuePairs {
        /// The tap.
        tap: String,
        /// Requested.
        pairs: u16,
    },
    /// An inherited descriptor is one queue.
    #[error("net device on tap fd {fd}: an inherited descriptor carries one queue pair, {pairs} requested")]
    FdQueuePairs {
        /// The descriptor.
        fd: RawFd,
        /// Requested.
        pairs: u16,
    },
    /// Inherited queue descriptors and queue pairs disagree.
    #[error("net device on {fds} inherited tap descriptors: {pairs} queue pairs requested (one descriptor per pair)")]
    FdsQueuePairs {
        /// Descriptors given.
        fds: usize,
        /// Requested.
        pairs: u16,
    },
    /// Queue size not a power of two in range.
    #[error("net device on {tap}: queue size {size} must be a power of two from 2 to 32768")]
    QueueSize {
        /// The tap.
        tap: String,
        /// Requested.
        size: u16,
    },
    /// A group address as the guest's MAC.
    #[error("net device on {tap}: {mac} is a multicast address")]
    MulticastMac {
        /// The tap.
        tap: String,
        /// The address.
        mac: MacAddr,
    },
    /// MTU out of range.
    #[error("net device on {tap}: MTU {mtu} is below {MIN_MTU}")]
    Mtu {
        /// The tap.
        tap: String,
        /// Requested.
        mtu: u16,
    },
}

/// Length of the config space: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;

/// `struct virtio_net_config` (the fields Pulse offers), little endian.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_LEN],
}

impl ConfigSpace {
    pub(crate) fn new(mac: MacAddr, pairs: u16, mtu: u16) -> Self {
        let mut bytes = [0u8; CONFIG_LEN];
        bytes[0..6].copy_from_slice(&mac.0);
        bytes[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        bytes[8..10].copy_from_slice(&pairs.to_le_bytes());
        bytes[10..12].copy_from_slice(&mtu.to_le_bytes());
        Self { bytes }
    }

    /// The MAC the guest sees.
    pub fn mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.bytes[0..6]);
        MacAddr(m)
    }

    /// Changes the MAC (VIRTIO_NET_CTRL_MAC_ADDR_SET).
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.bytes[0..6].copy_from_slice(&mac);
    }
}

/// TUN_F_* offload flags for negotiated (or GUEST_OFFLOADS_SET) guest features: what the
/// kernel may hand the guest. Segmentation needs checksum offload, ECN needs TSO.
pub fn tun_offload(features: u64) -> libc::c_uint {
    if features & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if features & F_GUEST_TSO4 != 0 {
        f |= libc::TUN_F_TSO4;
    }
    if features & F_GUEST_TSO6 != 0 {
        f |= libc::TUN_F_TSO6;
    }
    if features & F_GUEST_ECN != 0 && features & (F_GUEST_TSO4 | F_GUEST_TSO6) != 0 {
        f |= libc::TUN_F_TSO_ECN;
    }
    if features & F_GUEST_UFO != 0 {
        f |= libc::TUN_F_UFO;
    }
    f
}

/// An active device: its pair workers and the state they share with the control queue.
struct Running {
    workers: Workers,
    shared: Arc<Shared>,
}

/// A virtio-net device.
pub struct Net {
    config: NetConfig,
    mac: MacAddr,
    tap: Arc<Tap>,
    config_space: Arc<Mutex<ConfigSpace>>,
    counters: Vec<Arc<QueueCounters>>,
    faults: Arc<FaultLog>,
    running: Option<Running>,
}

impl Net {
    /// Opens (or creates) the tap and builds the device. Only queue pair 0's tap queue is
    /// attached until the driver asks for more pairs.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        let label = match &config.tap {
            TapSource::Name(n) => n.clone(),
            TapSource::Fd(fd) => format!("tap fd {fd}"),
            TapSource::Fds(fds) => format!("tap fds {fds:?}"),
        };
        if config.queue_pairs == 0 || config.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(NetError::QueuePairs {
                tap: label,
                pairs: config.queue_pairs,
            });
        }
        if !config.queue_size.is_power_of_two() || config.queue_size < 2 {
            return Err(NetError::QueueSize {
                tap: label,
                size: config.queue_size,
            });
        }
        if let Some(mac) = config.mac.filter(MacAddr::is_multicast) {
            return Err(NetError::MulticastMac { tap: label, mac });
        }
        if let Some(mtu) = config.mtu.filter(|m| *m < MIN_MTU) {
            return Err(NetError::Mtu { tap: label, mtu });
        }
        let tap = match &config.tap {
            TapSource::Name(name) => Tap::open(name, usize::from(config.queue_pairs))?,
            TapSource::Fd(fd) => {
                if config.queue_pairs != 1 {
                    return Err(NetError::FdQueuePairs {
                        fd: *fd,
                        pairs: config.queue_pairs,
                    });
                }
                Tap::from_fd(*fd)?
            }
            TapSource::Fds(fds) => {
                if fds.len() != usize::from(config.queue_pairs) {
                    return Err(NetError::FdsQueuePairs {
                        fds: fds.len(),
                        pairs: config.queue_pairs,
                    });
                }
                Tap::from_inherited_fds(fds)?
            }
        };
        tap.set_active_queues(1)?;
        // A tap handed over as queue descriptors is the embedder's to configure.
        let own_link = !matches!(config.tap, TapSource::Fds(_));
        if let Some(mtu) = config.mtu.filter(|_| own_link) {
            tap.set_mtu(u32::from(mtu))?;
        }
        if config.link_up && own_link {
            tap.set_link_up()?;
        }
        let mac = config.mac.unwrap_or_else(MacAddr::random);
        let config_space = Arc::new(Mutex::new(ConfigSpace::new(
            mac,
            config.queue_pairs,
            config.mtu.unwrap_or(0),
        )));
        let counters = (0..2 * config.queue_pairs + 1)
            .map(|_| Arc::new(QueueCounters::default()))
            .collect();
        Ok(Self {
            config,
            mac,
            tap: Arc::new(tap),
            config_space,
            counters,
            faults: Arc::new(FaultLog::new("net")),
            running: None,
        })
    }

    /// Counters per queue, by queue index: rx0, tx0, rx1, tx1, ..., control last.
    pub fn counters(&self) -> &[Arc<QueueCounters>] {
        &self.counters
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Whether Pulse created the tap (it goes away with the device).
    pub fn tap_origin(&self) -> TapOrigin {
        self.tap.origin()
    }

    /// The MAC the guest sees now.
    pub fn mac(&self) -> MacAddr {
        self.config_space
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mac()
    }

    /// Queue pairs configured.
    pub fn queue_pairs(&self) -> u16 {
        self.config.queue_pairs
    }

    /// Queue pairs the driver uses now (1 until it sends VQ_PAIRS_SET, 0 when not active).
    pub fn active_queue_pairs(&self) -> u16 {
        self.running.as_ref().map_or(0, |r| r.shared.active_pairs())
    }

    fn ctrl_index(&self, negotiated: u64) -> u16 {
        if negotiated & F_MQ != 0 {
            2 * self.config.queue_pairs
        } else {
            2
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let mut sizes = vec![self.config.queue_size; 2 * usize::from(self.config.queue_pairs)];
        sizes.push(CTRL_QUEUE_SIZE);
        sizes
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | OFFLOADS
            | F_CTRL_GUEST_OFFLOADS
            | F_MAC
            | F_MRG_RXBUF
            | F_STATUS
            | F_CTRL_VQ
            | F_CTRL_MAC_ADDR;
        if self.config.queue_pairs > 1 {
            f |= F_MQ;
        }
        if self.config.mtu.is_some() {
            f |= F_MTU;
        }
        f
    }

    fn name(&self) -> &'static str {
        "net"
    }

    fn id(&self) -> String {
        self.tap_name().to_string()
    }

    fn queue_name(&self, index: u16) -> String {
        let pairs = self.config.queue_pairs;
        if index >= 2 * pairs {
            "control".into()
        } else if index.is_multiple_of(2) {
            format!("input.{}", index / 2)
        } else {
            format!("output.{}", index / 2)
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space.lock().unwrap_or_else(|e| e.into_inner());
        read_config_bytes(&config.bytes, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only with VERSION_1: the MAC changes through the control queue.
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let negotiated = activation.features & self.features();
        let pairs = if negotiated & F_MQ != 0 {
            self.config.queue_pairs
        } else {
            1
        };
        let ctrl_index = (negotiated & F_CTRL_VQ != 0).then(|| self.ctrl_index(negotiated));
        let other = |e: TapError| ActivateError::Other(e.to_string());
        self.tap
            .set_offload(tun_offload(negotiated))
            .map_err(other)?;
        self.tap.set_active_queues(1).map_err(other)?;

        let mut slots = activation.take_queues(usize::from(2 * self.config.queue_pairs + 1));
        // Pairs the driver set up completely; the first incomplete one ends the list.
        let mut served = 0u16;
        while served < pairs
            && slots[usize::from(2 * served)].is_some()
            && slots[usize::from(2 * served + 1)].is_some()
        {
            served += 1;
        }
        if served == 0 {
            let missing = if slots[0].is_none() { 0 } else { 1 };
            return Err(ActivateError::QueueNotReady(missing));
        }
        let mut wakers = Vec::new();
        let mut worker_wakes = Vec::new();
        for _ in 0..served {
            let wake = EventFd::new(libc::EFD_NONBLOCK)?;
            worker_wakes.push(wake.try_clone()?);
            wakers.push(wake);
        }
        let mut shared = Shared::new(
            self.tap.clone(),
            negotiated,
            served,
            self.config_space.clone(),
            wakers,
        );
        shared.faults = self.faults.clone();
        let shared = Arc::new(shared);
        let vring = |q: ActiveQueue, counters: &[Arc<QueueCounters>]| {
            let counters = counters[usize::from(q.index)].clone();
            Vring::new(q, counters)
        };
        let mut ctrl = ctrl_index
            .and_then(|i| slots.get_mut(usize::from(i)))
            .and_then(Option::take)
            .map(|q| Ctrl {
                // The control queue's counters are the last ones, wherever it sits.
                vring: Vring::new(q, self.counters[self.counters.len() - 1].clone()),
                shared: shared.clone(),
            });
        let mode = RxMode {
            mergeable: negotiated & F_MRG_RXBUF != 0,
            guest_csum: negotiated & F_GUEST_CSUM != 0,
        };
        let mut workers = Workers::new()?;
        for (pair, wake) in (0..served).zip(worker_wakes) {
            let rx = slots[usize::from(2 * pair)].take().expect("checked above");
            let tx = slots[usize::from(2 * pair + 1)]
                .take()
                .expect("checked above");
            let tap = self
                .tap
                .queue(usize::from(pair))
                .expect("one tap queue per pair")
                .clone();
            let worker = PairWorker::new(PairParts {
                pair,
                mem: activation.mem.clone(),
                rx: vring(rx, &self.counters),
                tx: vring(tx, &self.counters),
                ctrl: if pair == 0 { ctrl.take() } else { None },
                tap,
                kill: workers.stop_request()?,
                wake,
                interrupt: activation.interrupt.clone(),
                shared: shared.clone(),
                mode,
            })?;
            workers = workers.spawn(ThreadKind::Net, format!("net-q{pair}"), move || {
                worker.run()
            })?;
        }
        if served < pairs {
            // The driver's choice, as often as it resets: counted and rate limited.
            self.faults.record(
                GuestFault::IncompleteSetup,
                &format_args!(
                    "tap {}: the driver set up {served} of {pairs} queue pairs",
                    self.tap.name()
                ),
            );
        }
        self.running = Some(Running { workers, shared });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            running.workers.stop();
        }
        if let Err(e) = self.tap.set_active_queues(1) {
            tracing::warn!("{e}");
        }
        // A reset device has its original MAC again.
        self.config_space
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_mac(self.mac.0);
    }

    fn completed_requests(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.frames.load(Ordering::Relaxed))
            .collect()
    }

    fn guest_faults(&self) -> crate::devices::worker::FaultCounts {
        self.faults.counts()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.workers.stop();
        }
    }
}

#[cfg(test)]
mod tests;
