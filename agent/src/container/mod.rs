//! Containers in the guest: the registry and their lifecycle.
//!
//! Create and exec go through the single-threaded helper
//! ([`crate::helper`]); everything that does not clone (start, kill,
//! pause, resume, delete, cgroup reads and writes) calls libcontainer and
//! libcgroups from the agent directly, on blocking threads.

mod console;
mod cwd;
mod exec;
mod lifecycle;
mod overlay;
mod process;
mod resources;
mod spec;
mod stdio;
mod storage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::reaper::{ExitStatus, Reaper};

pub use cwd::{make_cwd_hook_main, MAKE_CWD_SUBCOMMAND};
pub use process::Process;
pub use spec::{check_id, SpecError, MAX_ID_LEN};
pub use stdio::{Stdio, StdioError, Stream};
pub use storage::{find_block_by_serial, StorageError};

/// The largest single stdout/stderr read.
pub const MAX_READ_BYTES: u32 = 1024 * 1024;
/// The largest single stdin write.
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;
/// How long a forced removal waits for the container's process to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Runtime(String),
}

type Result<T> = std::result::Result<T, ContainerError>;

fn runtime_err(
    context: &str,
) -> impl Fn(libcontainer::error::LibcontainerError) -> ContainerError + '_ {
    move |e| ContainerError::Runtime(format!("{context}: {e}"))
}

/// Where the agent keeps its state, and defaults for containers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Bundles, libcontainer's state, console sockets.
    pub state_dir: PathBuf,
    /// Containers whose spec has no cgroupsPath go to `<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// Where sysfs is (block devices are found by serial there).
    pub sys_root: PathBuf,
}

/// The lifecycle phase the agent tracks next to the process's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Paused,
}

pub struct Container {
    pub id: String,
    bundle: PathBuf,
    cgroup_path: PathBuf,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    phase: Mutex<Phase>,
    storages: Vec<storage::MountedStorage>,
    /// Serialises lifecycle operations on this container.
    ops: Mutex<()>,
}

impl Container {
    pub fn init(&self) -> &Arc<Process> {
        &self.init
    }

    /// created, running, paused or stopped.
    pub async fn status(&self) -> &'static str {
        if self.init.exit_status().is_some() {
            return "stopped";
        }
        match *self.phase.lock().await {
            Phase::Created => "created",
            Phase::Running => "running",
            Phase::Paused => "paused",
        }
    }

    pub async fn exec_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.execs.lock().await.keys().cloned().collect();
        ids.sort();
        ids
    }
}

pub struct Manager {
    config: RuntimeConfig,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created: reserved so a second create fails at once.
    creating: std::sync::Mutex<std::collections::HashSet<String>>,
    console_seq: AtomicU64,
}

impl Manager {
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> std::io::Result<Self> {
        for dir in ["runtime", "bundles", "consoles"] {
            std::fs::create_dir_all(config.state_dir.join(dir))?;
        }
        Ok(Self {
            config,
            reaper,
            containers: Mutex::new(HashMap::new()),
            creating: Default::default(),
            console_seq: AtomicU64::new(0),
        })
    }

    fn state_root(&self) -> PathBuf {
        self.config.state_dir.join("runtime")
    }

    fn console_path(&self) -> PathBuf {
        let n = self.console_seq.fetch_add(1, Ordering::Relaxed);
        self.config
            .state_dir
            .join("consoles")
            .join(format!("{n}.sock"))
    }

    pub async fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(format!("container {id:?} not found")))
    }

    pub async fn list(&self) -> Vec<Arc<Container>> {
        let mut all: Vec<Arc<Container>> = self.containers.lock().await.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub async fn count(&self) -> usize {
        self.containers.lock().await.len()
    }

    /// A process of a container: its own (empty exec id) or an exec'd one.
    pub async fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let container = self.get(id).await?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&container.init));
        }
        let found = container.execs.lock().await.get(exec_id).cloned();
        found.ok_or_else(|| {
            ContainerError::NotFound(format!("exec {exec_id:?} not found in container {id:?}"))
        })
    }
}

/// Like runc, a container's working directory that does not exist yet is
/// created (an exec's is not: runc's exec fails there too).
fn create_missing_cwd(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> Result<()> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let cwd = process.cwd();
    let owner = cwd::container_root_owner(spec);
    cwd::create_missing_cwd(rootfs, cwd, owner).map_err(|e| {
        ContainerError::Runtime(format!(
            "creating the working directory {}: {e}",
            cwd.display()
        ))
    })
}

/// An exec's working directory must exist in the container (runc's exec fails there too); a
/// missing one is named here, where libcontainer's error would only say that a syscall failed.
/// `/proc/PID/root` of the container's init is the container's view, its mounts included.
fn check_exec_cwd(
    init_pid: i32,
    exec_id: &str,
    process: &oci_spec::runtime::Process,
) -> Result<()> {
    let cwd = process.cwd();
    let root = PathBuf::from(format!("/proc/{init_pid}/root"));
    cwd::check_dir_in(&root, cwd).map_err(|e| {
        ContainerError::InvalidArgument(format!(
            "exec {exec_id}: its working directory {} is not a directory in the container: {e}",
            cwd.display()
        ))
    })
}

fn container_status_word(phase: Phase, exit: Option<ExitStatus>) -> &'static str {
    match (exit, phase) {
        (Some(_), _) => "stopped",
        (None, Phase::Created) => "created",
        (None, Phase::Running) => "running",
        (None, Phase::Paused) => "paused",
    }
}

/// Holds a container id while it is being created.
struct Reservation<'a> {
    manager: &'a Manager,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.manager
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Whether the cgroup hierarchy is the unified (v2) one.
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}
