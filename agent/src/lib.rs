//! The Pulse guest agent.
//!
//! It serves Pulse's agent API (crate `pulse-protocols`) over ttrpc on a
//! vsock port inside the guest or on a unix socket, runs containers with
//! youki's `libcontainer`, and reports what the guest kernel made of its
//! virtio devices and interrupts.

// Numbers come from the host's requests, the kernel and /proc:
// a lossy `as` cast must say why it cannot lose bits.
#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss
    )
)]

pub mod clock;
pub mod container;
pub mod devices;
pub mod exec_seccomp;
pub mod guest;
pub mod helper;
pub mod init;
pub mod listen;
pub mod network;
pub mod ready;
pub mod reaper;
mod runtime;
pub mod server;
pub mod service;
pub mod shared;
mod workload;
