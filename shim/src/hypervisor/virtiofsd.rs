//! The pod's virtiofsd (`devices.shared_fs`), for both backends: the vhost-user-fs backend that
//! exports the pod's share ([`crate::shared_fs`]) to QEMU's `vhost-user-fs-device` or to
//! pulse-vmm's virtio-fs device.
//!
//! - `--cache auto`: attributes and directory entries are trusted for one second and a file's
//!   data is re-read when it is opened, so a change on the host (a ConfigMap's `..data` swap, a
//!   file rewritten in place) is seen in the guest within about a second; `always` would keep
//!   what the guest read for a day;
//! - `--sandbox namespace`: its own mount, pid and network namespaces, rooted in the export,
//!   under its seccomp filter (`--seccomp kill`);
//! - `--announce-submounts`: each bind is its own mount in the guest (its own `st_dev`), so
//!   inode numbers of different host file systems never collide.
//!
//! It starts like the VM's other helpers ([`super::child::confine`]: the pod's cgroup, a
//! private umask, SIGKILL when the shim dies) and is recorded with them, so that `delete` kills
//! it after a dead shim.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::child::confine;
use super::{HypervisorError, SandboxPaths, SharedDir};
use crate::cgroup::PodCgroup;

/// How long virtiofsd may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// virtiofsd's log in the sandbox directory.
pub fn log_path(paths: &SandboxPaths) -> std::path::PathBuf {
    paths.dir.join("virtiofsd.log")
}

/// virtiofsd's arguments for exporting `shared` (see the module).
pub fn args(paths: &SandboxPaths, shared: &SharedDir) -> Vec<String> {
    vec![
        "--socket-path".into(),
        paths.virtiofs().display().to_string(),
        "--shared-dir".into(),
        shared.export.display().to_string(),
        "--tag".into(),
        shared.tag.into(),
        "--cache".into(),
        "auto".into(),
        "--sandbox".into(),
        "namespace".into(),
        "--seccomp".into(),
        "kill".into(),
        "--announce-submounts".into(),
        "--log-level".into(),
        "warn".into(),
    ]
}

/// Starts virtiofsd (the program `binary`, its stderr into `log`) exporting `shared`, and
/// waits until it listens.
pub async fn spawn(
    binary: &Path,
    shared: &SharedDir,
    paths: &SandboxPaths,
    cgroup: Option<&PodCgroup>,
    log: OwnedFd,
) -> Result<Child, HypervisorError> {
    let mut cmd = Command::new(binary);
    cmd.args(args(paths, shared))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    confine(&mut cmd, cgroup, Vec::new())?;
    let mut child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
        program: binary.to_path_buf(),
        hint: "devices.shared_fs needs virtiofsd: cargo install virtiofsd, or \
               scripts/install-deps.sh",
        source,
    })?;
    let socket = paths.virtiofs();
    let deadline = Instant::now() + SOCKET_WAIT;
    loop {
        if socket.exists() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HypervisorError::HelperExited {
                helper: "virtiofsd",
                status,
                log_tail: super::qemu::log_tail(&log_path(paths)),
            });
        }
        if Instant::now() > deadline {
            return Err(HypervisorError::NoSocket {
                helper: "virtiofsd",
                socket,
                after: SOCKET_WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends a vhost-user backend (virtiofsd, vhost-device-vsock): it ends by itself when its
/// frontend hangs up; SIGTERM, then SIGKILL if it did not within a second.
pub async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.cast_signed()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(1), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_export_the_share_with_auto_cache_in_namespaces() {
        let paths = SandboxPaths::new(std::path::Path::new("/run/pulse"), "ns", "p").unwrap();
        let shared = SharedDir {
            tag: crate::shared_fs::TAG,
            export: crate::shared_fs::SharedFs::new(&paths)
                .export_dir()
                .to_path_buf(),
        };
        let a = args(&paths, &shared).join(" ");
        assert!(
            a.contains("--socket-path /run/pulse/ns/p/fs.sock")
                && a.contains("--shared-dir /run/pulse/ns/p/shared")
                && a.contains("--tag pulse-shared")
                && a.contains("--cache auto")
                && a.contains("--sandbox namespace")
                && a.contains("--seccomp kill"),
            "{a}"
        );
    }
}
