//! virtio-fs (device type 26) whose queues a vhost-user backend process serves (virtiofsd, the
//! backend Kata Containers and QEMU use): the VMM keeps the virtio-mmio transport and the
//! configuration space (the tag, the number of request queues); the backend reads and writes
//! the rings and the buffers in guest memory itself.
//!
//! At activation the device sends the backend (through `vhost::vhost_user::Frontend`): the
//! negotiated features, the guest memory table (every region's memfd descriptor: guest memory
//! must come from [`crate::memory::create_shared_guest_memory`]), and for each queue its size,
//! ring addresses, start index, doorbell (the transport's ioeventfd: a guest notification goes
//! from KVM to the backend without the VMM) and call eventfd. With MSI the call eventfd is the
//! queue's vector's irqfd ([`crate::interrupts::Interrupt::queue_irqfd`]): the backend's
//! interrupt reaches the guest without the VMM either. Without it (the legacy line, a vector
//! the guest did not program) the device gets a call eventfd of its own and one `fs-irq` thread
//! relays it to [`crate::interrupts::Interrupt::trigger`]. A reset stops every ring
//! (`GET_VRING_BASE`) and the relay.

#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::confine::{self, ThreadKind};
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateError, Activation, VirtioDevice,
};
use crate::devices::worker::device_loop::{self, DeviceWorker, LoopContext};
use crate::devices::worker::FaultLog;

/// The longest tag (virtio 1.2, 5.11.4: `u8 tag[36]`).
pub const MAX_TAG_LEN: usize = 36;
/// Largest queue size offered.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// The most request queues accepted.
pub const MAX_REQUEST_QUEUES: u16 = 16;

/// A virtio-fs device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// The backend's vhost-user socket (virtiofsd `--socket-path`), listening.
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// Request queues (besides the high-priority queue); virtiofsd serves one.
    pub request_queues: u16,
    /// Largest size of each queue.
    pub queue_size: u16,
}

impl FsConfig {
    /// A device for the backend at `socket`, with one request queue.
    pub fn new(socket: impl Into<PathBuf>, tag: &str) -> Self {
        Self {
            socket: socket.into(),
            tag: tag.to_string(),
            request_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }

    /// Checks the values; the error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.tag.is_empty()
            || self.tag.len() > MAX_TAG_LEN
            || !self.tag.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "tag {:?}: 1 to {MAX_TAG_LEN} printable ASCII characters",
                self.tag
            ));
        }
        if !(1..=MAX_REQUEST_QUEUES).contains(&self.request_queues) {
            return Err(format!(
                "request_queues must be 1 to {MAX_REQUEST_QUEUES}, got {}",
                self.request_queues
            ));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 2 {
            return Err(format!(
                "queue_size must be a power of two of at least 2, got {}",
                self.queue_size
            ));
        }
        Ok(())
    }
}

/// What the device can fail with before the guest sees it.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The configuration is not usable.
    #[error("virtio-fs: {0}")]
    Config(String),
    /// The backend's socket cannot be reached.
    #[error("virtio-fs: connecting to the vhost-user backend at {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: vhost::Error,
    },
    /// A vhost-user request failed.
    #[error("virtio-fs: vhost-user {request}: {source}")]
    Request {
        /// The request.
        request: &'static str,
        /// The backend's or the socket's error.
        source: vhost::Error,
    },
    /// The backend lacks something the device needs.
    #[error("virtio-fs: the backend {0}")]
    Backend(String),
}

fn request(request: &'static str) -> impl FnOnce(vhost::Error) -> FsError {
    move |source| FsError::Request { request, source }
}

/// Features offered to the guest when the backend has them: none of virtio-fs's own (no
/// notification queue, no DAX window), only the ring's.
const GUEST_FEATURES: u64 =
    features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX;

/// A running activation.
struct Active {
    /// Queues handed to the backend (indexes).
    queues: Vec<usize>,
    /// The relay of the call eventfds that are not irqfds, if any.
    relay: Option<(EventFd, JoinHandle<()>)>,
}

/// A virtio-fs device backed by a vhost-user backend.
pub struct Fs {
    config: FsConfig,
    frontend: Frontend,
    /// The backend's virtio features.
    backend_features: u64,
    /// Whether VHOST_USER_F_PROTOCOL_FEATURES was negotiated (rings start disabled).
    protocol: bool,
    config_space: Vec<u8>,
    active: Option<Active>,
    faults: Arc<FaultLog>,
}

impl Fs {
    /// Connects to the backend and takes ownership of its session (`SET_OWNER`,
    /// `GET_FEATURES`, the protocol features). On the embedder's thread, before the VM runs.
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        config.validate().map_err(FsError::Config)?;
        let queues = u64::from(config.request_queues) + 1;
        let mut frontend =
            Frontend::connect(&config.socket, queues).map_err(|source| FsError::Connect {
                socket: config.socket.clone(),
                source,
            })?;
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        if backend_features & features::VERSION_1 == 0 {
            return Err(FsError::Backend("does not offer VIRTIO_F_VERSION_1".into()));
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol = backend_features & protocol_bit != 0;
        if protocol {
            // The protocol features are set after SET_FEATURES acknowledged the bit.
            frontend
                .set_features(protocol_bit)
                .map_err(request("SET_FEATURES"))?;
            let offered = frontend
                .get_protocol_features()
                .map_err(request("GET_PROTOCOL_FEATURES"))?;
            // Replies to every request that changes the backend's state: an error there is
            // the device's, not a silent loss.
            let wanted = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(wanted)
                .map_err(request("SET_PROTOCOL_FEATURES"))?;
        }
        let mut config_space = vec![0u8; MAX_TAG_LEN + 4];
        config_space[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        config_space[MAX_TAG_LEN..]
            .copy_from_slice(&u32::from(config.request_queues).to_le_bytes());
        Ok(Self {
            config,
            frontend,
            backend_features,
            protocol,
            config_space,
            active: None,
            faults: Arc::new(FaultLog::new("fs")),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Sends the backend everything it needs to serve `queues`; returns the relay's call
    /// eventfds (queue index, eventfd) for the queues without an irqfd.
    fn start_backend(&mut self, activation: &Activation) -> Result<Vec<(u16, EventFd)>, FsError> {
        let mem = &activation.mem;
        let mut acked = activation.features & self.backend_features;
        if self.protocol {
            acked |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(acked)
            .map_err(request("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                FsError::Backend(
                    "cannot map guest memory that is not file-backed (the VM needs shared memory)"
                        .into(),
                )
            })?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(request("SET_MEM_TABLE"))?;
        let mut relayed = Vec::new();
        for q in &activation.queues {
            let index = usize::from(q.index);
            let queue = &q.queue;
            let host = |addr: u64| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| FsError::Backend(format!("queue {index}: a ring outside memory")))
            };
            let ring = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, queue.size())
                .map_err(request("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &ring)
                .map_err(request("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, queue.next_avail())
                .map_err(request("SET_VRING_BASE"))?;
            let call = match activation.interrupt.queue_irqfd(q.index) {
                Some(irqfd) => irqfd,
                None => {
                    let own = EventFd::new(libc::EFD_NONBLOCK)
                        .map_err(|e| FsError::Backend(format!("eventfd: {e}")))?;
                    let relay = own
                        .try_clone()
                        .map_err(|e| FsError::Backend(format!("eventfd: {e}")))?;
                    relayed.push((q.index, relay));
                    own
                }
            };
            self.frontend
                .set_vring_call(index, &call)
                .map_err(request("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, &q.notifier)
                .map_err(request("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(request("SET_VRING_ENABLE"))?;
            }
        }
        Ok(relayed)
    }

    /// Stops the backend's rings (`GET_VRING_BASE` stops a ring) and the relay.
    fn stop(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        for index in active.queues {
            if self.protocol {
                if let Err(e) = self.frontend.set_vring_enable(index, false) {
                    tracing::warn!("virtio-fs: disabling ring {index}: {e}");
                }
            }
            if let Err(e) = self.frontend.get_vring_base(index) {
                tracing::warn!("virtio-fs: stopping ring {index}: {e}");
            }
        }
        if let Some((stop, thread)) = active.relay {
            let _ = stop.write(1);
            if thread.join().is_err() {
                tracing::error!("virtio-fs: the interrupt relay panicked");
            }
        }
    }
}

/// Relays call eventfds to [`crate::interrupts::Interrupt::trigger`].
struct Relay {
    calls: Vec<(u16, EventFd)>,
}

impl DeviceWorker for Relay {
    fn start(&mut self, ctx: &mut LoopContext) {
        for (i, (_, call)) in self.calls.iter().enumerate() {
            if let Err(e) = ctx.watch(call.as_raw_fd(), i as u64, EventSet::IN) {
                tracing::error!("virtio-fs: watching a call eventfd: {e}");
            }
        }
    }

    fn event(&mut self, ctx: &mut LoopContext, token: u64, _events: EventSet) {
        let Some((queue, call)) = usize::try_from(token).ok().and_then(|i| self.calls.get(i))
        else {
            return;
        };
        if call.read().is_ok() {
            ctx.interrupt().trigger(*queue);
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; usize::from(self.config.request_queues) + 1]
    }

    fn features(&self) -> u64 {
        self.backend_features & GUEST_FEATURES
    }

    fn name(&self) -> &'static str {
        "fs"
    }

    fn id(&self) -> String {
        self.config.tag.clone()
    }

    fn queue_name(&self, index: u16) -> String {
        // As the Linux driver names them.
        if index == 0 {
            "hiprio".into()
        } else {
            format!("requests.{}", index - 1)
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only (virtio 1.2, 5.11.4).
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let wanted = self.queue_max_sizes().len();
        for index in 0..wanted {
            if !activation
                .queues
                .iter()
                .any(|q| usize::from(q.index) == index)
            {
                return Err(ActivateError::QueueNotReady(index));
            }
        }
        self.stop();
        let indexes = activation
            .queues
            .iter()
            .map(|q| usize::from(q.index))
            .collect();
        // From here on the backend may hold some rings: a failure stops them again.
        self.active = Some(Active {
            queues: indexes,
            relay: None,
        });
        let relayed = match self.start_backend(&activation) {
            Ok(relayed) => relayed,
            Err(e) => {
                self.stop();
                return Err(ActivateError::Other(e.to_string()));
            }
        };
        if !relayed.is_empty() {
            let started = (|| {
                let stop = EventFd::new(libc::EFD_NONBLOCK)?;
                let stop_worker = stop.try_clone()?;
                let ctx = activation.loop_context(&self.faults)?;
                let thread = confine::spawn(ThreadKind::Fs, "fs-irq".into(), move || {
                    let mut ctx = ctx;
                    let mut relay = Relay { calls: relayed };
                    if let Err(e) = device_loop::run(&mut relay, &mut ctx, &stop_worker) {
                        tracing::error!("virtio-fs interrupt relay: {e}");
                    }
                })?;
                Ok((stop, thread))
            })();
            match started {
                Ok(relay) => {
                    if let Some(active) = self.active.as_mut() {
                        active.relay = Some(relay);
                    }
                }
                Err(e) => {
                    self.stop();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn guest_faults(&self) -> crate::devices::worker::FaultCounts {
        self.faults.counts()
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop();
    }
}
