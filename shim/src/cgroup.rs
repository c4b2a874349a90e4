//! One cgroup v2 per pod, `<cgroup2 mount>/<shim.cgroup_parent>/<namespace>/<pod>`,
//! so that the VM's CPU time and memory are charged to the pod, not to
//! containerd: QEMU and vhost-device-vsock join it before they exec, the
//! embedded backend moves the shim itself (one shim per pod) into it. It is
//! removed at teardown, and by `delete` after the shim was killed (the path is
//! in the sandbox record).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mountinfo;

/// Controllers a pod cgroup gets when its parents have them (best effort).
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];
/// How long a removal waits for the cgroup's processes to be gone.
pub const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// Why a pod cgroup could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {what}: {source}")]
pub struct CgroupError {
    /// The cgroup directory.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// Why it failed.
    pub source: io::Error,
}

fn fail(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError { path, what, source }
}

/// Where cgroup v2 is mounted; `None`, with one warning per process, when it is not.
pub fn v2_root() -> Option<PathBuf> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let root = mountinfo::cgroup2_mount(&mountinfo::current());
    if root.is_none() && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("cgroup v2 is not mounted: the VMs' threads stay in the shim's cgroup");
    }
    root
}

/// Whether `parent` (the `shim.cgroup_parent` key) is a relative path that stays below the root.
pub fn valid_parent(parent: &Path) -> bool {
    parent
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
}

/// A pod's cgroup.
#[derive(Debug)]
pub struct PodCgroup {
    path: PathBuf,
    /// Where the shim was before [`PodCgroup::add_self`] moved it here.
    origin: Mutex<Option<PathBuf>>,
}

impl PodCgroup {
    /// Creates `<root>/<parent>/<namespace>/<pod>` (ids already validated),
    /// enabling on the way down the controllers the parents offer.
    pub fn create(
        root: &Path,
        parent: &Path,
        namespace: &str,
        pod: &str,
    ) -> Result<PodCgroup, CgroupError> {
        let path = root.join(parent).join(namespace).join(pod);
        std::fs::create_dir_all(&path).map_err(fail(&path, "creating it"))?;
        // A cgroup passes controllers to its children through subtree_control;
        // the levels Pulse made hold no processes, so this is allowed there.
        for level in [root.join(parent), root.join(parent).join(namespace)] {
            enable_controllers(&level);
        }
        Ok(PodCgroup {
            path,
            origin: Mutex::new(None),
        })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        write_procs(&self.path, pid)
    }

    /// Moves the shim's own process in (the embedded backend: the VM is the shim's threads).
    pub fn add_self(&self) -> Result<(), CgroupError> {
        let origin = own_cgroup();
        self.add(std::process::id())?;
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = origin;
        Ok(())
    }

    /// `cgroup.procs`, opened for a child to join with [`join_in_child`] between fork and exec.
    pub fn procs_file(&self) -> Result<File, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(fail(&self.path, "opening cgroup.procs"))
    }

    /// Moves the shim back out if it moved in, then removes the cgroup (see [`remove`]).
    pub fn remove(&self) -> Result<(), CgroupError> {
        if let Some(origin) = self.origin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = write_procs(&origin, std::process::id()) {
                tracing::warn!("moving the shim back to its cgroup: {e}");
            }
        }
        remove(&self.path, REMOVE_WAIT)
    }
}

/// Writes "0" (the calling process) into `procs`. Only async-signal-safe
/// calls: meant for `pre_exec`.
pub fn join_in_child(procs: &File) -> io::Result<()> {
    let fd = procs.as_raw_fd();
    // SAFETY: write(2) on a descriptor the parent keeps open for the whole spawn,
    // from a one-byte static buffer.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes a pod cgroup: waits up to `limit` for its processes to go (kills
/// what is left through `cgroup.kill` halfway), removes it, then its
/// namespace level if that is empty. A cgroup that is not there is fine.
pub fn remove(path: &Path, limit: Duration) -> Result<(), CgroupError> {
    let started = Instant::now();
    let mut killed = false;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) if started.elapsed() >= limit => {
                return Err(fail(path, "removing it")(e));
            }
            Err(_) => {
                if !killed && started.elapsed() >= limit / 2 {
                    // Leftovers of a dead shim's VM that did not die with it.
                    kill_all(path);
                    killed = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    if let Some(namespace) = path.parent() {
        let _ = std::fs::remove_dir(namespace);
    }
    Ok(())
}

/// SIGKILLs every process in the cgroup (`cgroup.kill`, or one by one before Linux 5.14).
fn kill_all(path: &Path) {
    if std::fs::write(path.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The shim's own cgroup directory (from `/proc/self/cgroup`'s `0::` line).
fn own_cgroup() -> Option<PathBuf> {
    let root = mountinfo::cgroup2_mount(&mountinfo::current())?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(relative.trim_start_matches('/')))
}

fn write_procs(cgroup: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
        .map_err(fail(cgroup, "moving a process in"))
}

fn enable_controllers(level: &Path) {
    let offered = std::fs::read_to_string(level.join("cgroup.controllers")).unwrap_or_default();
    for controller in CONTROLLERS {
        if offered.split_whitespace().any(|c| c == controller) {
            let _ = std::fs::write(
                level.join("cgroup.subtree_control"),
                format!("+{controller}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup v2 root this test may write under, or why not.
    fn writable_root() -> Option<PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root; skipped");
            return None;
        }
        let root = v2_root();
        if root.is_none() {
            eprintln!("no cgroup v2; skipped");
        }
        root
    }

    fn cgroup_of(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .unwrap_or_default()
    }

    #[test]
    fn parents_must_stay_below_the_root() {
        assert!(valid_parent(Path::new("pulse")));
        assert!(valid_parent(Path::new("system.slice/pulse")));
        assert!(!valid_parent(Path::new("/pulse")));
        assert!(!valid_parent(Path::new("../pulse")));
        assert!(!valid_parent(Path::new("a/../../b")));
    }

    #[test]
    fn a_child_joins_before_exec_and_the_cgroup_goes_at_removal() {
        let Some(root) = writable_root() else { return };
        let parent = PathBuf::from(format!("pulse-unit-{}", std::process::id()));
        let cgroup = PodCgroup::create(&root, &parent, "ns", "pod1").unwrap();
        assert_eq!(cgroup.path(), root.join(&parent).join("ns/pod1"));
        let procs = cgroup.procs_file().unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        use std::os::unix::process::CommandExt;
        // SAFETY: join_in_child makes one write(2) call on a descriptor this test holds open.
        unsafe {
            cmd.pre_exec(move || join_in_child(&procs));
        }
        let mut child = cmd.spawn().unwrap();
        assert_eq!(
            cgroup_of(child.id()),
            format!("/{}/ns/pod1", parent.display()),
            "the child runs in the pod's cgroup"
        );
        // A populated cgroup cannot go; the removal kills what is left.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = cgroup.path().to_path_buf();
        std::thread::spawn(move || tx.send(remove(&path, Duration::from_secs(2))));
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed through cgroup.kill");
        rx.recv().unwrap().unwrap();
        assert!(!cgroup.path().exists());
        assert!(
            !root.join(&parent).join("ns").exists(),
            "the empty namespace level goes too"
        );
        std::fs::remove_dir(root.join(&parent)).unwrap();
        cgroup.remove().unwrap();
    }
}
