//! Assembling the report from sysfs, procfs and the subsystems.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use pulse_protocols::devices::{
    DeviceReport, InterruptVector, Provenance, Transport, TransportKind, VectorRole, VirtioDevice,
};

use super::interrupts::{parse_proc_interrupts, read_sys_kernel_irq, InterruptTable, SysIrq};
use super::queues::{block_hw_queues, net_queues};
use super::virtio::{
    device_type_name, list_devices, mmio_base, pci_msi_irqs, read_trimmed, SysVirtioDevice,
};
use super::ReportError;

/// virtio device ID of vsock.
const VIRTIO_ID_VSOCK: u32 = 19;

/// Builds the report from `<root>/proc` and `<root>/sys`.
pub fn collect(root: &Path) -> Result<DeviceReport, ReportError> {
    let proc_dir = root.join("proc");
    let sys = root.join("sys");
    let mut warnings = Vec::new();

    let table = match fs::read_to_string(proc_dir.join("interrupts")) {
        Ok(text) => parse_proc_interrupts(&text)?,
        Err(e) => {
            warnings.push(format!("/proc/interrupts unreadable: {e}"));
            InterruptTable::default()
        }
    };
    let sys_irqs = read_sys_kernel_irq(&sys.join("kernel/irq"));
    let iomem = fs::read_to_string(proc_dir.join("iomem")).ok();

    let devices = list_devices(&sys)?
        .into_iter()
        .map(|dev| {
            let ctx = Context {
                root,
                sys: &sys,
                table: &table,
                sys_irqs: &sys_irqs,
                iomem: iomem.as_deref(),
            };
            ctx.device(&dev, &mut warnings)
        })
        .collect();

    Ok(DeviceReport {
        cpus: u32::try_from(table.cpus).unwrap_or(u32::MAX),
        devices,
        warnings,
        ..Default::default()
    })
}

struct Context<'a> {
    root: &'a Path,
    sys: &'a Path,
    table: &'a InterruptTable,
    sys_irqs: &'a BTreeMap<u32, SysIrq>,
    iomem: Option<&'a str>,
}

impl Context<'_> {
    /// A path as the guest sees it (without the fixture root).
    fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }

    fn device(&self, dev: &SysVirtioDevice, warnings: &mut Vec<String>) -> VirtioDevice {
        let mut facts = Vec::new();
        let mut fact = |field: &str, source: String| {
            facts.push(Provenance {
                field: field.to_string(),
                source,
                ..Default::default()
            })
        };
        let name = &dev.name;
        fact(
            "device_type",
            format!(
                "{} = {:#06x}",
                self.shown(&dev.dir.join("device")),
                dev.device_id
            ),
        );

        // Transport.
        let transport_address = match dev.transport {
            TransportKind::TRANSPORT_KIND_PCI => {
                fact(
                    "transport",
                    format!(
                        "parent of {} is PCI function {}",
                        self.shown(&dev.dir),
                        dev.parent_name
                    ),
                );
                dev.parent_name.clone()
            }
            TransportKind::TRANSPORT_KIND_MMIO => match mmio_base(&dev.parent_name, self.iomem) {
                Some((base, from)) => {
                    let from = if from == "/proc/iomem" {
                        format!("/proc/iomem entry of {}", dev.parent_name)
                    } else {
                        format!("platform device name {}", dev.parent_name)
                    };
                    fact("transport", format!("virtio-mmio at {base:#x} from {from}"));
                    format!("{base:#x}")
                }
                None => {
                    warnings.push(format!(
                        "{name}: virtio-mmio base of {} not found in its name or /proc/iomem",
                        dev.parent_name
                    ));
                    fact(
                        "transport",
                        format!("virtio-mmio platform device {}", dev.parent_name),
                    );
                    String::new()
                }
            },
            TransportKind::TRANSPORT_KIND_UNKNOWN => {
                warnings.push(format!(
                    "{name}: parent device {} is neither PCI nor virtio-mmio",
                    self.shown(&dev.parent_dir)
                ));
                String::new()
            }
        };

        // Interrupt vectors.
        let vectors = self.vectors_of(name);
        if !vectors.is_empty() {
            let irqs: Vec<String> = vectors.iter().map(|v| v.irq.to_string()).collect();
            fact(
                "vectors",
                format!(
                    "/proc/interrupts lines {} (actions {name} / {name}-*), details from /sys/kernel/irq/<irq>",
                    irqs.join(",")
                ),
            );
        } else if !dev.driver.is_empty() {
            warnings.push(format!(
                "{name}: no interrupt line in /proc/interrupts names it"
            ));
        }

        // Subsystem queues.
        let mut subsystem_name = String::new();
        let (mut block_q, mut rx_q, mut tx_q) = (0, 0, 0);
        if let Some(disk) = dev.block_devices.first() {
            subsystem_name = disk.clone();
            if let Some(n) = block_hw_queues(self.sys, disk) {
                block_q = n;
                fact(
                    "block_hw_queues",
                    format!("/sys/block/{disk}/mq: {n} entries"),
                );
            }
        }
        if let Some(iface) = dev.net_interfaces.first() {
            subsystem_name = iface.clone();
            if let Some((rx, tx)) = net_queues(self.sys, iface) {
                (rx_q, tx_q) = (rx, tx);
                fact(
                    "net_queues",
                    format!("/sys/class/net/{iface}/queues: {rx} rx-*, {tx} tx-*"),
                );
            }
        }

        // MSI.
        let attr_dirs = [&dev.parent_dir, &dev.dir];
        let attr = |file: &str| {
            attr_dirs.iter().find_map(|d| {
                let p = d.join(file);
                read_trimmed(&p).map(|v| (v, self.shown(&p)))
            })
        };
        let msi_attr = attr("msi_enabled").and_then(|(v, p)| parse_bool(&v).map(|b| (b, v, p)));
        let vectors_attr =
            attr("msi_vectors").and_then(|(v, p)| v.parse::<u32>().ok().map(|n| (n, p)));
        let pci_msi = if dev.transport == TransportKind::TRANSPORT_KIND_PCI {
            pci_msi_irqs(&dev.parent_dir)
        } else {
            Vec::new()
        };
        let has_legacy = vectors
            .iter()
            .any(|v| role_of(v) == VectorRole::VECTOR_ROLE_LEGACY);
        let per_vector: Vec<&InterruptVector> = vectors
            .iter()
            .filter(|v| role_of(v) != VectorRole::VECTOR_ROLE_LEGACY)
            .collect();

        let msi_enabled = if let Some((on, raw, path)) = &msi_attr {
            fact("msi_enabled", format!("{path} = {raw}"));
            *on
        } else if !pci_msi.is_empty() {
            let kind = &pci_msi[0].1;
            fact(
                "msi_enabled",
                format!(
                    "{}/msi_irqs: {} {kind} interrupts",
                    self.shown(&dev.parent_dir),
                    pci_msi.len()
                ),
            );
            true
        } else if !per_vector.is_empty() && !per_vector.iter().any(|v| is_legacy_chip(&v.chip)) {
            fact(
                "msi_enabled",
                format!(
                    "/proc/interrupts: per-vector lines {name}-* on {}",
                    per_vector[0].chip
                ),
            );
            true
        } else {
            let why = if has_legacy {
                format!("/proc/interrupts: one line named {name} (legacy interrupt)")
            } else {
                "no MSI attribute, no MSI interrupts found".to_string()
            };
            fact("msi_enabled", why);
            false
        };

        let msi_vectors = if let Some((n, path)) = &vectors_attr {
            fact("msi_vectors", format!("{path} = {n}"));
            *n
        } else if !pci_msi.is_empty() {
            fact(
                "msi_vectors",
                format!("{}/msi_irqs entries", self.shown(&dev.parent_dir)),
            );
            len_u32(pci_msi.len())
        } else if msi_enabled {
            fact(
                "msi_vectors",
                "count of per-vector /proc/interrupts lines".into(),
            );
            len_u32(per_vector.len())
        } else {
            0
        };

        // Cross-checks between sources.
        if msi_enabled && has_legacy {
            warnings.push(format!(
                "{name}: MSI reported enabled but a legacy line named {name} exists"
            ));
        }
        if !pci_msi.is_empty() {
            for v in &per_vector {
                if !pci_msi.iter().any(|(irq, _)| *irq == v.irq) {
                    warnings.push(format!(
                        "{name}: irq {} ({}) is not among {}/msi_irqs",
                        v.irq,
                        v.name,
                        self.shown(&dev.parent_dir)
                    ));
                }
            }
        }
        // Fewer lines than vectors is fine (a queue without a callback has no
        // handler); more lines than vectors is not.
        if msi_enabled && per_vector.len() > msi_vectors as usize {
            warnings.push(format!(
                "{name}: {msi_vectors} MSI vectors reported but {} lines in /proc/interrupts",
                per_vector.len()
            ));
        }

        // Queue count, best source first.
        let queue_vectors = vectors
            .iter()
            .filter(|v| role_of(v) == VectorRole::VECTOR_ROLE_QUEUE)
            .count();
        let shared = vectors
            .iter()
            .any(|v| role_of(v) == VectorRole::VECTOR_ROLE_SHARED_QUEUES);
        let num_queues = if queue_vectors > 0 && !shared {
            fact(
                "num_queues",
                format!("/proc/interrupts: {queue_vectors} per-queue vectors {name}-<queue>"),
            );
            len_u32(queue_vectors)
        } else if let Some((n, path)) = vectors_attr.filter(|(n, _)| msi_enabled && *n > 1) {
            fact(
                "num_queues",
                format!("{path} = {n}, minus the config vector"),
            );
            n - 1
        } else if block_q > 0 {
            fact("num_queues", format!("/sys/block/{subsystem_name}/mq"));
            block_q
        } else if rx_q + tx_q > 0 {
            fact(
                "num_queues",
                format!("/sys/class/net/{subsystem_name}/queues (rx + tx)"),
            );
            rx_q + tx_q
        } else if dev.device_id == VIRTIO_ID_VSOCK {
            // Fixed by the device type (virtio 1.2, 5.10.2): nothing in sysfs counts them.
            fact(
                "num_queues",
                "virtio spec: a vsock device has rx, tx and event queues".to_string(),
            );
            3
        } else {
            warnings.push(format!("{name}: number of queues unknown"));
            0
        };
        if block_q > 0 && queue_vectors > 0 && !shared && block_q as usize != queue_vectors {
            warnings.push(format!(
                "{name}: {queue_vectors} queue vectors but {block_q} blk-mq queues"
            ));
        }

        VirtioDevice {
            name: name.clone(),
            index: dev.index,
            device_id: dev.device_id,
            device_type: device_type_name(dev.device_id).to_string(),
            vendor: dev.vendor.clone(),
            driver: dev.driver.clone(),
            transport: Some(Transport {
                kind: dev.transport.into(),
                address: transport_address,
                bus_device: dev.parent_name.clone(),
                ..Default::default()
            })
            .into(),
            num_queues,
            block_hw_queues: block_q,
            net_rx_queues: rx_q,
            net_tx_queues: tx_q,
            subsystem_name,
            msi_enabled,
            msi_vectors,
            vectors,
            provenance: facts,
            ..Default::default()
        }
    }

    /// The interrupt lines whose actions name device `name`.
    fn vectors_of(&self, name: &str) -> Vec<InterruptVector> {
        let prefix = format!("{name}-");
        let mut out: Vec<InterruptVector> = self
            .table
            .lines
            .iter()
            .filter_map(|line| {
                let action = line
                    .actions
                    .iter()
                    .find(|a| *a == name || a.starts_with(&prefix))?;
                let suffix = action.strip_prefix(&prefix).unwrap_or("");
                let (role, queue) = match suffix {
                    _ if action == name => (VectorRole::VECTOR_ROLE_LEGACY, String::new()),
                    "config" => (VectorRole::VECTOR_ROLE_CONFIG, String::new()),
                    "virtqueues" => (VectorRole::VECTOR_ROLE_SHARED_QUEUES, String::new()),
                    q => (VectorRole::VECTOR_ROLE_QUEUE, q.to_string()),
                };
                let sys = self.sys_irqs.get(&line.irq);
                let pick = |proc_value: &str, sys_value: Option<&String>| {
                    if proc_value.is_empty() {
                        sys_value.cloned().unwrap_or_default()
                    } else {
                        proc_value.to_string()
                    }
                };
                Some(InterruptVector {
                    irq: line.irq,
                    name: action.clone(),
                    queue,
                    role: role.into(),
                    chip: pick(&line.chip, sys.and_then(|s| s.chip_name.as_ref())),
                    hwirq: pick(&line.hwirq, sys.and_then(|s| s.hwirq.as_ref())),
                    trigger: pick(&line.trigger, sys.and_then(|s| s.trigger.as_ref())),
                    per_cpu: line.per_cpu.clone(),
                    total: line.total(),
                    ..Default::default()
                })
            })
            .collect();
        out.sort_by_key(|v| (role_of(v) != VectorRole::VECTOR_ROLE_CONFIG, v.irq));
        out
    }
}

/// A vector's role; every vector the report makes has a known one.
fn role_of(v: &InterruptVector) -> VectorRole {
    v.role.enum_value_or_default()
}

fn is_legacy_chip(chip: &str) -> bool {
    let chip = chip.to_ascii_uppercase();
    chip.contains("IO-APIC") || chip.contains("XT-PIC") || chip.contains("IOAPIC")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "y" | "Y" | "yes" | "true" | "on" => Some(true),
        "0" | "n" | "N" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
