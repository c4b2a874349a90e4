//! The nested-virtualization rig from Rust: run a command as root where KVM
//! has hardware help (an L1 Debian guest under QEMU TCG with emulated SVM,
//! `scripts/nested.sh`), or directly where this host's CPU has VT-x/AMD-V.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How to run the L1 guest.
#[derive(Clone, Debug)]
pub struct Options {
    /// Powered off (and reported) after this long.
    pub timeout: Duration,
    /// L1 memory.
    pub memory_mib: u32,
    /// Variables set for the command (PATH, HOME, PULSE_* and RUST_* pass anyway).
    pub env: Vec<(String, String)>,
    /// Run directly on a host whose CPU has vmx/svm instead of booting an L1 guest.
    pub direct_ok: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(600),
            memory_mib: 6144,
            env: Vec::new(),
            direct_ok: true,
        }
    }
}

/// What the command did.
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status; 124 when the L1 guest hit the deadline, 125 when the rig
    /// itself failed (its message is in `stderr`).
    pub code: i32,
    /// The command's stdout and stderr together (the L1 guest has one channel for both).
    pub output: String,
    /// The rig's own lines (timing, failures, the L1 console's tail on failure).
    pub stderr: String,
    /// From start to power-off.
    pub elapsed: Duration,
}

/// The rig's entry point in this checkout.
pub fn script() -> PathBuf {
    crate::repo_root().join("scripts/nested.sh")
}

/// Whether this host's CPU offers VT-x/AMD-V itself (then the rig is not needed).
pub fn host_has_hw_virt() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(str::split_whitespace)
        .any(|f| f == "vmx" || f == "svm");
    has_flag && std::path::Path::new("/dev/kvm").exists()
}

/// Why the rig cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the nested rig runs as root".into());
    }
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !qemu.is_ok_and(|s| s.success()) {
        return Some("qemu-system-x86_64 is not installed (scripts/install-deps.sh)".into());
    }
    None
}

/// Runs `cmd` in the rig (or directly, see [`Options::direct_ok`]) from the current directory.
pub fn run<S: AsRef<OsStr>>(cmd: &[S], options: &Options) -> Result<Outcome> {
    let mut rig = rig_command(cmd, options)?;
    let started = Instant::now();
    let out = rig
        .output()
        .with_context(|| format!("running {}", script().display()))?;
    Ok(Outcome {
        code: out.status.code().unwrap_or(128),
        output: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// Like [`run`], but `cmd`'s output goes to this process's stdout and stderr as it comes
/// (for long commands such as benchmarks). Returns the exit status, with [`Outcome::code`]'s
/// meaning.
pub fn run_streaming<S: AsRef<OsStr>>(cmd: &[S], options: &Options) -> Result<i32> {
    let status = rig_command(cmd, options)?
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {}", script().display()))?;
    Ok(status.code().unwrap_or(128))
}

/// `scripts/nested.sh` with `options`, then `-- cmd`.
fn rig_command<S: AsRef<OsStr>>(cmd: &[S], options: &Options) -> Result<Command> {
    if cmd.is_empty() {
        bail!("no command to run in the nested rig");
    }
    let mut rig = Command::new(script());
    rig.arg("--timeout")
        .arg(options.timeout.as_secs().max(1).to_string())
        .arg("--memory")
        .arg(options.memory_mib.to_string());
    for (k, v) in &options.env {
        rig.arg("--env").arg(format!("{k}={v}"));
    }
    if options.direct_ok {
        rig.arg("--direct-ok");
    }
    rig.arg("--").args(cmd).stdin(Stdio::null());
    Ok(rig)
}
