//! The `pulse-vmm` command on bad input: one clear error line on stderr and exit status 2,
//! never a panic. Also the happy path of `run` with a tiny guest and a TOML config.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::{elf, exiting_guest, TempFile};

const BIN: &str = env!("CARGO_BIN_EXE_pulse-vmm");

fn pulse(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run pulse-vmm")
}

/// Asserts exit status 2 and a single `pulse-vmm: error:` line mentioning `needle`.
fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr}");
    assert!(lines[0].starts_with("pulse-vmm: error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "want '{needle}' in: {stderr}"
    );
}

/// Asserts exit status 0, with stderr in the message.
fn assert_ok(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// `pulse-vmm run FLAG FILE ARGS...`, FLAG naming the file (`--kernel`, `--config`).
fn run_with(flag: &str, file: &TempFile, args: &[&str]) -> Output {
    pulse(&[&["run", flag, file.0.to_str().unwrap()], args].concat())
}

fn good_kernel() -> TempFile {
    TempFile::with_contents("vmlinux", &elf(&exiting_guest("hello\n", 0), None))
}

#[test]
fn missing_kernel() {
    assert_error(
        &pulse(&["run", "--kernel", "/nonexistent/vmlinux"]),
        "does not exist",
    );
}

#[test]
fn no_kernel_at_all() {
    assert_error(&pulse(&["run"]), "no kernel given");
}

#[test]
fn not_a_kernel() {
    let f = TempFile::with_contents("junk", b"this is not a kernel at all, just text");
    assert_error(&run_with("--kernel", &f, &[]), "not an ELF or bzImage");
}

#[test]
fn truncated_elf() {
    let image = elf(&exiting_guest("x", 0), None);
    let f = TempFile::with_contents("trunc", &image[..image.len() - 4]);
    assert_error(&run_with("--kernel", &f, &[]), "truncated");
}

#[test]
fn memory_too_small_for_the_kernel() {
    // A kernel whose segment ends at 24 MiB in a 16 MiB guest.
    let mut image = elf(&exiting_guest("x", 0), None);
    let paddr: u64 = 24 << 20;
    image[24..32].copy_from_slice(&paddr.to_le_bytes());
    image[64 + 16..64 + 24].copy_from_slice(&paddr.to_le_bytes());
    image[64 + 24..64 + 32].copy_from_slice(&paddr.to_le_bytes());
    let f = TempFile::with_contents("big", &image);
    let out = run_with("--kernel", &f, &["--memory-mib", "16"]);
    assert_error(&out, "too small");
}

#[test]
fn zero_vcpus() {
    let k = good_kernel();
    assert_error(&run_with("--kernel", &k, &["--vcpus", "0"]), "vcpus");
    assert_error(&pulse(&["probe", "--vcpus", "0"]), "vcpus");
}

#[test]
fn command_line_too_long() {
    let k = good_kernel();
    let long = "x".repeat(4096);
    let out = run_with("--kernel", &k, &["--cmdline", &long]);
    assert_error(&out, "command line");
}

#[test]
fn broken_config_file() {
    let cfg = TempFile::with_contents("cfg.toml", b"kernel = [\n");
    assert_error(&run_with("--config", &cfg, &[]), "config file");
    let cfg = TempFile::with_contents("cfg.toml", b"kernal = \"/x\"\n");
    assert_error(&run_with("--config", &cfg, &[]), "kernal");
}

#[test]
fn no_dev_kvm() {
    // A private mount namespace with an empty /dev: the binary finds no /dev/kvm.
    let k = good_kernel();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" run --kernel "$1""#)
        .arg(BIN)
        .arg(&k.0)
        .output()
        .expect("unshare");
    assert_error(&out, "/dev/kvm does not exist");
}

#[test]
fn no_permission_on_dev_kvm() {
    // The binary and the kernel must be reachable for an unprivileged user: copy both to a
    // world-readable temporary directory.
    let dir = std::env::temp_dir().join(format!("pulse-nokvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("pulse-vmm");
    std::fs::copy(BIN, &bin).unwrap();
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, elf(&exiting_guest("x", 0), None)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kvm_mode = std::fs::metadata("/dev/kvm").unwrap().permissions().mode();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    if kvm_mode & 0o006 != 0 {
        // /dev/kvm is open to everyone on this host: nothing to refuse.
        eprintln!("SKIP no_permission_on_dev_kvm: /dev/kvm is world-accessible here");
        return;
    }
    assert_error(&out, "no permission to open /dev/kvm");
}

#[test]
fn run_boots_a_guest_with_flags_and_config() {
    let k = good_kernel();
    let out = run_with("--kernel", &k, &["--vcpus", "2", "--test-devices"]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let log = TempFile::with_contents("serial.log", b"");
    let cfg = format!(
        "kernel = {:?}\nvcpus = 2\nmemory_mib = 32\nserial = \"file:{}\"\ntest_devices = true\n",
        k.0,
        log.0.display()
    );
    let cfg = TempFile::with_contents("vm.toml", cfg.as_bytes());
    let out = run_with("--config", &cfg, &[]);
    assert_ok(&out);
    assert_eq!(std::fs::read_to_string(&log.0).unwrap(), "hello\n");
}

#[test]
fn run_exits_with_the_guest_status() {
    let k = TempFile::with_contents("vmlinux", &elf(&exiting_guest("", 7), None));
    let out = run_with("--kernel", &k, &["--serial", "none", "--test-devices"]);
    assert_eq!(out.status.code(), Some(7));
}

/// Without `--test-devices` the debug-exit port is not there: a guest cannot stop its VM (or
/// choose the VMM's exit status) through it; the VM runs on until it is stopped.
#[test]
fn without_test_devices_the_debug_exit_port_stops_nothing() {
    let k = TempFile::with_contents("vmlinux", &elf(&exiting_guest("", 7), None));
    let mut child = Command::new(BIN)
        .args(["run", "--kernel", k.0.to_str().unwrap(), "--serial", "none"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the guest's write to the debug-exit port stopped the VM"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(7), "{status:?}");
}

#[test]
fn sigterm_stops_a_running_vm() {
    let mut code = common::asm::print("up\n");
    code.extend(common::asm::SPIN);
    let k = TempFile::with_contents("spin", &elf(&code, None));
    let mut child = Command::new(BIN)
        .args(["run", "--kernel", k.0.to_str().unwrap(), "--vcpus", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest's first output, then ask the VMM to stop.
    use std::io::Read;
    let mut byte = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut byte)
        .unwrap();
    // SAFETY: kill(2) of our own child, which has not been reaped yet.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a requested stop exits 0");
}
