//! Assembling a VM from its configuration, running it, and taking it down.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootInputs, EntryPoint};
use crate::bus::{Bus, BusError};
use crate::config::{ConfigError, VmConfig};
use crate::confine::{self, ConfineError, PolicyScope};
use crate::devices::block::{Block, BlockError, BlockHandle};
use crate::devices::boot_timer::BootTimer;
use crate::devices::console::{Console, ConsoleError};
use crate::devices::net::{Net, NetError, QueueCounters as NetQueueCounters};
use crate::devices::pseudo::debug_exit::DebugExit;
use crate::devices::pseudo::phase_marker::{Marks, PhaseMark, PhaseMarker};
use crate::devices::reset::{ResetControl, RESET_PORT};
use crate::devices::serial::{open_output, SerialDevice, SerialOutput};
use crate::devices::virtio::VirtioDevice;
use crate::devices::vsock::{Vsock, VsockError, VsockHandle};
use crate::event_loop::{EventLoop, EventLoopError, SerialInput, Subscriber};
use crate::exit::{ExitController, VmExit};
use crate::interrupts::{DeviceInterrupts, InterruptError, InterruptManager};
use crate::kvm::{self, KvmError};
use crate::layout;
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::metrics::{process_rss_bytes, MetricsSnapshot, VmMetrics};
use crate::mmio::transport::TransportError;
use crate::mmio::{self, MmioTransport, TransportStats};
use crate::vcpu::{kick_signal, Vcpu, VcpuContext, VcpuError};

/// Everything that can stop a VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory setup failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Writing the boot page tables failed.
    #[error(transparent)]
    Cpu(#[from] boot::cpu::CpuError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Two devices claim the same addresses.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The serial output cannot be opened.
    #[error("cannot open serial output: {0}")]
    SerialOutput(std::io::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    /// Wiring an interrupt failed.
    #[error("cannot wire {what} interrupt: {source}")]
    Irq {
        /// Which interrupt.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Interrupt resources could not be set up.
    #[error(transparent)]
    Interrupts(#[from] InterruptError),
    /// A block device cannot be created.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The vsock device cannot be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A network card cannot be created.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The console cannot be created.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The virtio-fs device cannot reach its backend.
    #[error(transparent)]
    Fs(#[from] crate::devices::fs::FsError),
    /// A virtio-mmio window cannot be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// More devices than legacy lines.
    #[error("{0} virtio devices requested, at most {max} fit", max = mmio::MAX_DEVICES)]
    TooManyDevices(usize),
    /// The event loop could not start.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// What confines the VMM's threads could not be set up.
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

/// The virtio devices of `config`, in slot order (disks, network cards, vsock, console, fs),
/// and the handles the VM keeps to watch or control them while they run.
struct VirtioDevices {
    devices: Vec<Box<dyn VirtioDevice>>,
    blocks: Vec<BlockHandle>,
    vsock: Option<VsockHandle>,
    nets: Vec<NetHandle>,
}

/// What the VM keeps of a network card: its tap, MAC and per-queue counters.
#[derive(Clone, Debug)]
pub struct NetHandle {
    /// The tap's interface name.
    pub tap: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// Counters per queue: rx0, tx0, rx1, tx1, ..., control.
    pub counters: Vec<Arc<NetQueueCounters>>,
}

fn create_virtio_devices(config: &VmConfig) -> Result<VirtioDevices, VmError> {
    let count = config.block.len()
        + config.net.len()
        + usize::from(config.vsock.is_some())
        + usize::from(config.console.is_some())
        + usize::from(config.fs.is_some());
    if count > mmio::MAX_DEVICES as usize {
        return Err(VmError::TooManyDevices(count));
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::with_capacity(count);
    let mut blocks = Vec::new();
    for block in &config.block {
        let block = Block::new(block.clone())?;
        blocks.push(block.handle());
        devices.push(Box::new(block));
    }
    let mut nets = Vec::new();
    for net in &config.net {
        let net = Net::new(net.clone())?;
        nets.push(NetHandle {
            tap: net.tap_name().to_string(),
            mac: net.mac().0,
            counters: net.counters().to_vec(),
        });
        devices.push(Box::new(net));
    }
    let mut vsock_handle = None;
    if let Some(config) = &config.vsock {
        let vsock = Vsock::new(config.clone())?;
        vsock_handle = Some(vsock.handle()?);
        devices.push(Box::new(vsock));
    }
    if let Some(config) = &config.console {
        devices.push(Box::new(Console::new(config.clone())?));
    }
    if let Some(config) = &config.fs {
        devices.push(Box::new(crate::devices::fs::Fs::new(config.clone())?));
    }
    Ok(VirtioDevices {
        devices,
        blocks,
        vsock: vsock_handle,
        nets,
    })
}

/// Memory use of the VMM process, with the guest's own pages taken out.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct MemoryUsage {
    /// Process resident set, KiB.
    pub rss_kib: u64,
    /// Guest RAM pages resident on the host, KiB.
    pub guest_resident_kib: u64,
    /// The difference: what the VMM itself costs, KiB.
    pub overhead_kib: u64,
}

impl MemoryUsage {
    /// The memory use of the VMM process `pid`, this one or another VMM run for comparison,
    /// seen from outside through /proc/PID/smaps: its guest RAM is the one mapping of
    /// `guest_kib` (or up to 4 MiB more: QEMU rounds it up a little). None once the process is
    /// gone.
    pub fn of_process(pid: u32, guest_kib: u64) -> Option<Self> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
        Self::from_smaps(&smaps, guest_kib)
    }

    fn from_smaps(smaps: &str, guest_kib: u64) -> Option<Self> {
        let (mut rss, mut guest, mut size) = (0u64, 0u64, 0u64);
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                // Each mapping's Size comes before its Rss.
                Some("Size:") => size = words.next()?.parse().ok()?,
                Some("Rss:") => {
                    let kib: u64 = words.next()?.parse().ok()?;
                    rss += kib;
                    if (guest_kib..=guest_kib + 4096).contains(&size) {
                        guest += kib;
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            rss_kib: rss,
            guest_resident_kib: guest,
            overhead_kib: rss.saturating_sub(guest),
        })
    }
}

/// A handle that can stop a running VM from any thread.
#[derive(Clone)]
pub struct VmHandle(Arc<ExitController>);

impl VmHandle {
    /// Asks the VM to stop; [`Vm::wait`] then returns [`VmExit::Requested`] unless the guest
    /// stopped first.
    pub fn request_stop(&self) {
        self.0.request(VmExit::Requested);
    }
}

/// A running VM. Dropping it stops it and joins every thread.
pub struct Vm {
    exit: Arc<ExitController>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_loop: EventLoop,
    metrics: Arc<VmMetrics>,
    entry: EntryPoint,
    vcpus: u8,
    cmdline: String,
    // Dropped before the VM fd: stopping a device joins its workers and detaches its irqfds.
    devices: Vec<Arc<Mutex<MmioTransport>>>,
    blocks: Vec<BlockHandle>,
    vsock: Option<VsockHandle>,
    nets: Vec<NetHandle>,
    vcpu_stats: Arc<std::sync::OnceLock<Vec<crate::kvm_stats::StatsFd>>>,
    marks: Marks,
    // Declared before the memory so that KVM lets go of the slots before the mapping goes.
    _vm_fd: Arc<VmFd>,
    memory: GuestMemoryMmap,
    // Last: the spawner (shared by the process's VMs) may stop once every thread of this VM,
    // device workers included, has been joined.
    _spawner: Option<confine::spawner::Lease>,
}

impl Vm {
    /// Validates `config`, builds the VM and starts its vCPUs. Every thread of the VM is
    /// confined (see [`crate::confine`]) under `config.confinement()`; the calling thread is
    /// left as it is.
    pub fn start(config: &VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        config.validate()?;
        let policy = config.confinement();
        let spawner = confine::prepare(policy)?;
        // The threads started below (and, through them, the devices' workers) get the policy.
        let _policy = PolicyScope::enter(policy);
        let metrics = Arc::new(VmMetrics::new(started));
        let exit = Arc::new(ExitController::new().map_err(EventLoopError::Setup)?);

        let kvm = kvm::open_kvm()?;
        let vm_fd = Arc::new(kvm::create_vm(&kvm, config.vcpus)?);
        // A vhost-user backend maps guest memory itself: it must come from a memfd.
        let memory = if config.fs.is_some() {
            memory::create_shared_guest_memory(config.memory_mib)?
        } else {
            memory::create_guest_memory(config.memory_mib)?
        };
        memory::register_with_kvm(&vm_fd, &memory)?;
        let interrupts = InterruptManager::new(vm_fd.clone())?;

        // virtio-mmio devices, one 8 KiB window and one legacy line each, announced on the
        // kernel command line.
        let VirtioDevices {
            devices: virtio_devices,
            blocks,
            vsock,
            nets,
        } = create_virtio_devices(config)?;
        let mut mmio = Bus::new();
        let mut devices = Vec::new();
        let mut cmdline = config.cmdline.clone();
        for (slot, device) in (0u32..).zip(virtio_devices) {
            let (base, gsi) = (mmio::slot_base(slot), mmio::slot_gsi(slot));
            // A handful of queues per device (a net device's pairs are capped by its config).
            let queues = u16::try_from(device.queue_max_sizes().len()).unwrap_or(u16::MAX);
            let irq = DeviceInterrupts::new(interrupts.clone(), gsi, queues)?;
            let mut transport = MmioTransport::new(&vm_fd, base, device, memory.clone(), irq)?;
            transport.set_msi_offered(config.msi);
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(transport.clone(), base, layout::MMIO_DEVICE_WINDOW)?;
            devices.push(transport);
            cmdline.push(' ');
            cmdline.push_str(&mmio::cmdline_entry(base, gsi));
        }

        let setup = boot::load_guest(
            &memory,
            &BootInputs {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &cmdline,
                protocol: config.boot_protocol,
                vcpus: config.vcpus,
            },
        )?;
        boot::cpu::write_boot_tables(&memory)?;

        // Legacy devices on the port-I/O bus.
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmError::Irq {
            what: "serial",
            source,
        })?;
        vm_fd
            .register_irqfd(&serial_irq, layout::SERIAL_COM1_GSI)
            .map_err(|e| VmError::Irq {
                what: "serial",
                source: e.into(),
            })?;
        let serial_out = open_output(&config.serial).map_err(VmError::SerialOutput)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq,
            serial_out,
            metrics.clone(),
        )));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), u64::from(layout::SERIAL_COM1_PORT), 8)?;
        pio.insert(
            Arc::new(Mutex::new(BootTimer::new(metrics.clone()))),
            u64::from(layout::BOOT_TIMER_PORT),
            1,
        )?;
        pio.insert(
            Arc::new(Mutex::new(ResetControl::new(exit.clone()))),
            u64::from(RESET_PORT),
            1,
        )?;
        let kvm_stats = Arc::new(std::sync::OnceLock::new());
        let marks: Marks = Arc::default();
        if config.test_devices {
            pio.insert(
                Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
                u64::from(layout::DEBUG_EXIT_PORT),
                1,
            )?;
            pio.insert(
                Arc::new(Mutex::new(PhaseMarker::new(
                    metrics.clone(),
                    kvm_stats.clone(),
                    marks.clone(),
                ))),
                u64::from(layout::PHASE_MARKER_PORT),
                1,
            )?;
        }

        let mut subscribers: Vec<Subscriber> = Vec::new();
        if matches!(config.serial, SerialOutput::Stdout) {
            subscribers.push(Arc::new(Mutex::new(SerialInput::new(serial.clone()))));
        }
        let event_loop = EventLoop::start(subscribers)?;

        let supported_cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        let mut vcpu_stats = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let vcpu = Vcpu::new(&vm_fd, index)?;
            let entry = (index == 0).then_some(setup.entry);
            vcpu.configure(&supported_cpuid, config.vcpus, entry)?;
            match vcpu.stats() {
                Ok(stats) => vcpu_stats.push(stats),
                Err(e) => tracing::warn!("no KVM statistics for vCPU {index}: {e}"),
            }
            vcpus.push(vcpu);
        }
        let _ = kvm_stats.set(vcpu_stats);
        let ctx = VcpuContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit: exit.clone(),
            metrics: metrics.clone(),
        };
        let mut vm = Vm {
            exit,
            vcpu_threads: Vec::new(),
            event_loop,
            metrics,
            entry: setup.entry,
            vcpus: config.vcpus,
            cmdline,
            devices,
            blocks,
            vsock,
            nets,
            vcpu_stats: kvm_stats,
            marks,
            _vm_fd: vm_fd,
            memory,
            _spawner: spawner,
        };
        for vcpu in vcpus {
            // On failure `vm` is dropped here, which stops the vCPUs already started.
            let thread = vcpu.spawn(ctx.clone())?;
            vm.vcpu_threads.push(thread);
        }
        tracing::debug!(
            setup_ms = started.elapsed().as_secs_f64() * 1000.0,
            protocol = setup.entry.protocol_name(),
            "VM started"
        );
        Ok(vm)
    }

    /// Why the VM stopped, if it has (the guest reset, a triple fault, a stop request...);
    /// `None` while it runs. Does not block; [`Vm::wait`] still joins the threads.
    pub fn exit_reason(&self) -> Option<VmExit> {
        self.exit.reason()
    }

    /// A handle to stop this VM from another thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle(self.exit.clone())
    }

    /// How the boot vCPU entered the guest.
    pub fn entry(&self) -> EntryPoint {
        self.entry
    }

    /// vCPU count.
    pub fn vcpus(&self) -> u8 {
        self.vcpus
    }

    /// The kernel command line the guest got (with the device entries).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The vsock device's control handle, if the VM has one.
    pub fn vsock(&self) -> Option<&VsockHandle> {
        self.vsock.as_ref()
    }

    /// The block devices, in configuration order: handles to swap or re-read their images
    /// while the guest runs (the guest gets a configuration-change interrupt).
    pub fn blocks(&self) -> &[BlockHandle] {
        &self.blocks
    }

    /// The network cards: taps, MACs, per-queue counters.
    pub fn nets(&self) -> &[NetHandle] {
        &self.nets
    }

    /// What each virtio device did: queues, MSI state, per-vector counters, errors.
    pub fn device_stats(&self) -> Vec<TransportStats> {
        self.devices
            .iter()
            .map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).stats())
            .collect()
    }

    /// KVM's own counters (exits, halts, ...), summed over the vCPUs.
    pub fn kvm_stats(&self) -> std::collections::BTreeMap<String, u64> {
        let all: Vec<_> = self
            .vcpu_stats
            .get()
            .into_iter()
            .flatten()
            .filter_map(|s| s.read().ok())
            .collect();
        crate::kvm_stats::sum(&all)
    }

    /// The list the guest's phase marks go into, to watch from another thread.
    pub fn phase_marks_handle(&self) -> Marks {
        self.marks.clone()
    }

    /// The guest's phase marks so far.
    pub fn phase_marks(&self) -> Vec<PhaseMark> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Current memory use of the VMM, guest pages taken out.
    pub fn memory_usage(&self) -> MemoryUsage {
        let rss = process_rss_bytes().unwrap_or(0);
        let guest = memory::resident_bytes(&self.memory);
        MemoryUsage {
            rss_kib: rss / 1024,
            guest_resident_kib: guest / 1024,
            overhead_kib: rss.saturating_sub(guest) / 1024,
        }
    }

    /// Waits until the VM stops (or `timeout` passes: then it is stopped with
    /// [`VmExit::Requested`]), and joins its threads.
    pub fn wait(&mut self, timeout: Option<Duration>) -> VmExit {
        let exit = match self.exit.wait_timeout(timeout) {
            Some(exit) => exit,
            None => {
                self.exit.request(VmExit::Requested);
                self.exit.reason().unwrap_or(VmExit::Requested)
            }
        };
        self.teardown();
        exit
    }

    /// Stops the VM now.
    pub fn stop(&mut self) -> VmExit {
        self.exit.request(VmExit::Requested);
        self.wait(None)
    }

    fn teardown(&mut self) {
        self.exit.request(VmExit::Requested);
        for thread in self.vcpu_threads.drain(..) {
            // A vCPU may sit in KVM_RUN (guest code, HLT, or waiting for SIPI): the signal makes
            // KVM_RUN return, the thread sees the stop flag and ends. Repeat in case the signal
            // landed just before KVM_RUN was entered.
            while !thread.is_finished() {
                if let Err(e) = thread.kill(kick_signal()) {
                    tracing::warn!("cannot signal a vCPU thread: {e}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = thread.join();
        }
        self.event_loop.stop();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryUsage;

    #[test]
    fn the_guest_mapping_is_taken_out_of_a_process_rss() {
        let smaps = "\
00400000-00421000 r-xp 00000000 08:01 1 /usr/bin/vmm
Size:                132 kB
Rss:                 100 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               30000 kB
7f0010000000-7f0010400000 rw-p 00000000 00:00 0
Size:               4096 kB
Rss:                 900 kB
";
        assert_eq!(
            MemoryUsage::from_smaps(smaps, 65536),
            Some(MemoryUsage {
                rss_kib: 31000,
                guest_resident_kib: 30000,
                overhead_kib: 1000,
            })
        );
        assert_eq!(MemoryUsage::from_smaps("Rss: many kB\n", 65536), None);
    }

    #[test]
    fn this_process_is_measured_from_outside() {
        // A buffer of an odd size, every page written: its own mapping, all resident.
        const KIB: u64 = 37 * 1024 + 4;
        let buffer = vec![1u8; usize::try_from(KIB * 1024).unwrap()];
        let usage = MemoryUsage::of_process(std::process::id(), KIB).unwrap();
        assert!(usage.guest_resident_kib >= KIB, "{usage:?}");
        assert!(usage.rss_kib > usage.guest_resident_kib, "{usage:?}");
        assert_eq!(buffer[buffer.len() - 1], 1);
        assert_eq!(MemoryUsage::of_process(0, KIB), None, "no process 0");
    }
}
