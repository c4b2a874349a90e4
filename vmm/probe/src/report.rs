//! The report of a probe run: the VMM's counters merged with what the guest printed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use pulse_vmm::devices::pseudo::phase_marker::{self, PhaseDelta, PhaseMark};
use pulse_vmm::exit::VmExit;
use pulse_vmm::metrics::MetricsSnapshot;
use pulse_vmm::mmio::TransportStats;
use pulse_vmm::vm::{MemoryUsage, Vm};

use crate::console_peer::ConsolePeerReport;
use crate::net_peer::NetPeerReport;
use crate::vsock_peer::PeerReport;
use crate::{parse_serial, IrqMode, ProbeOptions};

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
    /// Every interrupt the VMM raised on an MSI vector was taken by the guest (less those
    /// the guest's blind re-arms allow to have merged), and no legacy line was taken more
    /// often than raised.
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
    pub kvm: BTreeMap<String, u64>,
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
    /// exactly what was sent, or fewer by at most its blind re-arms (each lets one late
    /// interrupt merge with the next); the legacy line may merge edges, so at most what was
    /// sent.
    pub fn interrupts_match(&self) -> bool {
        let vectors = self
            .vectors
            .iter()
            .all(VectorReport::guest_took_what_was_sent);
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
    /// Times the guest re-armed the queue without having seen its interrupt (it judged the
    /// interrupt lost after a timeout); 0 where the guest reports none.
    pub blind_rearms: u64,
    /// CPU the guest aimed the vector at.
    pub cpu: Option<u64>,
}

impl VectorReport {
    /// The guest took every interrupt sent, less at most one per blind re-arm (a late
    /// interrupt merged with the next in the LAPIC); never more than sent.
    fn guest_took_what_was_sent(&self) -> bool {
        self.received
            .is_none_or(|r| r <= self.sent && self.sent - r <= self.blind_rearms)
    }
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

/// What the VMM saw of a run, taken once the guest stopped (before the VM is dropped).
pub(crate) struct Observed {
    exit: VmExit,
    run_ms: f64,
    memory: MemoryUsage,
    exits: MetricsSnapshot,
    kvm_exits: BTreeMap<String, u64>,
    marks: Vec<PhaseMark>,
    device_stats: Vec<TransportStats>,
    boot_protocol: &'static str,
    vsock_device: Option<VsockDeviceReport>,
}

impl Observed {
    pub(crate) fn take(vm: &Vm, exit: VmExit, started: Instant) -> Self {
        Self {
            exit,
            run_ms: started.elapsed().as_secs_f64() * 1000.0,
            memory: vm.memory_usage(),
            exits: vm.metrics(),
            kvm_exits: vm.kvm_stats(),
            marks: vm.phase_marks(),
            device_stats: vm.device_stats(),
            boot_protocol: vm.entry().protocol_name(),
            vsock_device: vm.vsock().map(vsock_device_report),
        }
    }

    /// The report, once the VM and what it used are gone (the thread count after it is taken
    /// now), with `serial` the guest's captured output. `ok` says the guest reported success,
    /// every interrupt matched and the guest left through the debug exit with status 0; the
    /// host peers' reports are the caller's to add.
    pub(crate) fn report(
        self,
        options: &ProbeOptions,
        irq_mode: IrqMode,
        threads_before: Option<u64>,
        serial: &Mutex<Vec<u8>>,
        requests_per_queue: u64,
    ) -> ProbeReport {
        let threads = thread_report(threads_before, &self.marks);
        let output =
            String::from_utf8_lossy(&serial.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
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
        let devices: Vec<DeviceReport> = self
            .device_stats
            .iter()
            .map(|d| merge_device(d, guest.as_ref(), requests_per_queue))
            .collect();
        let interrupts_match = devices.iter().all(DeviceReport::interrupts_match);
        let exits = self.exits;
        ProbeReport {
            ok: guest_ok && interrupts_match && self.exit == VmExit::DebugExit(0),
            irq_mode,
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
            seccomp: options.seccomp,
            boot_protocol: self.boot_protocol,
            boot_ms: exits.boot_timer_ms,
            run_ms: self.run_ms,
            exit: self.exit,
            guest,
            serial,
            exits: ExitReport {
                pio: exits.pio_exits,
                mmio: exits.mmio_exits,
                unhandled: exits.unhandled_accesses,
                kvm: self.kvm_exits,
                workload: phase_marker::delta(&self.marks, 1, 2),
            },
            memory: self.memory,
            threads,
            vsock_device: self.vsock_device,
        }
    }
}

/// The threads at the start and end of the run and at the guest's first start/done marks.
fn thread_report(before: Option<u64>, marks: &[PhaseMark]) -> ThreadReport {
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
                blind_rearms: gv
                    .and_then(|e| e.get("blind_rearms"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
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

#[cfg(test)]
mod tests {
    use super::VectorReport;

    fn vector(sent: u64, received: u64, blind_rearms: u64) -> VectorReport {
        VectorReport {
            index: 1,
            role: "queue",
            queue: Some(0),
            gsi: 25,
            sent,
            dropped: 0,
            received: Some(received),
            blind_rearms,
            cpu: Some(0),
        }
    }

    #[test]
    fn a_vector_matches_when_the_guest_took_all_or_lost_no_more_than_it_rearmed_blind() {
        assert!(vector(11, 11, 0).guest_took_what_was_sent());
        assert!(!vector(11, 10, 0).guest_took_what_was_sent());
        assert!(vector(11, 10, 1).guest_took_what_was_sent());
        assert!(!vector(11, 9, 1).guest_took_what_was_sent());
        assert!(!vector(11, 12, 1).guest_took_what_was_sent());
        let unreported = VectorReport {
            received: None,
            ..vector(3, 0, 0)
        };
        assert!(unreported.guest_took_what_was_sent());
    }
}
