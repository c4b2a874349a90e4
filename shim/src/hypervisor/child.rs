//! How the VM's helper processes (QEMU, vhost-device-vsock) start: with a
//! private umask (their sockets and files are 0600/0700), in the pod's
//! cgroup before they exec (so nothing they do is charged to containerd),
//! with SIGKILL when the shim dies, and with the descriptors they are meant
//! to inherit at fixed numbers.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tokio::process::Command;

use super::HypervisorError;
use crate::cgroup::{self, PodCgroup};

/// Prepares `cmd`: see the module. `fds` are (descriptor, number in the child).
pub fn confine(
    cmd: &mut Command,
    cgroup: Option<&PodCgroup>,
    fds: Vec<(OwnedFd, RawFd)>,
) -> Result<(), HypervisorError> {
    let procs = cgroup
        .map(PodCgroup::procs_file)
        .transpose()
        .map_err(HypervisorError::Cgroup)?;
    // An orphan goes to the nearest subreaper (containerd is one), not always
    // to pid 1, so "the shim died" means "the parent is no longer the shim".
    let shim: libc::pid_t = std::process::id().cast_signed();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (umask, write, dup2, fcntl, prctl, getppid, kill)
    // on descriptors and values it owns.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(0o077);
            if let Some(procs) = &procs {
                cgroup::join_in_child(procs)?;
            }
            for (fd, target) in &fds {
                inherit(fd.as_raw_fd(), *target)?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The shim may have died between fork and prctl.
            if libc::getppid() != shim {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes `fd` available as `target` across exec. Async-signal-safe.
fn inherit(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 and fcntl on descriptors owned by the caller; no memory is touched.
    let ok = unsafe {
        if fd == target {
            // dup2 onto itself keeps close-on-exec: clear it.
            libc::fcntl(fd, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(fd, target) == target
        }
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
