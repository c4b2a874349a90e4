//! The device check: what the VMM configured (the host view) against what
//! the guest kernel made of it (the agent's device report), and both as
//! Prometheus text (`/metrics`) and JSON (`/report`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pulse_protocols::devices::{DeviceReport, VirtioDevice};
use serde::Serialize;

use crate::hypervisor::HostView;

/// The queue count the guest uses for a device.
fn guest_queues(d: &VirtioDevice) -> u32 {
    match d.device_type.as_str() {
        "block" if d.block_hw_queues > 0 => d.block_hw_queues,
        "net" if d.net_rx_queues > 0 => d.net_rx_queues + d.net_tx_queues,
        _ => d.num_queues,
    }
}

/// Differences between the two views, one sentence each.
pub fn compare(host: &HostView, guest: &DeviceReport) -> Vec<String> {
    let mut out = Vec::new();
    let mut kinds: BTreeMap<&str, (Vec<&crate::hypervisor::HostDevice>, Vec<&VirtioDevice>)> =
        BTreeMap::new();
    for d in &host.devices {
        kinds.entry(d.kind.as_str()).or_default().0.push(d);
    }
    for d in &guest.devices {
        kinds.entry(d.device_type.as_str()).or_default().1.push(d);
    }
    for (kind, (h, g)) in &kinds {
        if h.len() != g.len() {
            out.push(format!(
                "{kind}: the VMM configured {} device(s), the guest sees {}",
                h.len(),
                g.len()
            ));
            continue;
        }
        // A vsock device's queues are fixed; a virtio-fs device's count shows in the guest only
        // through its per-queue vectors (0: unknown, on the legacy line).
        let unknown = *kind == "fs" && g.iter().any(|d| guest_queues(d) == 0);
        if *kind != "vsock" && !unknown {
            let mut hq: Vec<u32> = h.iter().map(|d| u32::from(d.queues)).collect();
            let mut gq: Vec<u32> = g.iter().map(|d| guest_queues(d)).collect();
            hq.sort_unstable();
            gq.sort_unstable();
            if hq != gq {
                out.push(format!(
                    "{kind}: queues configured {hq:?}, queues the guest uses {gq:?}"
                ));
            }
        }
        let hm = h.iter().filter(|d| d.msi).count();
        let gm = g.iter().filter(|d| d.msi_enabled).count();
        if hm != gm {
            out.push(format!(
                "{kind}: MSI offered on {hm} of {} device(s), in effect on {gm} in the guest",
                h.len()
            ));
        }
    }
    if guest.cpus != 0 && u32::from(host.vcpus) != guest.cpus {
        out.push(format!(
            "vCPUs: the VMM configured {}, the guest has {}",
            host.vcpus, guest.cpus
        ));
    }
    out
}

/// Both views and the differences.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The pod.
    pub sandbox: String,
    /// What the VMM configured.
    pub host: HostView,
    /// The agent's report (protobuf's JSON mapping), or null when it could not be had.
    pub guest: serde_json::Value,
    /// Why the guest report is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_error: Option<String>,
    /// [`compare`]'s findings.
    pub mismatches: Vec<String>,
}

/// The guest report as JSON (every field, enums by name).
pub fn guest_json(report: &DeviceReport) -> serde_json::Value {
    let options = protobuf_json_mapping::PrintOptions {
        always_output_default_values: true,
        ..Default::default()
    };
    protobuf_json_mapping::print_to_string_with_options(report, &options)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

impl Report {
    /// Builds the report from the views.
    pub fn new(sandbox: &str, host: HostView, guest: Result<&DeviceReport, String>) -> Self {
        match guest {
            Ok(g) => Report {
                sandbox: sandbox.into(),
                mismatches: compare(&host, g),
                host,
                guest: guest_json(g),
                guest_error: None,
            },
            Err(e) => Report {
                sandbox: sandbox.into(),
                host,
                guest: serde_json::Value::Null,
                guest_error: Some(e),
                mismatches: Vec::new(),
            },
        }
    }
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A Prometheus text exposition being written: families of samples, each sample labelled with
/// its pod first.
struct Exposition {
    out: String,
    sandbox: String,
    family: &'static str,
}

impl Exposition {
    fn new(sandbox: &str) -> Self {
        Self {
            out: String::new(),
            sandbox: label(sandbox),
            family: "",
        }
    }

    /// Starts family `name`, of `kind`, that `help` explains.
    fn family(&mut self, kind: &str, name: &'static str, help: &str) {
        self.family = name;
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Starts gauge `name`, that `help` explains.
    fn gauge(&mut self, name: &'static str, help: &str) {
        self.family("gauge", name, help);
    }

    /// Starts counter `name`, that `help` explains.
    fn counter(&mut self, name: &'static str, help: &str) {
        self.family("counter", name, help);
    }

    /// A sample of the current family: its `labels` (name, value) after the pod's, its value.
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}{{sandbox=\"{}\"", self.family, self.sandbox);
        for (name, v) in labels {
            let _ = write!(self.out, ",{name}=\"{}\"", label(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// The Prometheus text exposition of both views.
pub fn prometheus(
    sandbox: &str,
    host: &HostView,
    guest: Option<&DeviceReport>,
    mismatches: usize,
) -> String {
    let mut m = Exposition::new(sandbox);
    m.gauge("pulse_host_vcpus", "vCPUs the VMM configured.");
    m.sample(
        &[("backend", &host.backend), ("accel", &host.accel)],
        host.vcpus,
    );
    m.gauge(
        "pulse_host_device_queues",
        "Queues the VMM configured per device.",
    );
    for d in &host.devices {
        m.sample(&[("kind", &d.kind), ("id", &d.id)], d.queues);
    }
    m.gauge(
        "pulse_host_device_msi",
        "Whether the VMM offers per-queue MSI on the device (1) or not (0).",
    );
    for d in &host.devices {
        m.sample(&[("kind", &d.kind), ("id", &d.id)], u8::from(d.msi));
    }
    m.counter(
        "pulse_host_interrupts_total",
        "Interrupts the VMM raised, per device vector (where the backend counts them).",
    );
    for d in &host.devices {
        for v in &d.interrupts {
            m.sample(&[("id", &d.id), ("vector", &v.name)], v.sent);
        }
    }
    m.gauge(
        "pulse_guest_report_up",
        "Whether the guest agent's device report could be read.",
    );
    m.sample(&[], u8::from(guest.is_some()));
    if let Some(g) = guest {
        guest_families(&mut m, g);
    }
    m.gauge(
        "pulse_report_mismatches",
        "Differences between what the VMM configured and what the guest reports.",
    );
    m.sample(&[], mismatches);
    m.out
}

/// The families of the guest's view.
fn guest_families(m: &mut Exposition, g: &DeviceReport) {
    m.gauge("pulse_guest_cpus", "CPUs the guest's /proc/interrupts has.");
    m.sample(&[], g.cpus);
    m.gauge(
        "pulse_guest_device_queues",
        "Queues the guest driver uses per device.",
    );
    for d in &g.devices {
        let labels = [
            ("device", d.name.as_str()),
            ("type", &d.device_type),
            ("name", &d.subsystem_name),
        ];
        m.sample(&labels, guest_queues(d));
    }
    m.gauge(
        "pulse_guest_device_msi_enabled",
        "Whether MSI is in effect for the device in the guest.",
    );
    for d in &g.devices {
        m.sample(
            &[("device", &d.name), ("type", &d.device_type)],
            u8::from(d.msi_enabled),
        );
    }
    m.counter(
        "pulse_guest_interrupts_total",
        "Interrupts the guest received, per vector (queue, config or legacy line), summed over \
         CPUs.",
    );
    for d in &g.devices {
        for v in &d.vectors {
            let role = format!("{:?}", v.role.enum_value_or_default())
                .trim_start_matches("VECTOR_ROLE_")
                .to_lowercase();
            let irq = v.irq.to_string();
            let labels = [
                ("device", d.name.as_str()),
                ("vector", &v.name),
                ("queue", &v.queue),
                ("role", &role),
                ("irq", &irq),
                ("chip", &v.chip),
            ];
            m.sample(&labels, v.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{HostDevice, HostVector};
    use pulse_protocols::devices::{InterruptVector, VectorRole};

    fn host(queues: u16, msi: bool) -> HostView {
        HostView {
            backend: "qemu".into(),
            accel: "tcg".into(),
            vcpus: 2,
            memory_mib: 256,
            devices: vec![
                HostDevice {
                    kind: "vsock".into(),
                    id: "vsock0".into(),
                    queues: 3,
                    msi,
                    interrupts: vec![],
                },
                HostDevice {
                    kind: "block".into(),
                    id: "pulse-slot-0".into(),
                    queues,
                    msi,
                    interrupts: vec![HostVector {
                        name: "queue0".into(),
                        sent: 7,
                    }],
                },
            ],
            pids: vec![1],
        }
    }

    fn guest(queues: u32, msi: bool) -> DeviceReport {
        let block = VirtioDevice {
            name: "virtio1".into(),
            device_type: "block".into(),
            num_queues: queues,
            block_hw_queues: queues,
            subsystem_name: "vda".into(),
            msi_enabled: msi,
            vectors: vec![InterruptVector {
                irq: 12,
                name: "virtio1".into(),
                role: VectorRole::VECTOR_ROLE_LEGACY.into(),
                chip: "IO-APIC".into(),
                total: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let vsock = VirtioDevice {
            name: "virtio0".into(),
            device_type: "vsock".into(),
            num_queues: 2,
            msi_enabled: msi,
            ..Default::default()
        };
        DeviceReport {
            devices: vec![vsock, block],
            cpus: 2,
            ..Default::default()
        }
    }

    #[test]
    fn matching_views_have_no_findings() {
        assert!(compare(&host(2, false), &guest(2, false)).is_empty());
    }

    #[test]
    fn queue_msi_and_device_differences_are_named() {
        let found = compare(&host(4, true), &guest(2, false));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("queues configured [4]"), "{found:?}");
        assert!(found[1].contains("MSI offered on 1 of 1"), "{found:?}");
        let mut g = guest(4, true);
        g.devices.pop();
        g.cpus = 1;
        let found = compare(&host(4, true), &g);
        assert!(found
            .iter()
            .any(|f| f.contains("block: the VMM configured 1 device(s), the guest sees 0")));
        assert!(found.iter().any(|f| f.contains("vCPUs")));
    }

    #[test]
    fn prometheus_text_has_both_views() {
        let text = prometheus("p\"1", &host(2, false), Some(&guest(2, false)), 0);
        assert!(
            text.contains(
                "pulse_host_device_queues{sandbox=\"p\\\"1\",kind=\"block\",id=\"pulse-slot-0\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("pulse_host_interrupts_total{sandbox=\"p\\\"1\",id=\"pulse-slot-0\",vector=\"queue0\"} 7"));
        assert!(
            text.contains("role=\"legacy\",irq=\"12\",chip=\"IO-APIC\"} 42"),
            "{text}"
        );
        assert!(text.contains("pulse_report_mismatches{sandbox=\"p\\\"1\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        let down = prometheus("p", &host(2, false), None, 0);
        assert!(down.contains("pulse_guest_report_up{sandbox=\"p\"} 0"));
    }

    #[test]
    fn json_report_keeps_both() {
        let r = Report::new("p", host(2, false), Ok(&guest(2, false)));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["host"]["backend"], "qemu");
        assert_eq!(v["guest"]["devices"][1]["subsystemName"], "vda");
        assert_eq!(v["mismatches"], serde_json::json!([]));
        let r = Report::new("p", host(2, false), Err("down".into()));
        assert_eq!(serde_json::to_value(&r).unwrap()["guest_error"], "down");
    }
}
