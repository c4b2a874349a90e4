//! The virtio layouts that the VMM (the device side) and the bare-metal probe guest (the
//! driver side) must agree on, written once: the virtio-mmio register map with Pulse's
//! per-queue MSI extension (`docs/virtio-mmio-msi.md`), and the virtio-vsock packet header.
//!
//! `no_std` and without dependencies, so that guest/probe (target x86_64-unknown-none, its own
//! Cargo workspace) takes it as a path dependency.

#![no_std]
#![deny(missing_docs)]

pub mod mmio;
pub mod vsock;
