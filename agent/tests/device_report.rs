//! The device report against fixture trees (an MSI-mode guest and a legacy
//! guest) and against this machine's own /proc and /sys.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use pulse_agent::devices::collect;
use pulse_protocols::devices::{
    DeviceReport, InterruptVector, TransportKind, VectorRole, VirtioDevice,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn device<'a>(report: &'a DeviceReport, name: &str) -> &'a VirtioDevice {
    report
        .device_named(name)
        .unwrap_or_else(|| panic!("{name} missing from {report:#?}"))
}

fn source<'a>(dev: &'a VirtioDevice, field: &str) -> &'a str {
    dev.source_of(field)
        .unwrap_or_else(|| panic!("{}: no provenance for {field}: {dev:#?}", dev.name))
}

fn transport(dev: &VirtioDevice) -> TransportKind {
    dev.transport.kind.enum_value_or_default()
}

fn role_of(vector: &InterruptVector) -> VectorRole {
    vector.role.enum_value_or_default()
}

#[test]
fn msi_guest_fixture() {
    let report = collect(&fixture("msi-guest")).unwrap();
    assert_eq!(report.cpus, 2);
    assert_eq!(report.devices.len(), 3);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let blk = device(&report, "virtio0");
    assert_eq!(blk.index, 0);
    assert_eq!(blk.device_type, "block");
    assert_eq!(blk.driver, "virtio_blk");
    assert_eq!(transport(blk), TransportKind::TRANSPORT_KIND_MMIO);
    assert_eq!(blk.transport.address, "0xd0000000");
    assert_eq!(blk.transport.bus_device, "virtio-mmio.0");
    assert_eq!(blk.subsystem_name, "vda");
    assert_eq!(blk.num_queues, 2);
    assert_eq!(blk.block_hw_queues, 2);
    assert!(blk.msi_enabled);
    assert_eq!(blk.msi_vectors, 3);
    let roles: Vec<VectorRole> = blk.vectors.iter().map(role_of).collect();
    assert_eq!(
        roles,
        [
            VectorRole::VECTOR_ROLE_CONFIG,
            VectorRole::VECTOR_ROLE_QUEUE,
            VectorRole::VECTOR_ROLE_QUEUE
        ]
    );
    let req0 = &blk.vectors[1];
    assert_eq!(
        (req0.irq, req0.name.as_str(), req0.queue.as_str()),
        (25, "virtio0-req.0", "req.0")
    );
    assert_eq!(req0.per_cpu, vec![812, 130]);
    assert_eq!(req0.total, 942);
    assert_eq!(req0.chip, "virtio-mmio-msi");
    assert_eq!((req0.hwirq.as_str(), req0.trigger.as_str()), ("1", "edge"));
    assert_eq!(
        source(blk, "msi_enabled"),
        "/sys/devices/platform/virtio-mmio.0/msi_enabled = 1"
    );
    assert!(source(blk, "transport").contains("/proc/iomem"));
    assert!(source(blk, "num_queues").contains("per-queue vectors"));
    assert!(source(blk, "block_hw_queues").contains("/sys/block/vda/mq"));

    let net = device(&report, "virtio1");
    assert_eq!(net.device_type, "net");
    assert_eq!(net.transport.address, "0xd0002000");
    assert_eq!(net.subsystem_name, "eth0");
    assert_eq!(net.num_queues, 4);
    assert_eq!((net.net_rx_queues, net.net_tx_queues), (2, 2));
    assert!(net.msi_enabled);
    assert_eq!(net.msi_vectors, 5);
    let queues: Vec<&str> = net.vectors.iter().map(|v| v.queue.as_str()).collect();
    assert_eq!(queues, ["", "input.0", "output.0", "input.1", "output.1"]);

    let vsock = device(&report, "virtio2");
    assert_eq!(vsock.device_type, "vsock");
    assert_eq!(vsock.num_queues, 3);
    assert_eq!(vsock.msi_vectors, 4);
    assert!(vsock.subsystem_name.is_empty());
}

#[test]
fn legacy_guest_fixture() {
    let report = collect(&fixture("legacy-guest")).unwrap();
    assert_eq!(report.devices.len(), 3);

    let blk = device(&report, "virtio0");
    assert_eq!(transport(blk), TransportKind::TRANSPORT_KIND_MMIO);
    assert_eq!(blk.transport.address, "0xfeb00e00");
    assert!(!blk.msi_enabled);
    assert_eq!(blk.msi_vectors, 0);
    assert_eq!(blk.num_queues, 1);
    assert!(source(blk, "num_queues").contains("/sys/block/vda/mq"));
    assert_eq!(
        source(blk, "msi_enabled"),
        "/sys/devices/platform/virtio-mmio.0/msi_enabled = 0"
    );
    assert_eq!(blk.vectors.len(), 1);
    let line = &blk.vectors[0];
    assert_eq!(role_of(line), VectorRole::VECTOR_ROLE_LEGACY);
    assert_eq!((line.irq, line.name.as_str()), (12, "virtio0"));
    assert_eq!(line.chip, "IO-APIC");
    assert_eq!(line.per_cpu, vec![733, 18]);

    // No driver attributes: MSI is judged from the interrupt lines.
    let net = device(&report, "virtio1");
    assert!(!net.msi_enabled);
    assert!(source(net, "msi_enabled").contains("legacy interrupt"));
    assert_eq!(net.num_queues, 2);
    assert!(source(net, "num_queues").contains("/sys/class/net/eth0/queues"));

    // A legacy vsock device: sysfs counts nothing, the device type fixes three queues.
    let vsock = device(&report, "virtio2");
    assert_eq!(vsock.num_queues, 3);
    assert!(source(vsock, "num_queues").contains("virtio spec"));
    assert_eq!(vsock.vectors[0].irq, 10);
    assert!(
        !report.warnings.iter().any(|w| w.contains("virtio2")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn empty_root_has_no_devices_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    let report = collect(root.path()).unwrap();
    assert!(report.devices.is_empty());
    assert!(report.warnings[0].contains("/proc/interrupts unreadable"));
}

fn entries(dir: &Path, prefix: &str) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// This machine's virtio devices are PCI functions with MSI-X. The expected
/// values come from other files than the report's primary source where
/// possible: msi_irqs for the vectors, blk-mq and net queues for the counts.
#[test]
fn this_machine() {
    let report = collect(Path::new("/")).unwrap();
    let names = entries(Path::new("/sys/bus/virtio/devices"), "virtio");
    assert!(
        !names.is_empty(),
        "this test expects the project's build machine, which has virtio PCI devices"
    );
    assert_eq!(report.devices.len(), names.len());
    let interrupts = fs::read_to_string("/proc/interrupts").unwrap();
    let cpus = interrupts
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .count();
    assert_eq!(report.cpus as usize, cpus);

    for dev in &report.devices {
        let link = Path::new("/sys/bus/virtio/devices").join(&dev.name);
        let parent = fs::canonicalize(&link)
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let pci = parent.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            transport(dev),
            TransportKind::TRANSPORT_KIND_PCI,
            "{dev:#?}"
        );
        assert_eq!(dev.transport.address, pci);

        let msi_irqs: BTreeSet<u32> = entries(&parent.join("msi_irqs"), "")
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(!msi_irqs.is_empty(), "{pci} has no MSI/MSI-X interrupts");
        assert!(dev.msi_enabled, "{dev:#?}");
        assert_eq!(dev.msi_vectors as usize, msi_irqs.len());
        let vector_irqs: BTreeSet<u32> = dev.vectors.iter().map(|v| v.irq).collect();
        assert_eq!(vector_irqs, msi_irqs, "{dev:#?}");
        for v in &dev.vectors {
            assert_eq!(v.per_cpu.len(), cpus);
            assert_eq!(v.per_cpu.iter().sum::<u64>(), v.total);
            assert!(v.chip.contains("MSI"), "{v:#?}");
        }

        let queue_lines = interrupts
            .lines()
            .filter(|l| l.contains(&format!(" {}-", dev.name)) && !l.ends_with("-config"))
            .count();
        let expected = match dev.device_type.as_str() {
            "block" => {
                let disk = entries(&link.join("block"), "").into_iter().next().unwrap();
                entries(&Path::new("/sys/block").join(disk).join("mq"), "").len()
            }
            "net" => {
                let iface = entries(&link.join("net"), "").into_iter().next().unwrap();
                entries(&Path::new("/sys/class/net").join(iface).join("queues"), "").len()
            }
            _ => queue_lines,
        };
        assert_eq!(dev.num_queues as usize, expected, "{dev:#?}");
        assert_eq!(dev.num_queues as usize, queue_lines, "{dev:#?}");
    }
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

/// A PCI block device whose driver got only two MSI-X vectors (config plus
/// one shared by all queues), and a PCI net device on a legacy INTx line.
#[test]
fn shared_vector_and_intx_devices() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let write = |path: &str, text: &str| {
        let p = r.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    write(
        "proc/interrupts",
        "           CPU0\n 11:   9  IO-APIC  11-fasteoi   virtio1\n 40:   1  PCI-MSIX-0000:00:04.0   0-edge   virtio0-config\n 41:  77  PCI-MSIX-0000:00:04.0   1-edge   virtio0-virtqueues\n",
    );
    for (dev, pci, id) in [
        ("virtio0", "0000:00:04.0", "0x0002"),
        ("virtio1", "0000:00:05.0", "0x0001"),
    ] {
        write(&format!("sys/devices/pci0000:00/{pci}/{dev}/device"), id);
        fs::create_dir_all(r.join("sys/bus/virtio/devices")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../../devices/pci0000:00/{pci}/{dev}"),
            r.join("sys/bus/virtio/devices").join(dev),
        )
        .unwrap();
    }
    write("sys/devices/pci0000:00/0000:00:04.0/msi_irqs/40", "msix");
    write("sys/devices/pci0000:00/0000:00:04.0/msi_irqs/41", "msix");
    fs::create_dir_all(r.join("sys/devices/pci0000:00/0000:00:04.0/virtio0/block/vda")).unwrap();
    for q in 0..4 {
        fs::create_dir_all(r.join(format!("sys/block/vda/mq/{q}"))).unwrap();
    }
    fs::create_dir_all(r.join("sys/devices/pci0000:00/0000:00:05.0/virtio1/net/eth0")).unwrap();
    for q in ["rx-0", "tx-0"] {
        fs::create_dir_all(r.join("sys/class/net/eth0/queues").join(q)).unwrap();
    }

    let report = collect(r).unwrap();
    let blk = device(&report, "virtio0");
    assert_eq!(transport(blk), TransportKind::TRANSPORT_KIND_PCI);
    assert!(blk.msi_enabled);
    assert_eq!(blk.msi_vectors, 2);
    assert_eq!(
        role_of(&blk.vectors[1]),
        VectorRole::VECTOR_ROLE_SHARED_QUEUES
    );
    // One vector for all queues says nothing about their number: blk-mq does.
    assert_eq!(blk.num_queues, 4);
    assert!(source(blk, "num_queues").contains("/sys/block/vda/mq"));

    let net = device(&report, "virtio1");
    assert!(!net.msi_enabled);
    assert_eq!(role_of(&net.vectors[0]), VectorRole::VECTOR_ROLE_LEGACY);
    assert_eq!(net.vectors[0].trigger, "fasteoi");
    assert_eq!(net.num_queues, 2);
    assert_eq!(net.transport.address, "0000:00:05.0");
}
