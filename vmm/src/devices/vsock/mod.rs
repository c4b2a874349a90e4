//! virtio-vsock with the host side as hybrid vsock (the unix-socket protocol of Firecracker,
//! Cloud Hypervisor and Dragonball): rx, tx and event queues served by one worker thread for
//! all connections, credit-based flow control, RST on errors.
//!
//! Before the guest driver is ready, host processes that connect get `ERR guest vsock driver
//! not ready` at once, so callers can retry.

pub mod connection;
#[cfg(any(test, feature = "test-utils"))]
pub mod driver;
pub mod muxer;
pub mod packet;
pub mod unix;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::confine::{self, ThreadKind};
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateError, Activation, VirtioDevice,
};
use crate::devices::worker::FaultLog;
use muxer::{Muxer, VsockCounters};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The guest CIDs that are reserved (0, 1: hypervisor/local, 2: host).
pub const MIN_GUEST_CID: u64 = 3;

/// Settings of the vsock device.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub guest_cid: u64,
    /// The hybrid-vsock socket; guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// How long a host process that connects before the guest driver is ready has to send its
/// CONNECT line before it gets the refusal anyway.
const REFUSAL_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL); the forward sockets
/// `<uds_path>_<port>` add up to 11 more.
pub const MAX_UDS_PATH: usize = 107 - 11;

impl VsockConfig {
    /// Checks the CID and the socket path before anything is created.
    pub fn validate(&self) -> Result<(), String> {
        if self.guest_cid < MIN_GUEST_CID || self.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::Cid(self.guest_cid).to_string());
        }
        let len = self.uds_path.as_os_str().len();
        if len == 0 || len > MAX_UDS_PATH {
            return Err(format!(
                "socket path {} must be 1 to {MAX_UDS_PATH} bytes long, it is {len}",
                self.uds_path.display()
            ));
        }
        match self.uds_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(format!(
                "directory {} of socket {} does not exist",
                dir.display(),
                self.uds_path.display()
            )),
            _ => Ok(()),
        }
    }
}

/// vsock errors.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CID 0-2 or beyond 32 bits.
    #[error("vsock guest CID {0} is invalid (3 to 4294967294)")]
    Cid(u64),
    /// The socket cannot be bound.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("vsock: {0}")]
    Io(#[from] std::io::Error),
    /// The listener thread could not be started confined.
    #[error("vsock: {0}")]
    Confine(#[from] crate::confine::ConfineError),
}

/// Controls a vsock device from outside its worker.
#[derive(Clone)]
pub struct VsockHandle {
    reset_request: Arc<EventFd>,
    counters: Arc<VsockCounters>,
}

impl VsockHandle {
    /// Drops every connection and sends the guest a TRANSPORT_RESET event, as a VMM does when
    /// the host side of all connections is gone (a restored snapshot, a restarted backend). A
    /// driver that is not running yet gets it once it posts event buffers.
    pub fn transport_reset(&self) -> std::io::Result<()> {
        self.reset_request.write(1)
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<VsockCounters> {
        &self.counters
    }
}

struct Worker {
    kill: EventFd,
    thread: JoinHandle<()>,
}

impl Worker {
    fn stop(self) {
        let _ = self.kill.write(1);
        let _ = self.thread.join();
    }
}

/// A virtio-vsock device.
pub struct Vsock {
    config: VsockConfig,
    reset_request: EventFd,
    listener: UnixListener,
    counters: Arc<VsockCounters>,
    faults: Arc<FaultLog>,
    worker: Option<Worker>,
}

impl Vsock {
    /// Binds the socket and starts answering host processes (with a refusal until the guest
    /// driver is ready).
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid < MIN_GUEST_CID || config.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::Cid(config.guest_cid));
        }
        let listener = unix::bind(&config.uds_path).map_err(|source| VsockError::Bind {
            path: config.uds_path.clone(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        let mut vsock = Self {
            config,
            reset_request: EventFd::new(libc::EFD_NONBLOCK)?,
            listener,
            counters: Arc::default(),
            faults: Arc::new(FaultLog::new("vsock")),
            worker: None,
        };
        vsock.worker = Some(vsock.spawn_refuser()?);
        Ok(vsock)
    }

    /// Counters.
    pub fn counters(&self) -> &Arc<VsockCounters> {
        &self.counters
    }

    /// The guest's mistakes this device saw.
    pub fn faults(&self) -> &Arc<FaultLog> {
        &self.faults
    }

    /// A handle that can reset the transport from another thread.
    pub fn handle(&self) -> Result<VsockHandle, VsockError> {
        Ok(VsockHandle {
            reset_request: Arc::new(self.reset_request.try_clone()?),
            counters: self.counters.clone(),
        })
    }

    /// A thread that tells every connecting host process the guest is not ready.
    /// The refusing listener again (after a reset); a failure is logged, and host processes
    /// then wait until the driver is ready.
    fn respawn_refuser(&self) -> Option<Worker> {
        match self.spawn_refuser() {
            Ok(worker) => Some(worker),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    }

    fn spawn_refuser(&self) -> Result<Worker, VsockError> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop = kill.try_clone()?;
        let listener = self.listener.try_clone()?;
        let counters = self.counters.clone();
        let thread = confine::spawn(ThreadKind::VsockListener, "vsock-idle".into(), move || {
            refuse_until_stopped(listener, stop, counters)
        })?;
        Ok(Worker { kill, thread })
    }
}

/// A file descriptor as its epoll token (descriptors are never negative).
fn fd_token(fd: std::os::fd::RawFd) -> u64 {
    u64::try_from(fd).unwrap_or(u64::MAX)
}

fn refuse_until_stopped(listener: UnixListener, kill: EventFd, counters: Arc<VsockCounters>) {
    let Ok(epoll) = Epoll::new() else {
        return;
    };
    for fd in [listener.as_raw_fd(), kill.as_raw_fd()] {
        if epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd_token(fd)),
            )
            .is_err()
        {
            return;
        }
    }
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ev in &events[..n] {
            if ev.data() == fd_token(kill.as_raw_fd()) {
                return;
            }
        }
        while let Ok((stream, _)) = listener.accept() {
            // Take the CONNECT line first (briefly): answering before it arrived would make the
            // client's write fail with EPIPE instead of letting it read the refusal.
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(REFUSAL_READ_TIMEOUT));
            let mut pending =
                unix::PendingConnect::new(stream, std::time::Instant::now() + REFUSAL_READ_TIMEOUT);
            let _ = pending.read_line();
            let _ = pending
                .stream
                .write_all(b"ERR guest vsock driver not ready\n");
            counters.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn name(&self) -> &'static str {
        "vsock"
    }

    fn queue_name(&self, index: u16) -> String {
        match index {
            0 => "rx".into(),
            1 => "tx".into(),
            _ => "event".into(),
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        let mut slots = activation.take_queues(3);
        let mut take = |i: usize| slots[i].take().map(|q| (q.queue, q.notifier));
        let (rx, tx, event) = (take(0), take(1), take(2));
        if rx.is_none() || tx.is_none() {
            // The device is useless without both; go back to refusing.
            self.worker = self.respawn_refuser();
            return Err(ActivateError::QueueNotReady(if rx.is_none() {
                0
            } else {
                1
            }));
        }
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let muxer = Muxer {
            mem: activation.mem.clone(),
            guest_cid: self.config.guest_cid,
            uds_path: self.config.uds_path.clone(),
            listener: self.listener.try_clone()?,
            rx,
            tx,
            event,
            reset_request: self.reset_request.try_clone()?,
            kill: kill.try_clone()?,
            counters: self.counters.clone(),
        };
        let ctx = activation.loop_context(&self.faults)?;
        let thread = confine::spawn(ThreadKind::Vsock, "vsock".into(), move || muxer.run(ctx))?;
        self.worker = Some(Worker { kill, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        // Connections died with the muxer; new host processes get the refusal again.
        self.worker = self.respawn_refuser();
    }

    fn completed_requests(&self) -> Vec<u64> {
        vec![
            self.counters.rx_packets.load(Ordering::Relaxed),
            self.counters.tx_packets.load(Ordering::Relaxed),
            self.counters.events.load(Ordering::Relaxed),
        ]
    }

    fn guest_faults(&self) -> crate::devices::worker::FaultCounts {
        self.faults.counts()
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        let _ = std::fs::remove_file(&self.config.uds_path);
    }
}

#[cfg(test)]
mod tests;
