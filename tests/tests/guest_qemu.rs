//! The real guest under QEMU TCG: the project's kernel (with the virtio-mmio
//! MSI patch, here on its legacy-interrupt fallback: QEMU has no MSI for
//! virtio-mmio), the initramfs, pulse-agent as PID 1, reached over vsock.
//!
//! Needs `make guest` (build/guest/vmlinux and initramfs.cpio.lz4),
//! qemu-system-x86, vhost-device-vsock, busybox-static and e2fsprogs;
//! `make test` provides all of them. The guests boot one at a time (the
//! emulator is CPU-bound).

use std::path::Path;
use std::time::Duration;

use pulse_protocols::containers::{Storage, StorageSource};
use pulse_protocols::devices::{DeviceReport, TransportKind, VectorRole, VirtioDevice};
use pulse_tests::qemu::{Guest, GuestConfig};
use pulse_tests::rootfs;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One guest at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn device<'a>(report: &'a DeviceReport, kind: &str) -> &'a VirtioDevice {
    report
        .device_of_type(kind)
        .unwrap_or_else(|| panic!("no {kind} device in {report:#?}"))
}

#[tokio::test]
async fn guest_boots_and_the_agent_answers_as_pid1_over_vsock() {
    let _one = SERIAL.lock().await;
    let config = GuestConfig::from_build().unwrap();
    let mut guest = Guest::boot(&config).unwrap();
    let (agent, boot) = guest.connect_agent(BOOT_TIMEOUT).await.unwrap();
    eprintln!("QEMU start to the agent's first answer: {boot:?}");

    assert!(agent.init_mode().await.unwrap(), "the agent is PID 1");
    let health = agent.check().await.unwrap();
    assert_eq!(health.containers, 0);

    let details = agent.guest_details().await.unwrap();
    assert!(
        details.kernel_release.starts_with("6.1."),
        "{}",
        details.kernel_release
    );
    assert_eq!(details.machine, "x86_64");
    assert_eq!(details.cgroup_mode, "v2");
    assert_eq!(details.cpus_online, config.vcpus);
    assert!(
        details.cmdline.contains("console=ttyS0"),
        "{}",
        details.cmdline
    );
    // QEMU adds the virtio-mmio devices to the command line itself.
    assert!(
        details.cmdline.contains("virtio_mmio.device="),
        "{}",
        details.cmdline
    );
    // The guest boots quiet (the kernel's "Run /init" is not shown): the agent's own first line
    // on the console is what says the kernel ran the initramfs's /init.
    let console = guest.console();
    assert!(
        console.contains("pulse-agent serving"),
        "the kernel ran the initramfs's /init:\n{console}"
    );
    guest.check_running().unwrap();
}

#[tokio::test]
async fn device_report_shows_block_and_vsock_on_the_legacy_fallback() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let image = work.path().join("empty.img");
    rootfs::ext4_image(&tree, &image).unwrap();

    let mut config = GuestConfig::from_build()
        .unwrap()
        .disk(&image, "pulse-report-0");
    config.vcpus = 2;
    config.disks[0].queues = 2;
    let mut guest = Guest::boot(&config).unwrap();
    let (agent, _) = guest.connect_agent(BOOT_TIMEOUT).await.unwrap();
    let report = agent.device_report().await.unwrap();
    let text = format!("{report:#?}");

    assert_eq!(report.cpus, 2, "{text}");
    for kind in ["block", "vsock"] {
        let dev = device(&report, kind);
        assert_eq!(
            dev.transport.kind.enum_value_or_default(),
            TransportKind::TRANSPORT_KIND_MMIO,
            "{kind}: {text}"
        );
        // QEMU offers no MSI: the patched driver fell back, and says so in
        // its sysfs attributes on the platform device.
        assert!(!dev.msi_enabled, "{kind}: {text}");
        assert_eq!(dev.msi_vectors, 0, "{kind}: {text}");
        let source = dev.source_of("msi_enabled").unwrap_or("");
        assert!(
            source.starts_with(&format!(
                "/sys/devices/virtio-mmio-cmdline/{}/",
                dev.transport.bus_device
            )) && source.ends_with("/msi_enabled = 0"),
            "{kind}: msi_enabled read from the driver's attribute: {source:?}"
        );
        // One line on the IO-APIC named after the device.
        assert_eq!(dev.vectors.len(), 1, "{kind}: {text}");
        let line = &dev.vectors[0];
        assert_eq!(
            line.role.enum_value_or_default(),
            VectorRole::VECTOR_ROLE_LEGACY,
            "{kind}: {text}"
        );
        assert!(line.chip.contains("IO-APIC"), "{kind}: {text}");
        assert_eq!(line.name, dev.name, "{kind}: {text}");
    }

    let blk = device(&report, "block");
    assert_eq!(blk.driver, "virtio_blk", "{text}");
    assert_eq!(blk.num_queues, 2, "{text}");
    assert_eq!(blk.block_hw_queues, 2, "{text}");
    assert!(blk.subsystem_name.starts_with("vd"), "{text}");

    let vsock = device(&report, "vsock");
    assert_eq!(vsock.driver, "vmw_vsock_virtio_transport", "{text}");
    // rx, tx and event: on the legacy line nothing in sysfs counts a vsock device's
    // queues, and the agent takes the count the device type fixes.
    assert_eq!(vsock.num_queues, 3, "{text}");
    guest.check_running().unwrap();
}

#[tokio::test]
async fn busybox_container_runs_from_an_ext4_disk_on_virtio_blk() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    rootfs::busybox_tree(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from the guest's disk\n").unwrap();
    let image = work.path().join("rootfs.img");
    rootfs::ext4_image(&tree, &image).unwrap();

    let serial = "pulse-rootfs-0";
    let config = GuestConfig::from_build().unwrap().disk(&image, serial);
    let mut guest = Guest::boot(&config).unwrap();
    let (agent, _) = guest.connect_agent(BOOT_TIMEOUT).await.unwrap();

    let spec = busybox_spec(&[
        "/bin/sh",
        "-c",
        "cat /hello.txt; uname -r; echo to-stderr >&2; exit 7",
    ]);
    let storage = Storage {
        source: StorageSource::STORAGE_SOURCE_BLOCK_SERIAL.into(),
        locator: serial.into(),
        fs_type: "ext4".into(),
        target: "rootfs".into(),
        options: vec!["nodev".into()],
        ..Default::default()
    };
    let id = "busybox";
    let pid = agent
        .create(id, serde_json::to_vec(&spec).unwrap(), vec![storage])
        .await
        .unwrap();
    assert!(pid > 1, "container init pid {pid}");
    agent.start(id).await.unwrap();
    let stdout = agent.read_all(id, false).await.unwrap();
    let stderr = agent.read_all(id, true).await.unwrap();
    let status = agent.wait(id).await.unwrap();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("hello from the guest's disk"),
        "{stdout}"
    );
    assert!(
        lines.next().is_some_and(|r| r.starts_with("6.1.")),
        "uname -r in the container is the guest's kernel: {stdout}"
    );
    assert_eq!(stderr, "to-stderr\n");
    assert_eq!(status, 7);
    agent.remove(id).await.unwrap();
    assert_eq!(agent.check().await.unwrap().containers, 0);
    guest.check_running().unwrap();
}

/// A spec running `args` in the bundle's `rootfs` (the mounted disk) with
/// the default namespaces, mounts and capabilities.
fn busybox_spec(args: &[&str]) -> oci_spec::runtime::Spec {
    use oci_spec::runtime::{ProcessBuilder, RootBuilder, Spec, UserBuilder};
    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path(Path::new("rootfs"))
            .readonly(false)
            .build()
            .unwrap(),
    ));
    let default = Spec::default().process().clone().unwrap_or_default();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .terminal(false)
        .capabilities(default.capabilities().clone().unwrap_or_default())
        .rlimits(default.rlimits().clone().unwrap_or_default())
        .build()
        .unwrap();
    spec.set_process(Some(process));
    spec
}
