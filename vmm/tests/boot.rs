//! Boots tiny hand-assembled guests under real KVM: both entry conventions, what the guest finds
//! in its boot data, and every way a VM stops.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{asm, elf, exiting_guest};
use pulse_vmm::{BootProtocol, KernelSource, SerialOutput, Vm, VmConfig, VmExit};

struct Run {
    exit: VmExit,
    serial: String,
    boot_timer: bool,
    protocol: &'static str,
}

fn config(image: Vec<u8>) -> (VmConfig, Arc<Mutex<Vec<u8>>>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(KernelSource::Bytes(image.into()));
    config.test_devices = true;
    config.memory_mib = 32;
    config.serial = SerialOutput::Capture {
        buffer: buffer.clone(),
        echo: false,
    };
    (config, buffer)
}

fn boot(config: &VmConfig, buffer: &Arc<Mutex<Vec<u8>>>) -> Run {
    let mut vm = Vm::start(config).expect("VM starts");
    let exit = vm.wait(Some(Duration::from_secs(60)));
    let boot_timer = vm.metrics().boot_timer_ms.is_some();
    let protocol = vm.entry().protocol_name();
    drop(vm);
    let serial = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
    Run {
        exit,
        serial,
        boot_timer,
        protocol,
    }
}

/// mov eax, [rsi + 0x228]: the zero page's cmd_line_ptr, in the 64-bit entry.
const LOAD_CMD_LINE_PTR: [u8; 6] = [0x8b, 0x86, 0x28, 0x02, 0x00, 0x00];
/// mov eax, [rsi + 0x218]: the zero page's ramdisk_image, in the 64-bit entry.
const LOAD_RAMDISK_IMAGE: [u8; 6] = [0x8b, 0x86, 0x18, 0x02, 0x00, 0x00];
/// mov eax, [ebx + 0x18]: hvm_start_info's cmdline_paddr, in the 32-bit PVH entry.
const LOAD_PVH_CMDLINE: [u8; 3] = [0x8b, 0x43, 0x18];

/// Code that marks the boot, prints `tag`, then the first byte at the address that
/// `load_pointer` puts in eax (what the boot protocol handed over), then exits 0.
fn pointee_printer(tag: &str, load_pointer: &[u8]) -> Vec<u8> {
    let mut v = asm::outb(0x440, 123);
    v.extend(asm::print(tag));
    v.extend_from_slice(load_pointer);
    v.extend([0x8a, 0x00]); // mov al, [rax] (in 32-bit code [eax])
    v.extend(asm::mov_dx(0x3f8));
    v.push(asm::OUT_DX_AL);
    v.extend(asm::outb(0x501, 0));
    v.push(asm::HLT);
    v
}

#[test]
fn linux64_entry_finds_the_zero_page() {
    let (mut config, buffer) = config(elf(&pointee_printer("L", &LOAD_CMD_LINE_PTR), None));
    config.cmdline = "Zcmdline".into();
    let run = boot(&config, &buffer);
    assert_eq!(run.exit, VmExit::DebugExit(0));
    assert_eq!(run.serial, "LZ");
    assert_eq!(run.protocol, "linux64");
    assert!(run.boot_timer);
}

#[test]
fn pvh_entry_is_preferred_and_finds_the_start_info() {
    let image = elf(
        &pointee_printer("L", &LOAD_CMD_LINE_PTR),
        Some(&pointee_printer("P", &LOAD_PVH_CMDLINE)),
    );
    let (mut config, buffer) = config(image.clone());
    config.cmdline = "Qx".into();
    let run = boot(&config, &buffer);
    assert_eq!((run.serial.as_str(), run.protocol), ("PQ", "pvh"));
    assert_eq!(run.exit, VmExit::DebugExit(0));

    // The same image can still be booted through the 64-bit entry.
    let (mut config, buffer) = self::config(image);
    config.cmdline = "Qx".into();
    config.boot_protocol = BootProtocol::Linux64;
    let run = boot(&config, &buffer);
    assert_eq!((run.serial.as_str(), run.protocol), ("LQ", "linux64"));
}

#[test]
fn bzimage_boots_through_the_64_bit_entry_with_its_header() {
    let mut code = asm::outb(0x440, 123);
    code.extend(asm::print("B"));
    code.extend([0x8a, 0x86, 0x06, 0x02, 0x00, 0x00]); // mov al, [rsi + 0x206] (hdr.version)
    code.push(asm::OUT_DX_AL);
    code.extend(asm::outb(0x501, 0));
    code.push(asm::HLT);
    let (config, buffer) = config(common::bzimage(&code));
    let run = boot(&config, &buffer);
    assert_eq!(run.exit, VmExit::DebugExit(0));
    assert_eq!(run.protocol, "linux64");
    assert_eq!(
        run.serial.as_bytes(),
        b"B\x0f",
        "the zero page carries the bzImage header"
    );
}

#[test]
fn pvh_without_a_note_is_refused() {
    let (mut config, _) = config(exiting_guest("x", 0).pipe(|c| elf(&c, None)));
    config.boot_protocol = BootProtocol::Pvh;
    let err = Vm::start(&config).err().expect("no PVH entry");
    assert!(err.to_string().contains("no PVH entry"), "{err}");
}

#[test]
fn initrd_is_loaded_and_announced() {
    let code = pointee_printer("", &LOAD_RAMDISK_IMAGE);
    let initrd = common::TempFile::with_contents("initrd", b"Rest of the initrd");
    let (mut config, buffer) = config(elf(&code, None));
    config.initrd = Some(initrd.0.clone());
    let run = boot(&config, &buffer);
    assert_eq!(run.serial, "R");
}

#[test]
fn debug_exit_status_is_reported_with_smp() {
    // The second vCPU waits for a SIPI that never comes: the VM must still stop cleanly.
    let (mut config, buffer) = config(elf(&exiting_guest("bye", 42), None));
    config.vcpus = 2;
    let run = boot(&config, &buffer);
    assert_eq!(run.exit, VmExit::DebugExit(42));
    assert_eq!(run.serial, "bye");
}

#[test]
fn triple_fault_stops_the_vm() {
    let mut code = asm::outb(0x440, 123);
    code.extend(asm::UD2);
    let (config, buffer) = config(elf(&code, None));
    let run = boot(&config, &buffer);
    assert_eq!(run.exit, VmExit::TripleFault);
}

#[test]
fn reset_port_stops_the_vm() {
    let mut code = asm::outb(0xcf9, 0x06);
    code.push(asm::HLT);
    let (config, buffer) = config(elf(&code, None));
    assert_eq!(boot(&config, &buffer).exit, VmExit::Reset);
}

#[test]
fn a_spinning_guest_stops_on_request() {
    let mut code = asm::print("spin");
    code.extend(asm::SPIN);
    let (mut config, buffer) = config(elf(&code, None));
    config.vcpus = 2;
    let mut vm = Vm::start(&config).unwrap();
    let handle = vm.handle();
    // Wait until the guest is running.
    for _ in 0..500 {
        if buffer.lock().unwrap().len() == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.request_stop();
    assert_eq!(vm.wait(Some(Duration::from_secs(30))), VmExit::Requested);
}

#[test]
fn wait_with_timeout_stops_the_guest() {
    let (config, _) = config(elf(&asm::SPIN, None));
    let mut vm = Vm::start(&config).unwrap();
    assert_eq!(vm.wait(Some(Duration::from_millis(200))), VmExit::Requested);
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}
