//! Entry points of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`, never in a product
//! build): each runs what one wake-up of a device worker does with queues the caller laid out
//! in guest memory, on the worker's own code (no thread, no epoll wait), and returns the
//! device's counters and the guest mistakes it recorded. The host side is a stand-in where the
//! device needs one: a socket pair for the tap, a pipe for console input, no vsock listener.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::block::backend::Backend;
use crate::devices::block::worker::{QueueCounters as BlockCounters, QueueWorker};
use crate::devices::block::Media;
use crate::devices::console::sink::{Output, Sink};
use crate::devices::console::worker::{ConsoleWorker, QueueCounters as ConsoleCounters, Vring};
use crate::devices::net::ctrl::{Ctrl, Shared};
use crate::devices::net::tap::Tap;
use crate::devices::net::worker::{
    PairParts, PairWorker, QueueCounters as NetCounters, RxMode, Vring as NetVring,
};
use crate::devices::net::{ConfigSpace, MacAddr};
use crate::devices::vsock::muxer::{FuzzWorker, Muxer, VsockCounters};
use crate::devices::worker::{FaultCounts, FaultLog, LoopContext};
use crate::memory::GuestMemoryMmap;

pub use crate::devices::driver_ring::CountingInterrupt;

/// Turns a worker takes at most, one after the other, while it says it has work left (each
/// turn serves at most the device's budget).
const MAX_TURNS: usize = 4;

/// What the device raised during the turns.
#[derive(Clone, Debug, Default)]
pub struct Raised {
    /// Queue interrupts.
    pub queue_interrupts: u64,
    /// Configuration-change interrupts.
    pub config_interrupts: u64,
    /// DEVICE_NEEDS_RESET requests (a queue the guest broke).
    pub needs_reset: u64,
}

impl Raised {
    fn of(irq: &CountingInterrupt) -> Self {
        Self {
            queue_interrupts: irq.total(),
            config_interrupts: irq.config(),
            needs_reset: irq.needs_reset_requests(),
        }
    }
}

fn context(device: &'static str) -> (LoopContext, Arc<CountingInterrupt>, Arc<FaultLog>) {
    let irq = Arc::new(CountingInterrupt::default());
    let faults = Arc::new(FaultLog::new(device));
    let ctx = LoopContext::new(irq.clone(), faults.clone()).expect("epoll for the loop context");
    (ctx, irq, faults)
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A block queue's turn.
#[derive(Clone, Debug, Default)]
pub struct BlockTurn {
    /// Requests completed, successfully or not.
    pub completed: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Interrupts and reset requests.
    pub raised: Raised,
    /// Guest mistakes recorded.
    pub faults: FaultCounts,
}

/// Serves block queue 0 (`queue`, its rings in `mem`) over the disk image at `disk`.
pub fn block_turn(mem: &GuestMemoryMmap, queue: Queue, disk: &Path, read_only: bool) -> BlockTurn {
    let backend = Backend::open(disk, read_only).expect("the fuzz disk image");
    let counters = Arc::new(BlockCounters::default());
    let mut id = [0u8; 20];
    id[..4].copy_from_slice(b"fuzz");
    let mut worker = QueueWorker {
        index: 0,
        queue,
        notifier: eventfd(),
        mem: mem.clone(),
        media: Arc::new(Media::with_backend(backend, disk.to_path_buf())),
        id,
        counters: counters.clone(),
        more: false,
    };
    let (mut ctx, irq, faults) = context("block");
    for _ in 0..MAX_TURNS {
        worker.process(&mut ctx);
        if !worker.more {
            break;
        }
    }
    BlockTurn {
        completed: load(&counters.completed),
        failed: load(&counters.failed),
        raised: Raised::of(&irq),
        faults: faults.counts(),
    }
}

/// A net queue's turn.
#[derive(Clone, Debug, Default)]
pub struct NetTurn {
    /// Frames moved, or control commands answered OK.
    pub frames: u64,
    /// Malformed chains, refused commands.
    pub errors: u64,
    /// Well-formed frames lost.
    pub dropped: u64,
    /// Interrupts and reset requests.
    pub raised: Raised,
    /// Guest mistakes recorded.
    pub faults: FaultCounts,
    /// Frames (with their virtio-net header) the device wrote to the tap.
    pub to_tap: Vec<Vec<u8>>,
    /// Queue pairs in use after the turn (control queue).
    pub active_pairs: u16,
    /// The MAC in the config space after the turn (control queue).
    pub mac: [u8; 6],
}

/// Which net queue the turn serves.
#[derive(Clone, Copy, Debug)]
pub enum NetQueue {
    /// The transmit queue of pair 0.
    Tx,
    /// The receive queue of pair 0, with these frames waiting on the tap.
    Rx {
        /// VIRTIO_NET_F_MRG_RXBUF.
        mergeable: bool,
        /// VIRTIO_NET_F_GUEST_CSUM.
        guest_csum: bool,
    },
    /// The control queue of a device with `pairs` queue pairs, `features` negotiated.
    Ctrl {
        /// Negotiated features.
        features: u64,
        /// Queue pairs the device serves.
        pairs: u16,
    },
}

/// Serves one net queue (`queue`, its rings in `mem`); `frames` wait on the stand-in tap for
/// a receive turn.
pub fn net_turn(mem: &GuestMemoryMmap, which: NetQueue, queue: Queue, frames: &[&[u8]]) -> NetTurn {
    let (tap, peer) = Tap::fake_pair("fuzz0");
    let tap = Arc::new(tap);
    for f in frames {
        // SAFETY: `f` is a live slice for the call; `peer` is an open socket.
        let _ = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&peer),
                f.as_ptr().cast(),
                f.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    let (features, pairs) = match which {
        NetQueue::Ctrl { features, pairs } => (features, pairs.max(1)),
        _ => (0, 1),
    };
    let mac = MacAddr([0x02, 0, 0, 0, 0, 1]);
    let config = Arc::new(Mutex::new(ConfigSpace::new(mac, pairs, 0)));
    let wakers = (0..pairs).map(|_| eventfd()).collect();
    let mut shared = Shared::new(tap.clone(), features, pairs, config.clone(), wakers);
    let faults = Arc::new(FaultLog::new("net"));
    shared.faults = faults.clone();
    let shared = Arc::new(shared);
    let counters = Arc::new(NetCounters::default());
    let vring = |index: u16, queue: Queue, counters: &Arc<NetCounters>| NetVring {
        index,
        queue,
        notifier: eventfd(),
        counters: counters.clone(),
    };
    let idle = || Queue::new(2).expect("a queue of 2");
    let (rx, tx, ctrl, mode) = match which {
        NetQueue::Tx => (
            vring(0, idle(), &Arc::default()),
            vring(1, queue, &counters),
            None,
            RxMode::default(),
        ),
        NetQueue::Rx {
            mergeable,
            guest_csum,
        } => (
            vring(0, queue, &counters),
            vring(1, idle(), &Arc::default()),
            None,
            RxMode {
                mergeable,
                guest_csum,
            },
        ),
        NetQueue::Ctrl { .. } => (
            vring(0, idle(), &Arc::default()),
            vring(1, idle(), &Arc::default()),
            Some(Ctrl {
                vring: vring(2, queue, &counters),
                shared: shared.clone(),
            }),
            RxMode::default(),
        ),
    };
    let irq = Arc::new(CountingInterrupt::default());
    let mut worker = PairWorker::new(PairParts {
        pair: 0,
        mem: mem.clone(),
        rx,
        tx,
        ctrl,
        tap: tap.queue(0).expect("one queue").clone(),
        kill: eventfd(),
        wake: eventfd(),
        interrupt: irq.clone(),
        shared: shared.clone(),
        mode,
    })
    .expect("epoll for the worker");
    for _ in 0..MAX_TURNS {
        match which {
            NetQueue::Tx => worker.process_tx(),
            NetQueue::Rx { .. } => worker.process_rx(),
            NetQueue::Ctrl { .. } => worker.process_ctrl(),
        }
    }
    let mut to_tap = Vec::new();
    let mut buf = vec![0u8; 1 << 17];
    loop {
        // SAFETY: `buf` is writable for its length; `peer` is an open socket.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&peer),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        // Negative: nothing more to read.
        let Ok(n) = usize::try_from(n) else {
            break;
        };
        to_tap.push(buf[..n].to_vec());
    }
    let mac = config.lock().unwrap_or_else(|e| e.into_inner()).mac().0;
    NetTurn {
        frames: load(&counters.frames),
        errors: load(&counters.errors),
        dropped: load(&counters.dropped),
        raised: Raised::of(&irq),
        faults: faults.counts(),
        to_tap,
        active_pairs: shared.active_pairs(),
        mac,
    }
}

/// A vsock turn.
#[derive(Clone, Debug, Default)]
pub struct VsockTurn {
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Malformed or misaddressed packets.
    pub bad_packets: u64,
    /// Guest connects refused.
    pub refused: u64,
    /// Replies dropped beyond the cap.
    pub replies_dropped: u64,
    /// Replies still waiting for receive buffers.
    pub replies_queued: usize,
    /// Transport-reset events delivered.
    pub events: u64,
    /// Interrupts and reset requests.
    pub raised: Raised,
    /// Guest mistakes recorded.
    pub faults: FaultCounts,
}

/// The vsock device's host side for fuzzing: its listener (nobody connects), in a private
/// directory where no forward socket exists, so every guest connect is refused.
pub struct VsockHost {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl VsockHost {
    /// Binds the listener in a new temporary directory.
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let listener = crate::devices::vsock::unix::bind(&dir.path().join("v.sock"))?;
        listener.set_nonblocking(true)?;
        Ok(Self { dir, listener })
    }

    fn uds_path(&self) -> PathBuf {
        self.dir.path().join("v.sock")
    }
}

/// A transmit turn on `tx`, then a receive turn on `rx` (replies for what the guest sent),
/// then, with an event queue, one transport-reset event.
pub fn vsock_turn(
    mem: &GuestMemoryMmap,
    host: &VsockHost,
    guest_cid: u64,
    rx: Queue,
    tx: Queue,
    event: Option<Queue>,
) -> VsockTurn {
    let counters = Arc::new(VsockCounters::default());
    let has_event = event.is_some();
    let muxer = Muxer {
        mem: mem.clone(),
        guest_cid,
        uds_path: host.uds_path(),
        listener: host.listener.try_clone().expect("listener clone"),
        rx: Some((rx, eventfd())),
        tx: Some((tx, eventfd())),
        event: event.map(|q| (q, eventfd())),
        reset_request: eventfd(),
        kill: eventfd(),
        counters: counters.clone(),
    };
    let (mut ctx, irq, faults) = context("vsock");
    let mut worker = FuzzWorker::new(muxer);
    for _ in 0..MAX_TURNS {
        worker.tx_turn(&mut ctx);
    }
    for _ in 0..MAX_TURNS {
        worker.rx_turn(&mut ctx);
    }
    if has_event {
        worker.event_turn(&mut ctx);
    }
    VsockTurn {
        tx_packets: load(&counters.tx_packets),
        rx_packets: load(&counters.rx_packets),
        bad_packets: load(&counters.bad_packets),
        refused: load(&counters.refused),
        replies_dropped: load(&counters.replies_dropped),
        replies_queued: worker.queued_replies(),
        events: load(&counters.events),
        raised: Raised::of(&irq),
        faults: faults.counts(),
    }
}

/// A console turn.
#[derive(Clone, Debug, Default)]
pub struct ConsoleTurn {
    /// Output chains completed.
    pub tx_chains: u64,
    /// Output bytes taken from the guest.
    pub tx_bytes: u64,
    /// Malformed output chains.
    pub tx_errors: u64,
    /// Receive chains completed.
    pub rx_chains: u64,
    /// Input bytes given to the guest.
    pub rx_bytes: u64,
    /// Malformed receive chains.
    pub rx_errors: u64,
    /// Interrupts and reset requests.
    pub raised: Raised,
    /// Guest mistakes recorded.
    pub faults: FaultCounts,
}

/// A pipe holding `input`, its write end closed: the console reads `input`, then end of file.
fn input_pipe(input: &[u8]) -> File {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array, valid for the call.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, mut write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // A pipe holds 64 KiB: more input than that is cut.
    let _ = write.write_all(&input[..input.len().min(60 << 10)]);
    read
}

/// An output turn on `tx`, then an input turn on `rx` with `input` waiting in a pipe.
pub fn console_turn(mem: &GuestMemoryMmap, rx: Queue, tx: Queue, input: &[u8]) -> ConsoleTurn {
    let rx_counters = Arc::new(ConsoleCounters::default());
    let tx_counters = Arc::new(ConsoleCounters::default());
    let sink = Sink::with_input(Output::None, input_pipe(input));
    let mut worker = ConsoleWorker::new(
        mem.clone(),
        Vring {
            index: 0,
            queue: rx,
            notifier: eventfd(),
            counters: rx_counters.clone(),
        },
        Vring {
            index: 1,
            queue: tx,
            notifier: eventfd(),
            counters: tx_counters.clone(),
        },
        sink,
        Arc::default(),
    );
    let (mut ctx, irq, faults) = context("console");
    for _ in 0..MAX_TURNS {
        worker.process_tx(&mut ctx);
    }
    for _ in 0..MAX_TURNS {
        worker.process_rx(&mut ctx);
    }
    ConsoleTurn {
        tx_chains: load(&tx_counters.chains),
        tx_bytes: load(&tx_counters.bytes),
        tx_errors: load(&tx_counters.errors),
        rx_chains: load(&rx_counters.chains),
        rx_bytes: load(&rx_counters.bytes),
        rx_errors: load(&rx_counters.errors),
        raised: Raised::of(&irq),
        faults: faults.counts(),
    }
}
