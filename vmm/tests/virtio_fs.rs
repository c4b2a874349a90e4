//! A VM with a virtio-fs device: `Vm::start` connects to the backend (a real virtiofsd,
//! `cargo install virtiofsd` or `PULSE_VIRTIOFSD`), maps guest memory from a memfd, announces
//! the device, and at the end lets go of the backend, which then exits. (The Linux driver
//! against it runs in the nested rig: `shim/tests/containerd.rs` with the embedded backend.)
//! Without virtiofsd, /dev/kvm or root the test says so and passes.

mod common;
#[path = "common/virtiofsd.rs"]
mod virtiofsd_binary;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{elf, exiting_guest};
use pulse_vmm::devices::fs::FsConfig;
use pulse_vmm::{KernelSource, SerialOutput, Vm, VmConfig, VmExit};

fn virtiofsd() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: needs root and /dev/kvm");
        return None;
    }
    virtiofsd_binary::find()
}

#[test]
fn a_vm_with_a_virtio_fs_device_starts_announces_it_and_releases_the_backend() {
    let Some(binary) = virtiofsd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let socket = dir.path().join("fs.sock");
    let mut backend = Command::new(binary)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "namespace"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut config = VmConfig::new(KernelSource::Bytes(
        elf(&exiting_guest("ok", 0), None).into(),
    ));
    config.test_devices = true;
    config.memory_mib = 16;
    config.serial = SerialOutput::None;
    config.fs = Some(FsConfig::new(&socket, "pulse-shared"));
    let mut vm = Vm::start(&config).unwrap();
    let stats = vm.device_stats();
    let fs = stats
        .iter()
        .find(|d| d.device_type == "fs")
        .expect("a virtio-fs device");
    assert_eq!(
        fs.queues, 2,
        "the high-priority queue and one request queue"
    );
    assert!(
        vm.cmdline()
            .contains(&format!("virtio_mmio.device=8K@{:#x}", fs.base)),
        "announced on the command line: {}",
        vm.cmdline()
    );
    assert_eq!(vm.wait(Some(Duration::from_secs(60))), VmExit::DebugExit(0));
    drop(vm);
    // The device hung up: virtiofsd ends by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = backend.try_wait().unwrap() {
            assert!(status.success(), "virtiofsd: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "virtiofsd still runs after the VM is gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A backend that is not there is a clear error at start.
    config.fs = Some(FsConfig::new(dir.path().join("none.sock"), "pulse-shared"));
    let err = Vm::start(&config).err().expect("no backend").to_string();
    assert!(err.contains("none.sock"), "{err}");
}
