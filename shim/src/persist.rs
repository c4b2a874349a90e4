//! What a sandbox leaves on disk so that a later `containerd-shim-pulse-v2
//! delete` can clean up after a shim that died: the processes that make up
//! the VM (with their start times, so a reused pid is never killed), and the
//! directory with the sockets and disk images.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A host process of the VM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRecord {
    /// Its pid.
    pub pid: u32,
    /// Field 22 of /proc/PID/stat when it was recorded.
    pub start_time: u64,
}

impl ProcRecord {
    /// Records a live process.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }
}

/// A sandbox's state file (`state.json` in its directory).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxRecord {
    /// The pod.
    pub pod: String,
    /// containerd namespace.
    pub namespace: String,
    /// The sandbox directory.
    pub dir: PathBuf,
    /// The shim serving it.
    pub shim: Option<ProcRecord>,
    /// VMM processes (qemu, vhost-device-vsock, virtiofsd).
    pub vm: Vec<ProcRecord>,
    /// The pod's cgroup, when it has one.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// What a container's bundle records of its sandbox (`pulse.json` in the bundle).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleRecord {
    /// The pod.
    pub pod: String,
    /// Its directory.
    pub sandbox_dir: PathBuf,
}

/// The bundle record's file name.
pub const BUNDLE_RECORD: &str = "pulse.json";

impl SandboxRecord {
    /// Writes it atomically to `path`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        crate::private_fs::write_file(&tmp, &serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }

    /// Reads it.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }
}

/// Field 22 (starttime) of /proc/PID/stat.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process is a zombie (exited, not reaped yet).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat[stat.rfind(')')? + 1..].to_string();
            after
                .split_whitespace()
                .next()
                .map(|s| s == "Z" || s == "X")
        })
        .unwrap_or(false)
}

/// Kills each recorded process that still runs (SIGKILL) and waits until they
/// are gone (or `limit` passes). Returns how many were killed.
pub fn kill_all(procs: &[ProcRecord], limit: Duration) -> usize {
    let mut killed = 0;
    for p in procs.iter().filter(|p| p.alive()) {
        if p.pid == std::process::id() {
            continue;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid.cast_signed()),
            nix::sys::signal::Signal::SIGKILL,
        );
        killed += 1;
    }
    let deadline = Instant::now() + limit;
    while procs
        .iter()
        .any(|p| p.alive() && p.pid != std::process::id())
        && Instant::now() < deadline
    {
        // No reaping here: a zombie already counts as gone, and a waitpid
        // would take the exit status from whoever owns the child (tokio's
        // `Child`, a test's `Child::wait`).
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

/// Removes a sandbox directory: unmounts what is mounted below it first.
pub fn remove_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for m in crate::mountinfo::mounts_below(&crate::mountinfo::current(), dir) {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    // The pod's share binds host paths below it (crate::shared_fs): never delete through one.
    let left = crate::mountinfo::mounts_below(&crate::mountinfo::current(), dir);
    if !left.is_empty() {
        tracing::error!(
            "still mounted after unmounting: {left:?}; leaving {}",
            dir.display()
        );
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!("removing {}: {e}", dir.display());
    }
    // Drop empty parents (the namespace directory).
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_match_only_the_same_process() {
        let me = ProcRecord::of(std::process::id()).unwrap();
        assert!(me.alive());
        let reused = ProcRecord {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!reused.alive(), "a different start time is another process");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let rec = SandboxRecord {
            pod: "p".into(),
            namespace: "ns".into(),
            dir: dir.path().into(),
            shim: Some(me.clone()),
            vm: vec![me],
            cgroup: Some("/sys/fs/cgroup/pulse/ns/p".into()),
        };
        rec.save(&path).unwrap();
        assert_eq!(SandboxRecord::load(&path).unwrap(), rec);
    }

    #[test]
    fn kill_all_ends_a_recorded_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rec = ProcRecord::of(child.id()).unwrap();
        assert_eq!(
            kill_all(std::slice::from_ref(&rec), Duration::from_secs(5)),
            1
        );
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(!rec.alive());
    }

    #[test]
    fn removing_pod_p1_leaves_pod_p10s_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = dir.path().join("ns/p1");
        let p10_mount = dir.path().join("ns/p10/rootfs/c1");
        std::fs::create_dir_all(p1.join("rootfs/c1")).unwrap();
        std::fs::create_dir_all(&p10_mount).unwrap();
        let mount = |target: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
        };
        if mount(&p10_mount).is_err() {
            eprintln!("cannot mount tmpfs (not root?); skipped");
            return;
        }
        mount(&p1.join("rootfs/c1")).unwrap();
        remove_dir(&p1);
        assert!(!p1.exists());
        let still = crate::rootfs::is_mount_point(&p10_mount);
        let _ = nix::mount::umount2(&p10_mount, nix::mount::MntFlags::MNT_DETACH);
        assert!(still, "p10's staging mount was unmounted by p1's teardown");
    }

    #[test]
    fn remove_dir_takes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("ns").join("pod");
        std::fs::create_dir_all(sandbox.join("rootfs/c")).unwrap();
        std::fs::write(sandbox.join("slot-0.img"), b"x").unwrap();
        remove_dir(&sandbox);
        assert!(!sandbox.exists());
        assert!(
            !dir.path().join("ns").exists(),
            "the empty namespace dir goes too"
        );
    }
}
