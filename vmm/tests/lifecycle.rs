//! A VM leaves nothing behind: after it stops, the process has the same threads and file
//! descriptors as before. One test in its own binary, so no other test's VM runs meanwhile.

mod common;

use std::time::Duration;

use common::{elf, exiting_guest};
use pulse_vmm::{KernelSource, SerialOutput, Vm, VmConfig, VmExit};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn threads_and_fds_are_released() {
    let image: std::sync::Arc<[u8]> = elf(&exiting_guest("ok", 0), None).into();
    let run = |vcpus: u8| {
        let mut config = VmConfig::new(KernelSource::Bytes(image.clone()));
        config.test_devices = true;
        config.vcpus = vcpus;
        config.memory_mib = 16;
        config.serial = SerialOutput::None;
        let mut vm = Vm::start(&config).unwrap();
        assert_eq!(vm.wait(Some(Duration::from_secs(60))), VmExit::DebugExit(0));
    };
    // The first run sets up process-wide things (signal handler, tracing, allocator arenas).
    run(1);
    let (threads, fds) = (count("/proc/self/task"), count("/proc/self/fd"));
    for vcpus in [1, 2, 3] {
        run(vcpus);
    }
    // A VM dropped without waiting is stopped and released too.
    let mut config = VmConfig::new(KernelSource::Bytes(elf(&common::asm::SPIN, None).into()));
    config.test_devices = true;
    config.memory_mib = 16;
    config.vcpus = 2;
    drop(Vm::start(&config).unwrap());
    assert_eq!(count("/proc/self/task"), threads, "threads left behind");
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors left behind");
}
