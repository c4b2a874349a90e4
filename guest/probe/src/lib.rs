//! Platform-independent pieces of pulse-probe, kept free of hardware access so that they
//! build for the host too and are unit-tested there:
//! `cargo test --lib --target x86_64-unknown-linux-gnu` (run in guest/probe).
//!
//! The hardware side (entry code, serial port, LAPIC, IDT, SMP) lives in the binary
//! (`src/main.rs` and its modules) and only builds for `x86_64-unknown-none`.

#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod bootparams;
pub mod cmdline;
pub mod devreport;
pub mod errors;
pub mod json;
pub mod mptable;
pub mod net_spec;
pub mod virtio_spec;
pub mod vsock_spec;
pub mod workload;

/// Name and version as they appear in the JSON report.
pub const PROBE_NAME: &str = "pulse-probe";
pub const PROBE_VERSION: &str = env!("CARGO_PKG_VERSION");
