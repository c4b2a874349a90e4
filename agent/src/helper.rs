//! The short-lived, single-threaded helper that calls libcontainer's create
//! and exec.
//!
//! libcontainer clones with a raw `clone3`; in a multi-threaded process the
//! child can deadlock on a lock (the allocator's) that another thread held at
//! the moment of the clone. The agent therefore re-executes itself
//! (`/proc/self/exe __container-helper`) for each create and exec: a fresh,
//! single-threaded process that receives one request on fd 3, passes the
//! container's stdio (fds 4-6) to libcontainer, answers and exits. The
//! container's processes are cloned as siblings of the helper, so they are
//! children of the agent, which reaps them.

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reaper::{ExitWatch, Registrar};

/// The hidden subcommand that makes the agent binary act as the helper.
pub const HELPER_SUBCOMMAND: &str = "__container-helper";

/// The helper's fd for the request/response socket.
const CONTROL_FD: RawFd = 3;
/// The helper's fds for the container's stdin, stdout, stderr.
const STDIO_FDS: [RawFd; 3] = [4, 5, 6];
/// How long one create or exec may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Create the container of `bundle` (its config.json), not started.
    Create {
        id: String,
        bundle: PathBuf,
        state_root: PathBuf,
        console_socket: Option<PathBuf>,
        stdio: [bool; 3],
    },
    /// Start the process described by `process_json` in container `id`.
    Exec {
        id: String,
        state_root: PathBuf,
        process_json: PathBuf,
        console_socket: Option<PathBuf>,
        stdio: [bool; 3],
        /// The container's seccomp profile, which the process loads before its program.
        seccomp: Option<Box<crate::exec_seccomp::ExecSeccomp>>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum HelperResponse {
    Started { pid: i32 },
    Failed { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("starting the container helper: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("talking to the container helper: {0}")]
    Io(#[source] std::io::Error),
    #[error("the container helper gave no answer ({0})")]
    NoAnswer(String),
    #[error("{0}")]
    Failed(String),
}

/// The container's stdio, as fds to hand to the helper (None: not connected).
#[derive(Default)]
pub struct StdioFds {
    pub fds: [Option<OwnedFd>; 3],
}

/// Runs one request in a helper and registers the resulting pid with the
/// reaper before any exit of it can be reaped. Blocking.
pub fn run(
    registrar: &mut Registrar<'_>,
    request: &HelperRequest,
    stdio: StdioFds,
) -> Result<(i32, ExitWatch), HelperError> {
    let (ours, theirs) = UnixStream::pair().map_err(HelperError::Spawn)?;
    // Source fds far above the targets, so the dup2s below cannot clobber
    // one another.
    let high = |fd: &OwnedFd| -> Result<OwnedFd, HelperError> {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
            .map_err(|e| HelperError::Spawn(e.into()))
    };
    let control = high(&OwnedFd::from(theirs))?;
    let mut moved: Vec<(OwnedFd, RawFd)> = vec![(control, CONTROL_FD)];
    for (fd, target) in stdio.fds.iter().zip(STDIO_FDS) {
        if let Some(fd) = fd {
            moved.push((high(fd)?, target));
        }
    }
    let plan: Vec<(RawFd, RawFd)> = moved.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_SUBCOMMAND)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls dup2, which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in &plan {
                if libc::dup2(*from, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(HelperError::Spawn)?;
    drop(moved);
    drop(stdio);

    let answer = exchange(ours, request);
    if answer.is_err() {
        // A helper that hangs or misbehaves must not block the agent.
        let _ = child.kill();
    }
    let status = child.wait().map_err(HelperError::Io)?;
    let answer = answer.map_err(|e| match e {
        HelperError::NoAnswer(m) => HelperError::NoAnswer(format!("{m}; helper {status}")),
        e => e,
    })?;
    match answer {
        HelperResponse::Started { pid } => Ok((pid, registrar.register(pid))),
        HelperResponse::Failed { message } => Err(HelperError::Failed(message)),
    }
}

fn exchange(mut sock: UnixStream, request: &HelperRequest) -> Result<HelperResponse, HelperError> {
    sock.set_read_timeout(Some(HELPER_TIMEOUT))
        .map_err(HelperError::Io)?;
    let body = serde_json::to_vec(request).map_err(|e| HelperError::Io(e.into()))?;
    sock.write_all(&body).map_err(HelperError::Io)?;
    sock.shutdown(std::net::Shutdown::Write)
        .map_err(HelperError::Io)?;
    // One line: the container's processes inherit the helper's end of the
    // socket, so no end-of-file arrives while they live.
    let mut reply = Vec::new();
    std::io::BufReader::new(sock)
        .read_until(b'\n', &mut reply)
        .map_err(|e| HelperError::NoAnswer(e.to_string()))?;
    serde_json::from_slice(&reply).map_err(|e| {
        HelperError::NoAnswer(format!(
            "{e}: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        ))
    })
}

/// The helper process: reads one request from fd 3, answers, returns the
/// process exit code. Runs before any thread or runtime exists.
pub fn helper_main() -> i32 {
    reset_signal_dispositions();
    // SAFETY: the agent put the control socket at fd 3 (dup2 in pre_exec)
    // and nothing else in this fresh process owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let mut body = Vec::new();
    let response = match control.read_to_end(&mut body) {
        Err(e) => HelperResponse::Failed {
            message: format!("reading the request: {e}"),
        },
        Ok(_) => match serde_json::from_slice::<HelperRequest>(&body) {
            Err(e) => HelperResponse::Failed {
                message: format!("malformed request: {e}"),
            },
            Ok(request) => crate::runtime::execute(request),
        },
    };
    let mut reply = serde_json::to_vec(&response).unwrap_or_default();
    reply.push(b'\n');
    match control.write_all(&reply) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Puts every signal back to its default action and unblocks all of them.
///
/// Container processes are cloned from this helper and keep an ignored
/// disposition and the signal mask across exec; Rust's runtime ignores
/// SIGPIPE in this process, so without this `yes | head -n 1` in a container
/// reports a broken pipe instead of dying quietly as it does under runc.
/// Raw syscalls: the C library refuses to touch the real-time signals it
/// keeps for itself, and an ignored one of those would be inherited too.
fn reset_signal_dispositions() {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // Every signal the kernel has (_NSIG = 64); SIGKILL and SIGSTOP refuse.
    for signal in 1..=64 {
        // SAFETY: rt_sigaction reads `default` (the kernel's layout, SIG_DFL:
        // no handler runs) and writes nothing back (null old action).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                KERNEL_SIGSET_BYTES,
            )
        };
    }
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask reads the empty 64-bit set and writes nothing.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_BYTES,
        )
    };
}

/// The kernel's `struct sigaction` for rt_sigaction (x86_64 and arm64).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The kernel's signal set: 64 signals.
const KERNEL_SIGSET_BYTES: usize = 8;

/// Takes ownership of the stdio fds the agent passed in (helper side).
pub fn inherited_stdio(present: [bool; 3]) -> [Option<OwnedFd>; 3] {
    let mut out: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, fd) in STDIO_FDS.iter().enumerate() {
        if present[i] {
            // SAFETY: the agent dup2'ed the container's stdio onto these fds
            // before exec and marked them present; this process owns them once.
            out[i] = Some(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    out
}
