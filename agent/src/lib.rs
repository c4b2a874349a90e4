//! The Pulse guest agent.
//!
//! It serves Pulse's agent API (crate `pulse-protocols`) over ttrpc on a
//! vsock port inside the guest or on a unix socket, runs containers with
//! youki's `libcontainer`, and reports what the guest kernel made of its
//! virtio devices and interrupts.

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
