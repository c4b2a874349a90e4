//! `containerd-shim-pulse-v2`: the containerd shim v2 (task API v2,
//! containerd 1.6) that runs each pod in its own microVM.
//!
//! One shim process serves one pod ([`pod`]): it boots the pod's VM through a
//! [`hypervisor`] backend, connects to the guest agent over hybrid vsock
//! ([`agent`]), turns each container's rootfs into a disk in a free block slot
//! ([`rootfs`], [`block_slots`]), and maps containerd's task API onto the agent's API
//! ([`service`]), with stdio pumped between containerd's FIFOs and the agent
//! ([`stdio`]). The state machines ([`state`]) are plain types with tests.

pub mod agent;
pub mod block_slots;
pub mod cgroup;
pub mod config;
pub mod console;
pub mod hypervisor;
pub mod ids;
pub mod logging;
pub mod mgmt;
pub mod mountinfo;
pub mod network;
pub mod persist;
pub mod pod;
pub mod private_fs;
pub mod report;
pub mod rootfs;
pub mod sandbox;
pub mod service;
pub mod shared_fs;
pub mod shim;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod task;

/// containerd's runtime name for this shim.
pub const RUNTIME_NAME: &str = "io.containerd.pulse.v2";
