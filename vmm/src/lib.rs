//! Pulse's virtual machine monitor: one KVM microVM per instance, run by threads of the calling
//! process (the containerd shim, or the `pulse-vmm` command).
//!
//! [`Vm::start`] builds a VM from a [`VmConfig`]: KVM VM with the in-kernel irqchip and PIT,
//! guest memory, the kernel loaded by the Linux 64-bit or PVH boot protocol, an MP table, the
//! legacy devices (serial port, boot timer, debug-exit and reset ports), an event loop thread and
//! one thread per vCPU. [`Vm::wait`] returns why the guest stopped.

#![deny(missing_docs)]
// On top of the workspace lints (the root Cargo.toml): the library's numbers come from the guest
// (ring indices, lengths, register writes) and from configs, so nothing in it may panic on an
// `unwrap`. Tests build their own small frames and rings and may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod boot;
pub mod bus;
pub mod config;
pub mod confine;
pub mod devices;
pub mod event_loop;
pub mod exit;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod interrupts;
pub mod kvm;
pub mod kvm_stats;
pub mod layout;
pub mod memory;
pub mod metrics;
pub mod mmio;
pub mod vcpu;
pub mod vm;

pub use boot::{BootProtocol, KernelSource};
pub use config::{VmConfig, VmConfigFile};
pub use devices::serial::SerialOutput;
pub use exit::VmExit;
pub use vm::{Vm, VmError, VmHandle};
