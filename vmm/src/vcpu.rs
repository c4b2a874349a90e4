//! vCPUs: creation, boot state, and the thread that runs each one and dispatches its exits to
//! the buses.

use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::boot::{cpu, cpuid, EntryPoint};
use crate::bus::Bus;
use crate::confine::{self, ConfineError, ThreadKind};
use crate::exit::{ExitController, VmExit};
use crate::metrics::VmMetrics;

/// vCPU errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Creating the vCPU failed.
    #[error("KVM_CREATE_VCPU {index} failed: {source}")]
    Create {
        /// vCPU index.
        index: u8,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 on vCPU {index} failed: {source}")]
    Cpuid {
        /// vCPU index.
        index: u8,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {index}: {source}")]
    Registers {
        /// vCPU index.
        index: u8,
        /// Why.
        source: cpu::CpuError,
    },
    /// The thread could not be started, or not confined.
    #[error("vCPU {index}: {source}")]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Why.
        source: ConfineError,
    },
}

/// Everything a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port-I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where exits are reported.
    pub exit: Arc<ExitController>,
    /// Counters.
    pub metrics: Arc<VmMetrics>,
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_signal_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler of the kick signal (once per process): its only job is to make
/// KVM_RUN return EINTR.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), noop_signal_handler) {
            tracing::error!("cannot install the vCPU kick signal handler: {e}");
        }
    });
}

/// One vCPU before it runs.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

enum Step {
    Continue,
    Stop(VmExit),
}

impl Vcpu {
    /// Creates vCPU `index` (its APIC ID too).
    pub fn new(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self { index, fd })
    }

    /// KVM's statistics of this vCPU (they stay readable after the thread ends).
    pub fn stats(&self) -> std::io::Result<crate::kvm_stats::StatsFd> {
        crate::kvm_stats::StatsFd::open(&self.fd)
    }

    /// Sets CPUID, MSRs, FPU and LAPIC LINT pins; the boot vCPU also gets the entry registers.
    /// The others wait for INIT/SIPI from the guest, as on real hardware.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        vcpus: u8,
        entry: Option<EntryPoint>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let regs = |source| VcpuError::Registers { index, source };
        let cpuid = cpuid::for_vcpu(supported_cpuid, index, vcpus);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        cpu::setup_msrs(&self.fd).map_err(regs)?;
        cpu::setup_fpu(&self.fd).map_err(regs)?;
        cpu::setup_lint(&self.fd).map_err(regs)?;
        if let Some(entry) = entry {
            cpu::setup_sregs(&self.fd, entry).map_err(regs)?;
            cpu::setup_regs(&self.fd, entry).map_err(regs)?;
        }
        Ok(())
    }

    /// Starts the thread that runs this vCPU until the VM stops, confined as a
    /// [`ThreadKind::Vcpu`] thread.
    pub fn spawn(self, ctx: VcpuContext) -> Result<JoinHandle<()>, VcpuError> {
        install_kick_handler();
        let index = self.index;
        confine::spawn(ThreadKind::Vcpu, format!("vcpu{index}"), move || {
            self.run(ctx)
        })
        .map_err(|source| VcpuError::Spawn { index, source })
    }

    fn run(mut self, ctx: VcpuContext) {
        while !ctx.exit.is_stopping() {
            match self.step(&ctx) {
                Step::Continue => {}
                Step::Stop(exit) => {
                    ctx.exit.request(exit);
                    break;
                }
            }
        }
        tracing::debug!(vcpu = self.index, "vCPU thread done");
    }

    fn step(&mut self, ctx: &VcpuContext) -> Step {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Step::Continue;
            }
            Err(e) => return Step::Stop(VmExit::Crashed(format!("vCPU {index}: KVM_RUN: {e}"))),
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                VmMetrics::count(&ctx.metrics.pio_exits);
                if !ctx.pio.read(u64::from(port), data) {
                    VmMetrics::count(&ctx.metrics.unhandled_accesses);
                    // An unclaimed port reads as a floating bus.
                    data.fill(0xff);
                }
                Step::Continue
            }
            VcpuExit::IoOut(port, data) => {
                VmMetrics::count(&ctx.metrics.pio_exits);
                if !ctx.pio.write(u64::from(port), data) {
                    VmMetrics::count(&ctx.metrics.unhandled_accesses);
                }
                Step::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                VmMetrics::count(&ctx.metrics.mmio_exits);
                if !ctx.mmio.read(addr, data) {
                    VmMetrics::count(&ctx.metrics.unhandled_accesses);
                    data.fill(0);
                }
                Step::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                VmMetrics::count(&ctx.metrics.mmio_exits);
                if !ctx.mmio.write(addr, data) {
                    VmMetrics::count(&ctx.metrics.unhandled_accesses);
                }
                Step::Continue
            }
            VcpuExit::Shutdown => Step::Stop(VmExit::TripleFault),
            VcpuExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(VmExit::Shutdown),
                KVM_SYSTEM_EVENT_RESET => Step::Stop(VmExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => {
                    Step::Stop(VmExit::Crashed(format!("vCPU {index}: guest crash event")))
                }
                other => Step::Stop(VmExit::Crashed(format!(
                    "vCPU {index}: unknown system event {other}"
                ))),
            },
            // With the in-kernel irqchip KVM handles HLT itself; a HLT exit means the guest
            // stopped for good (interrupts off).
            VcpuExit::Hlt => Step::Stop(VmExit::Shutdown),
            VcpuExit::Intr => Step::Continue,
            VcpuExit::InternalError => {
                let internal = {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the union for this exit reason.
                    unsafe { run.__bindgen_anon_1.internal }
                };
                Step::Stop(VmExit::Crashed(format!(
                    "vCPU {index}: KVM internal error, suberror {} (an instruction KVM cannot emulate?)",
                    internal.suberror
                )))
            }
            VcpuExit::FailEntry(reason, cpu) => Step::Stop(VmExit::Crashed(format!(
                "vCPU {index}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}"
            ))),
            other => Step::Stop(VmExit::Crashed(format!(
                "vCPU {index}: unexpected exit {other:?}"
            ))),
        }
    }
}
