//! The probe: a small bare-metal guest (guest/probe) embedded in this crate, booted to check
//! that the VMM works end to end, and the report built from what it and the VMM saw.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use pulse_vmm::boot::{BootProtocol, KernelSource};
use pulse_vmm::config::VmConfig;
use pulse_vmm::devices::block::{BlockConfig, BlockHandle, DEFAULT_QUEUE_SIZE};
use pulse_vmm::devices::pseudo::phase_marker::{self, PhaseDelta};
use pulse_vmm::devices::serial::SerialOutput;
use pulse_vmm::devices::vsock::VsockConfig;
use pulse_vmm::exit::VmExit;
use pulse_vmm::mmio::TransportStats;
use pulse_vmm::vm::{MemoryUsage, Vm, VmError};

pub mod console_peer;
pub mod net_peer;
pub mod vsock_peer;

use console_peer::{ConsolePeer, ConsolePeerReport};
use net_peer::{NetPeer, NetPeerReport};
use pulse_vmm::devices::console::{ConsoleConfig, ConsoleSink};
use pulse_vmm::devices::net::{NetConfig, TapSource};
use vsock_peer::{PeerPlan, PeerReport, VsockPeer};

/// Frames the guest sends on every tx queue, and host frames every rx queue must deliver.
const NET_FRAMES: u32 = 16;
const NET_RX: u32 = 4;

/// The vsock echo server's guest port, and the host port the guest connects to.
const VSOCK_GUEST_PORT: u32 = 1234;
const VSOCK_HOST_PORT: u32 = 5000;
/// The probe VM's guest CID.
const VSOCK_CID: u64 = 3;

/// The probe guest ELF, built by build.rs.
pub static PROBE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pulse-probe.elf"));

/// The prefix of the probe's one JSON result line.
pub const RESULT_PREFIX: &str = "{\"probe\":";

/// Which interrupt mode the probe's virtio driver uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqMode {
    /// One MSI per queue.
    #[default]
    Msi,
    /// The device's single legacy line.
    Legacy,
}

impl std::str::FromStr for IrqMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "msi" => Ok(Self::Msi),
            "legacy" => Ok(Self::Legacy),
            _ => Err(format!(
                "unknown interrupt mode '{s}' (expected msi or legacy)"
            )),
        }
    }
}

/// How to run the probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// A virtio-blk device with this many queues (on a temporary disk image).
    pub blk_queues: Option<u16>,
    /// Interrupt mode of the guest driver.
    pub irq: IrqMode,
    /// Block requests per queue (half writes, half reads that verify them).
    pub requests: u32,
    /// A vsock device with this workload.
    pub vsock: Option<VsockWorkload>,
    /// A virtio-net device with this many queue pairs, on a tap the run creates.
    pub net_queues: Option<u16>,
    /// A virtio-console device, its host side a unix socket the run talks through.
    pub console: bool,
    /// The VMM offers per-queue MSI (off: the guest driver must fall back to legacy lines).
    pub offer_msi: bool,
    /// After the block workload the host doubles the disk while the guest runs; the guest
    /// must see the configuration-change interrupt and the new capacity.
    pub blk_resize: bool,
    /// The hostile mode: a block device (`blk_queues`, default 2), a net device (one pair), a
    /// vsock device and a console, and the guest breaks every rule of the transport and the
    /// devices instead of running the workloads, then checks they still work where they should
    /// (guest/probe/src/virtio/hostile/). The other workload options are ignored.
    pub hostile: bool,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory.
    pub memory_mib: u64,
    /// Entry convention.
    pub boot_protocol: BootProtocol,
    /// Extra `probe.*` words for the guest command line.
    pub extra_cmdline: Vec<String>,
    /// Copy the guest's serial output to stderr.
    pub echo_serial: bool,
    /// Stop the guest if it has not finished by then.
    pub timeout: Duration,
    /// The VMM's threads run under their seccomp filters (see [`pulse_vmm::confine`]).
    pub seccomp: bool,
}

/// The vsock workload: host connections echoed by the guest, one guest connection to a host
/// listener, and a transport reset at the end.
#[derive(Clone, Copy, Debug)]
pub struct VsockWorkload {
    /// Concurrent host connections.
    pub conns: u32,
    /// Bytes each sends and must get back.
    pub bytes: u32,
}

impl Default for VsockWorkload {
    fn default() -> Self {
        Self {
            conns: 100,
            bytes: 64 * 1024,
        }
    }
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            blk_queues: None,
            irq: IrqMode::Msi,
            requests: 32,
            vsock: None,
            net_queues: None,
            console: false,
            offer_msi: true,
            blk_resize: false,
            hostile: false,
            vcpus: 1,
            memory_mib: 64,
            boot_protocol: BootProtocol::Auto,
            extra_cmdline: Vec::new(),
            echo_serial: false,
            timeout: Duration::from_secs(120),
            seccomp: true,
        }
    }
}

/// What a probe run found.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// The guest reported success and left through the debug-exit port with status 0.
    pub ok: bool,
    /// The guest wrote the boot timer.
    pub booted: bool,
    /// vCPUs the guest brought online (0 if it never reported).
    pub vcpus: u64,
    /// vCPUs the VM was given.
    pub vcpus_configured: u8,
    /// The VMM's threads ran under their seccomp filters.
    pub seccomp: bool,
    /// Entry convention used.
    pub boot_protocol: &'static str,
    /// Milliseconds from VM start to the guest's boot-timer write.
    pub boot_ms: Option<f64>,
    /// Milliseconds from VM start to the VM's exit.
    pub run_ms: f64,
    /// Why the VM stopped.
    pub exit: VmExit,
    /// The guest's own JSON result line, if it printed one.
    pub guest: Option<Value>,
    /// Serial lines other than the result.
    pub serial: Vec<String>,
    /// Milliseconds from VM start to the guest's first serial output.
    pub first_output_ms: Option<f64>,
    /// Exits to userspace and KVM's own counters, for the run and for the workload alone.
    pub exits: ExitReport,
    /// VMM memory use at the end of the run.
    pub memory: MemoryUsage,
    /// Interrupt mode the guest was asked to use.
    pub irq_mode: IrqMode,
    /// The virtio devices: the VMM's view merged with the guest's counts.
    pub devices: Vec<DeviceReport>,
    /// The host side of the vsock workload.
    pub vsock_host: Option<PeerReport>,
    /// The host side of the net workload.
    pub net_host: Option<NetPeerReport>,
    /// The host side of the console workload.
    pub console_host: Option<ConsolePeerReport>,
    /// The host side of the resize test.
    pub resize_host: Option<ResizeHostReport>,
    /// Every interrupt the VMM raised on an MSI vector was taken by the guest, and no
    /// legacy line was taken more often than raised.
    pub interrupts_match: bool,
    /// Threads of this process through the run.
    pub threads: ThreadReport,
    /// The vsock device's own counters.
    pub vsock_device: Option<VsockDeviceReport>,
}

/// Threads: of the VMM's process before the VM and once it is gone; of the VMM's own
/// ([`pulse_vmm::confine::live_threads`]: the marks are taken on a vCPU thread, which may not open
/// /proc/self/task) at the guest's "workload starts" and "workload done" marks (the same
/// devices run at both). A worker that a device reset (or the VM's end) left behind shows as a
/// difference.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ThreadReport {
    /// Before the VM was created (and before the run's host peers started).
    pub before: Option<u64>,
    /// The VMM's own threads at the guest's first "workload starts" mark.
    pub at_start: Option<u64>,
    /// The VMM's own threads at the guest's first "workload done" mark after it.
    pub at_done: Option<u64>,
    /// After the VM was dropped and the host peers joined.
    pub after: Option<u64>,
}

impl ThreadReport {
    /// No thread left behind: as many at "done" as at "start", as many after as before.
    pub fn balanced(&self) -> bool {
        self.at_start == self.at_done && self.before == self.after
    }
}

/// The vsock device's counters at the end of the run.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct VsockDeviceReport {
    /// Connections that reached the established state.
    pub connections: u64,
    /// Host CONNECTs refused and guest connects that could not be forwarded.
    pub refused: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Malformed or misaddressed guest packets.
    pub bad_packets: u64,
    /// Control replies dropped beyond the cap.
    pub replies_dropped: u64,
    /// Control replies still waiting for guest buffers.
    pub replies_queued: u64,
}

/// Exit counts of a run.
#[derive(Clone, Debug, Serialize)]
pub struct ExitReport {
    /// Port-I/O exits handled in userspace, whole run.
    pub pio: u64,
    /// MMIO exits handled in userspace, whole run.
    pub mmio: u64,
    /// Accesses to addresses no device claims.
    pub unhandled: u64,
    /// KVM's counters summed over vCPUs, whole run (`exits` is every exit KVM saw).
    pub kvm: std::collections::BTreeMap<String, u64>,
    /// Between the guest's "workload starts" and "workload done" marks.
    pub workload: Option<PhaseDelta>,
}

/// One virtio device in the report.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// Device type.
    #[serde(rename = "type")]
    pub device_type: &'static str,
    /// Window base.
    pub base: String,
    /// Queues.
    pub queues: u16,
    /// MSI in effect (VMM view: enabled by the guest and routed).
    pub msi_enabled: bool,
    /// The guest driver says it runs in MSI mode.
    pub guest_msi: Option<bool>,
    /// MSI vectors.
    pub vectors: Vec<VectorReport>,
    /// The legacy line.
    pub legacy: LegacyReport,
    /// Requests the guest was asked to run on this device (block devices).
    pub requests_asked: Option<u64>,
    /// Requests the device completed (VMM view).
    pub requests_completed: u64,
    /// Read-back mismatches (guest view).
    pub data_errors: Option<u64>,
    /// The guest driver's account of a vsock workload.
    pub vsock: Option<Value>,
    /// The guest driver's account of a net workload.
    pub net: Option<Value>,
    /// The guest driver's account of a console workload.
    pub console: Option<Value>,
    /// The guest driver's account of the resize test.
    pub resize: Option<Value>,
    /// What the guest driver noted about the device (a fallback, an unused queue).
    pub guest_note: Option<String>,
    /// What the guest driver found wrong with the device.
    pub guest_errors: Vec<String>,
    /// Guest mistakes the transport counted.
    pub transport_errors: pulse_vmm::mmio::TransportErrors,
    /// Guest mistakes the device model counted, and the log lines they cost.
    pub faults: pulse_vmm::devices::worker::FaultCounts,
    /// The guest driver's account of the hostile mode.
    pub hostile: Option<Value>,
}

impl DeviceReport {
    /// The VMM's and the guest's interrupt counts agree: on each MSI vector the guest took
    /// exactly what was sent; the legacy line may merge edges, so at most what was sent.
    pub fn interrupts_match(&self) -> bool {
        let vectors = self
            .vectors
            .iter()
            .all(|v| v.received.is_none_or(|r| r == v.sent));
        let legacy = self.legacy.received.is_none_or(|r| r <= self.legacy.sent);
        vectors && legacy
    }
}

/// One MSI vector in the report.
#[derive(Clone, Debug, Serialize)]
pub struct VectorReport {
    /// Index (0 = config, q+1 = queue q).
    pub index: u16,
    /// `config` or `queue`.
    pub role: &'static str,
    /// Queue index for queue vectors.
    pub queue: Option<u16>,
    /// GSI.
    pub gsi: u32,
    /// Interrupts the host raised.
    pub sent: u64,
    /// Interrupts the device raised on the vector while the guest had programmed no message
    /// for it (never injected).
    pub dropped: u64,
    /// Interrupts the guest handled.
    pub received: Option<u64>,
    /// CPU the guest aimed the vector at.
    pub cpu: Option<u64>,
}

/// The legacy line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct LegacyReport {
    /// GSI.
    pub gsi: u32,
    /// Interrupts raised on it.
    pub sent: u64,
    /// Interrupts the guest handled on it.
    pub received: Option<u64>,
}

/// What the host did in the resize test.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResizeHostReport {
    /// Capacity in bytes after the change.
    pub capacity: u64,
    /// Why it did not happen.
    pub error: Option<String>,
}

/// Waits for the guest's "change my disk" mark, then doubles the disk and reloads it.
struct Resizer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ResizeHostReport>,
}

/// The guest's phase mark that asks for the resize.
const PHASE_RESIZE: u8 = 3;

impl Resizer {
    fn start(marks: pulse_vmm::devices::pseudo::phase_marker::Marks, block: BlockHandle) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let asked = || {
                marks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|m| m.phase == PHASE_RESIZE)
            };
            while !asked() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return ResizeHostReport {
                        error: Some("the guest never asked for the resize".into()),
                        ..ResizeHostReport::default()
                    };
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let grow = || -> Result<u64, String> {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(block.path())
                    .map_err(|e| e.to_string())?;
                let size = file.metadata().map_err(|e| e.to_string())?.len();
                file.set_len(size * 2).map_err(|e| e.to_string())?;
                block.reload(None).map_err(|e| e.to_string())
            };
            match grow() {
                Ok(capacity) => ResizeHostReport {
                    capacity,
                    error: None,
                },
                Err(e) => ResizeHostReport {
                    capacity: 0,
                    error: Some(e),
                },
            }
        });
        Self { stop, thread }
    }

    fn finish(self) -> ResizeHostReport {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or_else(|_| ResizeHostReport {
            error: Some("resizer panicked".into()),
            ..ResizeHostReport::default()
        })
    }
}

/// Why a probe run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The VM did not start.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The temporary disk image could not be made.
    #[error("cannot create the probe's disk image: {0}")]
    Disk(std::io::Error),
    /// The vsock sockets could not be set up.
    #[error("cannot set up the probe's vsock sockets: {0}")]
    Vsock(std::io::Error),
}

/// Boots the embedded probe with `options` and collects the report.
pub fn run(options: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let threads_before = pulse_vmm::metrics::process_threads();
    if options.hostile {
        return run_hostile(options, threads_before);
    }
    let started = Instant::now();
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(KernelSource::Bytes(Arc::from(PROBE_ELF)));
    config.vcpus = options.vcpus;
    config.memory_mib = options.memory_mib;
    config.boot_protocol = options.boot_protocol;
    config.msi = options.offer_msi;
    config.seccomp = options.seccomp;
    config.test_devices = true;
    config.serial = SerialOutput::Capture {
        buffer: buffer.clone(),
        echo: options.echo_serial,
    };
    let mut words = vec![
        "console=ttyS0".to_string(),
        format!("probe.cpus={}", options.vcpus),
    ];
    // The disk lives as long as the run; the temporary file is removed when it drops.
    let mut disk = None;
    if let Some(queues) = options.blk_queues {
        let per_queue = u64::from(options.requests).div_ceil(2) * 4096;
        let size = (u64::from(queues) * per_queue).max(16 << 20);
        let file = tempfile::NamedTempFile::new().map_err(ProbeError::Disk)?;
        file.as_file().set_len(size).map_err(ProbeError::Disk)?;
        config.block.push(BlockConfig {
            path: file.path().to_path_buf(),
            read_only: false,
            queues,
            queue_size: DEFAULT_QUEUE_SIZE,
            serial: Some("probe-disk".into()),
        });
        disk = Some(file);
        words.push(format!("probe.irq={}", irq_word(options.irq)));
        words.push(format!("probe.requests={}", options.requests));
        if options.blk_resize {
            words.push("probe.blk.resize=1".to_string());
        }
    }
    if options.blk_queues.is_none()
        && (options.vsock.is_some() || options.net_queues.is_some() || options.console)
    {
        words.push(format!("probe.irq={}", irq_word(options.irq)));
    }
    if let Some(pairs) = options.net_queues {
        config.net.push(NetConfig {
            tap: TapSource::Name(format!("pprobe{}", std::process::id() % 100_000)),
            queue_pairs: pairs,
            ..NetConfig::new("")
        });
        words.push(format!(
            "probe.net.frames={NET_FRAMES} probe.net.rx={NET_RX}"
        ));
    }
    // The sockets live in a private directory that goes with the run.
    let sockets = if options.vsock.is_some() || options.console {
        Some(tempfile::tempdir().map_err(ProbeError::Vsock)?)
    } else {
        None
    };
    let console_path = sockets.as_ref().map(|d| d.path().join("console.sock"));
    if options.console {
        config.console = Some(ConsoleConfig {
            sink: ConsoleSink::UnixSocket(console_path.clone().expect("socket directory")),
        });
        words.push("probe.console.echo=1".to_string());
    }
    let mut peer = None;
    if let (Some(w), Some(dir)) = (options.vsock, &sockets) {
        let uds = dir.path().join("vsock.sock");
        config.vsock = Some(VsockConfig {
            guest_cid: VSOCK_CID,
            uds_path: uds.clone(),
        });
        words.push(format!(
            "probe.vsock.listen={VSOCK_GUEST_PORT} probe.vsock.conns={} probe.vsock.bytes={} \
             probe.vsock.connect={VSOCK_HOST_PORT} probe.vsock.events=1",
            w.conns, w.bytes
        ));
        peer = Some(
            VsockPeer::bind(PeerPlan {
                uds,
                guest_port: VSOCK_GUEST_PORT,
                conns: w.conns,
                bytes: w.bytes,
                listen_port: VSOCK_HOST_PORT,
                resets: 1,
            })
            .map_err(ProbeError::Vsock)?,
        );
    }
    words.extend(options.extra_cmdline.iter().cloned());
    config.cmdline = words.join(" ");

    let mut vm = Vm::start(&config)?;
    let peer = peer.map(|p| p.start(vm.vsock().cloned()));
    let net_peer = options
        .net_queues
        .zip(vm.nets().first().cloned())
        .map(|(pairs, net)| NetPeer::start(net, pairs, NET_RX));
    let console_peer = console_path
        .filter(|_| options.console)
        .map(ConsolePeer::start);
    let resizer = match (options.blk_resize, vm.blocks().first()) {
        (true, Some(block)) => Some(Resizer::start(vm.phase_marks_handle(), block.clone())),
        _ => None,
    };
    let exit = vm.wait(Some(options.timeout));
    let vsock_host = peer.map(|p| p.finish());
    let net_host = net_peer.map(NetPeer::finish);
    let console_host = console_peer.map(ConsolePeer::finish);
    let resize_host = resizer.map(Resizer::finish);
    let run_ms = started.elapsed().as_secs_f64() * 1000.0;
    let memory = vm.memory_usage();
    let exits = vm.metrics();
    let kvm_exits = vm.kvm_stats();
    let workload = phase_marker::delta(&vm.phase_marks(), 1, 2);
    let device_stats = vm.device_stats();
    let boot_protocol = vm.entry().protocol_name();
    let marks = vm.phase_marks();
    let vsock_device = vm.vsock().map(vsock_device_report);
    drop(vm);
    drop(disk);
    drop(sockets);
    let threads = thread_report(threads_before, &marks);

    let output =
        String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let (guest, serial) = parse_serial(&output);
    let guest_ok = guest
        .as_ref()
        .and_then(|g| g.get("ok"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let vcpus = guest
        .as_ref()
        .and_then(|g| g.get("cpus_online"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let devices: Vec<DeviceReport> = device_stats
        .iter()
        .map(|d| merge_device(d, guest.as_ref(), u64::from(options.requests)))
        .collect();
    let host_ok = vsock_host.as_ref().is_none_or(|(plan, r)| r.ok(plan))
        && net_host.as_ref().is_none_or(|r| r.ok(NET_FRAMES, NET_RX))
        && console_host.as_ref().is_none_or(|r| r.ok)
        && resize_host.as_ref().is_none_or(|r| r.error.is_none());
    let interrupts_match = devices.iter().all(DeviceReport::interrupts_match);
    Ok(ProbeReport {
        irq_mode: options.irq,
        devices,
        vsock_host: vsock_host.map(|(_, r)| r),
        net_host,
        console_host,
        resize_host,
        first_output_ms: exits.first_output_ms,
        ok: guest_ok && host_ok && interrupts_match && exit == VmExit::DebugExit(0),
        interrupts_match,
        booted: exits.boot_timer_ms.is_some(),
        vcpus,
        vcpus_configured: options.vcpus,
        seccomp: options.seccomp,
        boot_protocol,
        boot_ms: exits.boot_timer_ms,
        run_ms,
        exit,
        guest,
        serial,
        exits: ExitReport {
            pio: exits.pio_exits,
            mmio: exits.mmio_exits,
            unhandled: exits.unhandled_accesses,
            kvm: kvm_exits,
            workload,
        },
        memory,
        threads,
        vsock_device,
    })
}

/// The threads at the start and end of the run and at the guest's first start/done marks.
fn thread_report(
    before: Option<u64>,
    marks: &[pulse_vmm::devices::pseudo::phase_marker::PhaseMark],
) -> ThreadReport {
    let start = marks.iter().position(|m| m.phase == 1);
    let at_start = start.and_then(|i| marks[i].threads);
    let at_done = start
        .and_then(|i| marks[i..].iter().find(|m| m.phase == 2))
        .and_then(|m| m.threads);
    ThreadReport {
        before,
        at_start,
        at_done,
        after: pulse_vmm::metrics::process_threads(),
    }
}

fn vsock_device_report(handle: &pulse_vmm::devices::vsock::VsockHandle) -> VsockDeviceReport {
    use std::sync::atomic::Ordering::Relaxed;
    let c = handle.counters();
    VsockDeviceReport {
        connections: c.connections.load(Relaxed),
        refused: c.refused.load(Relaxed),
        tx_packets: c.tx_packets.load(Relaxed),
        rx_packets: c.rx_packets.load(Relaxed),
        bad_packets: c.bad_packets.load(Relaxed),
        replies_dropped: c.replies_dropped.load(Relaxed),
        replies_queued: c.replies_queued.load(Relaxed),
    }
}

/// The hostile mode: every device type, the guest as an adversary (see
/// [`ProbeOptions::hostile`]). The report is the usual one; `ok` also needs every thread a
/// device started to be gone when it should be ([`ThreadReport::balanced`]).
fn run_hostile(
    options: &ProbeOptions,
    threads_before: Option<u64>,
) -> Result<ProbeReport, ProbeError> {
    let started = Instant::now();
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(KernelSource::Bytes(Arc::from(PROBE_ELF)));
    config.vcpus = options.vcpus;
    config.memory_mib = options.memory_mib;
    config.boot_protocol = options.boot_protocol;
    config.seccomp = options.seccomp;
    config.test_devices = true;
    config.serial = SerialOutput::Capture {
        buffer: buffer.clone(),
        echo: options.echo_serial,
    };
    let disk = tempfile::NamedTempFile::new().map_err(ProbeError::Disk)?;
    disk.as_file().set_len(16 << 20).map_err(ProbeError::Disk)?;
    config.block.push(BlockConfig {
        path: disk.path().to_path_buf(),
        read_only: false,
        queues: options.blk_queues.unwrap_or(2),
        queue_size: DEFAULT_QUEUE_SIZE,
        serial: Some("probe-disk".into()),
    });
    config.net.push(NetConfig {
        tap: TapSource::Name(format!("phost{}", std::process::id() % 100_000)),
        queue_pairs: 1,
        ..NetConfig::new("")
    });
    let sockets = tempfile::tempdir().map_err(ProbeError::Vsock)?;
    config.vsock = Some(VsockConfig {
        guest_cid: VSOCK_CID,
        uds_path: sockets.path().join("vsock.sock"),
    });
    config.console = Some(ConsoleConfig {
        sink: ConsoleSink::UnixSocket(sockets.path().join("console.sock")),
    });
    let mut words = vec![
        "console=ttyS0".to_string(),
        format!("probe.cpus={}", options.vcpus),
        "probe.irq=msi".to_string(),
        "probe.hostile=1".to_string(),
    ];
    words.extend(options.extra_cmdline.iter().cloned());
    config.cmdline = words.join(" ");

    let mut vm = Vm::start(&config)?;
    let exit = vm.wait(Some(options.timeout));
    let run_ms = started.elapsed().as_secs_f64() * 1000.0;
    let memory = vm.memory_usage();
    let exits = vm.metrics();
    let kvm_exits = vm.kvm_stats();
    let marks = vm.phase_marks();
    let workload = phase_marker::delta(&marks, 1, 2);
    let device_stats = vm.device_stats();
    let boot_protocol = vm.entry().protocol_name();
    let vsock_device = vm.vsock().map(vsock_device_report);
    drop(vm);
    drop(disk);
    drop(sockets);
    let threads = thread_report(threads_before, &marks);

    let output =
        String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let (guest, serial) = parse_serial(&output);
    let guest_ok = guest
        .as_ref()
        .and_then(|g| g.get("ok"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let vcpus = guest
        .as_ref()
        .and_then(|g| g.get("cpus_online"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let devices: Vec<DeviceReport> = device_stats
        .iter()
        .map(|d| merge_device(d, guest.as_ref(), 0))
        .collect();
    let interrupts_match = devices.iter().all(DeviceReport::interrupts_match);
    Ok(ProbeReport {
        ok: guest_ok && interrupts_match && threads.balanced() && exit == VmExit::DebugExit(0),
        irq_mode: IrqMode::Msi,
        seccomp: options.seccomp,
        devices,
        vsock_host: None,
        net_host: None,
        console_host: None,
        resize_host: None,
        first_output_ms: exits.first_output_ms,
        interrupts_match,
        booted: exits.boot_timer_ms.is_some(),
        vcpus,
        vcpus_configured: options.vcpus,
        boot_protocol,
        boot_ms: exits.boot_timer_ms,
        run_ms,
        exit,
        guest,
        serial,
        exits: ExitReport {
            pio: exits.pio_exits,
            mmio: exits.mmio_exits,
            unhandled: exits.unhandled_accesses,
            kvm: kvm_exits,
            workload,
        },
        memory,
        threads,
        vsock_device,
    })
}

fn irq_word(mode: IrqMode) -> &'static str {
    match mode {
        IrqMode::Msi => "msi",
        IrqMode::Legacy => "legacy",
    }
}

/// The guest's entry for the device at `base`, if it reported one.
fn guest_device(guest: Option<&Value>, base: u64) -> Option<&Value> {
    let wanted = format!("{base:#x}");
    guest?
        .get("devices")?
        .as_array()?
        .iter()
        .find(|d| d.get("base").and_then(Value::as_str) == Some(wanted.as_str()))
}

/// Merges the VMM's counters of a device with what the guest reported about it.
fn merge_device(
    stats: &TransportStats,
    guest: Option<&Value>,
    requests_per_queue: u64,
) -> DeviceReport {
    let g = guest_device(guest, stats.base);
    let guest_vector = |index: u16| {
        g.and_then(|g| g.get("vectors"))
            .and_then(Value::as_array)
            .and_then(|v| {
                v.iter()
                    .find(|e| e.get("index").and_then(Value::as_u64) == Some(u64::from(index)))
            })
    };
    let vectors = stats
        .vectors
        .iter()
        .map(|v| {
            let gv = guest_vector(v.index);
            let (role, queue) = match v.role {
                pulse_vmm::interrupts::VectorRole::Config => ("config", None),
                pulse_vmm::interrupts::VectorRole::Queue(q) => ("queue", Some(q)),
            };
            VectorReport {
                index: v.index,
                role,
                queue,
                gsi: v.gsi,
                sent: v.sent,
                dropped: v.dropped,
                received: gv.and_then(|e| e.get("received")).and_then(Value::as_u64),
                cpu: gv.and_then(|e| e.get("cpu")).and_then(Value::as_u64),
            }
        })
        .collect();
    DeviceReport {
        device_type: stats.device_type,
        base: format!("{:#x}", stats.base),
        queues: stats.queues,
        msi_enabled: stats.msi_enabled,
        guest_msi: g.and_then(|g| g.get("msi")).and_then(Value::as_bool),
        vectors,
        legacy: LegacyReport {
            gsi: stats.legacy_gsi,
            sent: stats.legacy_sent,
            received: g
                .and_then(|g| g.get("legacy_received"))
                .and_then(Value::as_u64),
        },
        // The probe drives at most 16 queues of a device (it says so in its note).
        requests_asked: (stats.device_type == "block").then(|| {
            requests_per_queue
                * g.and_then(|g| g.get("queues"))
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::from(stats.queues))
        }),
        vsock: g.and_then(|g| g.get("vsock")).cloned(),
        net: g.and_then(|g| g.get("net")).cloned(),
        console: g.and_then(|g| g.get("console")).cloned(),
        resize: g.and_then(|g| g.get("resize")).cloned(),
        guest_note: g
            .and_then(|g| g.get("note"))
            .and_then(Value::as_str)
            .map(str::to_string),
        guest_errors: g
            .and_then(|g| g.get("errors"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        requests_completed: stats.requests_completed.iter().sum(),
        data_errors: g.and_then(|g| g.get("data_errors")).and_then(Value::as_u64),
        transport_errors: stats.errors.clone(),
        faults: stats.faults.clone(),
        hostile: g.and_then(|g| g.get("hostile")).cloned(),
    }
}

/// Splits serial output into the probe's JSON result (the last valid one) and the other lines.
pub fn parse_serial(output: &str) -> (Option<Value>, Vec<String>) {
    let mut result = None;
    let mut lines = Vec::new();
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with(RESULT_PREFIX) {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => result = Some(v),
                Err(_) => lines.push(line.to_string()),
            }
        } else if !line.is_empty() {
            lines.push(line.to_string());
        }
    }
    (result, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_probe_is_an_elf() {
        assert_eq!(&PROBE_ELF[..4], b"\x7fELF");
    }

    #[test]
    fn serial_output_is_split() {
        let (json, lines) = parse_serial(
            "pulse-probe 0.1.0: booted via pvh\r\n{\"probe\":\"pulse-probe\",\"ok\":true}\n{\"probe\": broken\n",
        );
        assert_eq!(json.unwrap()["ok"], Value::Bool(true));
        assert_eq!(lines.len(), 2);
    }
}
