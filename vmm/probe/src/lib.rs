//! The probe: a small bare-metal guest (guest/probe) embedded in this crate, booted to check
//! that the VMM works end to end, and the report built from what it and the VMM saw.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use pulse_vmm::boot::BootProtocol;
use pulse_vmm::vm::VmError;

pub mod console_peer;
pub mod net_peer;
mod report;
mod resize;
mod run;
pub mod vsock_peer;

pub use report::{
    DeviceReport, ExitReport, LegacyReport, ProbeReport, ResizeHostReport, ThreadReport,
    VectorReport, VsockDeviceReport,
};
pub use run::run;

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

impl IrqMode {
    /// The mode's word, on the CLI and in the guest's `probe.irq=`.
    pub fn word(self) -> &'static str {
        match self {
            Self::Msi => "msi",
            Self::Legacy => "legacy",
        }
    }
}

impl std::str::FromStr for IrqMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Msi, Self::Legacy]
            .into_iter()
            .find(|mode| mode.word() == s)
            .ok_or_else(|| format!("unknown interrupt mode '{s}' (expected msi or legacy)"))
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

    #[test]
    fn irq_modes_parse_from_their_words() {
        for mode in [IrqMode::Msi, IrqMode::Legacy] {
            assert_eq!(mode.word().parse::<IrqMode>(), Ok(mode));
        }
        assert_eq!("msi".parse::<IrqMode>(), Ok(IrqMode::Msi));
        assert!("msix".parse::<IrqMode>().is_err());
    }
}
