//! Containers in the guest: the registry and their lifecycle.
//!
//! Create and exec go through the single-threaded helper
//! ([`crate::helper`]); everything that does not clone (start, kill,
//! pause, resume, delete, cgroup reads and writes) calls libcontainer and
//! libcgroups from the agent directly, on blocking threads.

mod console;
mod cwd;
mod overlay;
mod process;
mod spec;
mod stdio;
mod storage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::{Container as YoukiContainer, ContainerStatus};
use libcontainer::signal::Signal;
use oci_spec::runtime::LinuxResources;
use pulse_protocols::containers::Storage;
use tokio::sync::Mutex;

use crate::helper::{self, HelperRequest, StdioFds};
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

    pub async fn create(&self, id: &str, spec_json: &[u8], storages: &[Storage]) -> Result<u32> {
        check_id("container", id).map_err(ContainerError::InvalidArgument)?;
        let _reservation = self.reserve(id).await?;
        let bundle = self.config.state_dir.join("bundles").join(id);
        let mut mounted = Vec::new();
        let result = self
            .create_in(id, spec_json, storages, &bundle, &mut mounted)
            .await;
        match result {
            Ok((pid, cgroup_path, init)) => {
                let container = Arc::new(Container {
                    id: id.to_string(),
                    bundle,
                    cgroup_path,
                    init,
                    execs: Mutex::new(HashMap::new()),
                    phase: Mutex::new(Phase::Created),
                    storages: mounted,
                    ops: Mutex::new(()),
                });
                self.containers
                    .lock()
                    .await
                    .insert(id.to_string(), container);
                Ok(pid)
            }
            Err(e) => {
                for m in mounted.iter().rev() {
                    m.unmount();
                }
                self.discard_runtime_state(id).await;
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let exists = self.containers.lock().await.contains_key(id);
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if exists || !creating.insert(id.to_string()) {
            return Err(ContainerError::AlreadyExists(format!(
                "container {id:?} already exists"
            )));
        }
        Ok(Reservation {
            manager: self,
            id: id.to_string(),
        })
    }

    async fn create_in(
        &self,
        id: &str,
        spec_json: &[u8],
        storages: &[Storage],
        bundle: &Path,
        mounted: &mut Vec<storage::MountedStorage>,
    ) -> Result<(u32, PathBuf, Arc<Process>)> {
        let default_cgroup = format!("{}/{id}", self.config.cgroup_parent.trim_end_matches('/'));
        let mut spec = spec::parse_spec(spec_json, &default_cgroup)?;
        if self.state_root().join(id).exists() {
            return Err(ContainerError::AlreadyExists(format!(
                "container {id:?} already exists in the runtime state"
            )));
        }
        std::fs::create_dir_all(bundle)
            .map_err(|e| ContainerError::Runtime(format!("creating the bundle: {e}")))?;
        for s in storages {
            mounted.push(storage::mount_storage(s, bundle, &self.config.sys_root)?);
        }
        let rootfs = spec::rootfs_of(&spec, bundle)?;
        if cwd::is_below_a_mount(&spec) {
            cwd::add_make_cwd_hook(&mut spec, &rootfs)
                .map_err(|e| ContainerError::Runtime(format!("the working directory hook: {e}")))?;
        } else {
            create_missing_cwd(&spec, &rootfs)?;
        }
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_else(|| PathBuf::from(&default_cgroup));
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        spec.save(bundle.join("config.json"))
            .map_err(|e| ContainerError::Runtime(format!("writing config.json: {e}")))?;

        let state_root = self.state_root();
        let make_request = |console_socket, stdio| HelperRequest::Create {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            state_root: state_root.clone(),
            console_socket,
            stdio,
        };
        let process = self.spawn_process(terminal, make_request).await?;
        Ok((process.pid as u32, cgroup_path, Arc::new(process)))
    }

    /// Runs a create or exec in the helper, with pipes or a terminal.
    async fn spawn_process(
        &self,
        terminal: bool,
        make_request: impl FnOnce(Option<PathBuf>, [bool; 3]) -> HelperRequest,
    ) -> Result<Process> {
        let io_err = |e: StdioError| ContainerError::Runtime(e.to_string());
        let (fds, pipes, console) = if terminal {
            let socket = console::ConsoleSocket::bind(&self.console_path())
                .map_err(|e| ContainerError::Runtime(format!("console socket: {e}")))?;
            (StdioFds::default(), None, Some(socket))
        } else {
            let (fds, stdio) = Stdio::pipes().map_err(io_err)?;
            (fds, Some(stdio), None)
        };
        let present = [0, 1, 2].map(|i| fds.fds[i].is_some());
        let request = make_request(console.as_ref().map(|c| c.path().to_path_buf()), present);
        let reaper = Arc::clone(&self.reaper);
        let spawned = tokio::task::spawn_blocking(move || {
            reaper.exclusive(|registrar| {
                let (pid, watch) = helper::run(registrar, &request, fds)?;
                // The pid cannot be reaped (and reused) while we hold the registrar.
                let pidfd = process::open_pidfd(pid);
                let master = console
                    .as_ref()
                    .map(|socket| socket.receive_master(Duration::from_secs(10)));
                Ok::<_, helper::HelperError>((pid, watch, pidfd, master))
            })
        })
        .await
        .map_err(|e| ContainerError::Runtime(format!("helper task: {e}")))?
        .map_err(|e| ContainerError::Runtime(e.to_string()))?;
        let (pid, watch, pidfd, master) = spawned;
        let stdio = match (pipes, master) {
            (Some(pipes), _) => pipes,
            (None, Some(Ok(master))) => Stdio::terminal(master).map_err(io_err)?,
            (None, Some(Err(e))) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(ContainerError::Runtime(format!(
                    "receiving the terminal: {e}"
                )));
            }
            (None, None) => {
                return Err(ContainerError::Runtime(
                    "process has neither pipes nor a terminal".into(),
                ))
            }
        };
        Ok(Process::new(pid, pidfd, watch, stdio))
    }
}

impl Manager {
    /// Loads libcontainer's view of a container (blocking).
    fn youki(state_root: &Path, id: &str) -> Result<YoukiContainer> {
        YoukiContainer::load(state_root.join(id)).map_err(runtime_err("loading container state"))
    }

    /// Runs blocking libcontainer work with reaping held off, so children it
    /// waits for itself (hooks) keep their statuses.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let reaper = Arc::clone(&self.reaper);
        let root = self.state_root();
        tokio::task::spawn_blocking(move || reaper.exclusive(|_| f(&root)))
            .await
            .map_err(|e| ContainerError::Runtime(format!("blocking task: {e}")))?
    }

    async fn discard_runtime_state(&self, id: &str) {
        let id = id.to_string();
        let _ = self
            .blocking(move |root| {
                let dir = root.join(&id);
                if dir.exists() {
                    match YoukiContainer::load(dir.clone()) {
                        Ok(mut c) => {
                            if let Err(e) = c.delete(true) {
                                tracing::warn!("discarding state of {id}: {e}");
                                let _ = std::fs::remove_dir_all(&dir);
                            }
                        }
                        Err(_) => {
                            let _ = std::fs::remove_dir_all(&dir);
                        }
                    }
                }
                Ok(())
            })
            .await;
    }

    pub async fn start(&self, id: &str) -> Result<u32> {
        let container = self.get(id).await?;
        let _op = container.ops.lock().await;
        if container.init.exit_status().is_some() {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} has already stopped"
            )));
        }
        let mut phase = container.phase.lock().await;
        if *phase != Phase::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} was already started"
            )));
        }
        let cid = id.to_string();
        self.blocking(move |root| {
            Self::youki(root, &cid)?
                .start()
                .map_err(runtime_err("starting the container"))
        })
        .await?;
        *phase = Phase::Running;
        Ok(container.init.pid as u32)
    }

    pub async fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<u32> {
        check_id("exec", exec_id).map_err(ContainerError::InvalidArgument)?;
        let container = self.get(id).await?;
        let process = spec::parse_process(process_json)?;
        let _op = container.ops.lock().await;
        if container.init.exit_status().is_some() || *container.phase.lock().await != Phase::Running
        {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        if container.execs.lock().await.contains_key(exec_id) {
            return Err(ContainerError::AlreadyExists(format!(
                "exec {exec_id:?} already exists in container {id:?}"
            )));
        }
        check_exec_cwd(container.init.pid, exec_id, &process)?;
        // libcontainer's exec leaves the container's seccomp profile out: the executor loads it.
        let profile = oci_spec::runtime::Spec::load(container.bundle.join("config.json"))
            .map_err(|e| ContainerError::Runtime(format!("reading the container's spec: {e}")))?
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        let (process, seccomp) = match profile {
            Some(profile) => {
                let (process, seccomp) = crate::exec_seccomp::prepare(process, profile);
                (process, Some(seccomp))
            }
            None => (process, None),
        };
        let terminal = process.terminal().unwrap_or(false);
        let process_file = container.bundle.join(format!("exec-{exec_id}.json"));
        let body = serde_json::to_vec(&process)
            .map_err(|e| ContainerError::Runtime(format!("encoding the process: {e}")))?;
        std::fs::write(&process_file, body)
            .map_err(|e| ContainerError::Runtime(format!("writing the process: {e}")))?;
        let state_root = self.state_root();
        let result = self
            .spawn_process(terminal, |console_socket, stdio| HelperRequest::Exec {
                id: id.to_string(),
                state_root,
                process_json: process_file.clone(),
                console_socket,
                stdio,
                seccomp: seccomp.clone().map(Box::new),
            })
            .await;
        let _ = std::fs::remove_file(&process_file);
        let process = result?;
        let pid = process.pid as u32;
        container
            .execs
            .lock()
            .await
            .insert(exec_id.to_string(), Arc::new(process));
        Ok(pid)
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ContainerError::InvalidArgument(format!("{signal} is not a signal")))?;
        if all {
            if !exec_id.is_empty() {
                return Err(ContainerError::InvalidArgument(
                    "`all` applies to the container, not to an exec".into(),
                ));
            }
            self.get(id).await?;
            let cid = id.to_string();
            return self
                .blocking(move |root| {
                    let signal = Signal::try_from(sig)
                        .map_err(|e| ContainerError::InvalidArgument(e.to_string()))?;
                    Self::youki(root, &cid)?
                        .kill(signal, true)
                        .map_err(runtime_err("signalling the container"))
                })
                .await;
        }
        let process = self.process(id, exec_id).await?;
        process
            .signal(sig)
            .map_err(|e| ContainerError::Runtime(format!("sending signal {sig}: {e}")))
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<(ExitStatus, u32)> {
        let process = self.process(id, exec_id).await?;
        Ok((process.wait().await, process.pid as u32))
    }

    pub async fn read(&self, id: &str, exec_id: &str, stream: Stream, max: u32) -> Result<Vec<u8>> {
        if max == 0 || max > MAX_READ_BYTES {
            return Err(ContainerError::InvalidArgument(format!(
                "max_bytes must be between 1 and {MAX_READ_BYTES}, not {max}"
            )));
        }
        let process = self.process(id, exec_id).await?;
        process
            .stdio
            .read(stream, max as usize)
            .await
            .map_err(|e| ContainerError::Runtime(format!("reading output: {e}")))
    }

    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        if data.len() > MAX_WRITE_BYTES {
            return Err(ContainerError::InvalidArgument(format!(
                "at most {MAX_WRITE_BYTES} bytes per write, not {}",
                data.len()
            )));
        }
        let process = self.process(id, exec_id).await?;
        process.stdio.write_stdin(data).await.map_err(|e| match e {
            StdioError::StdinClosed => {
                ContainerError::FailedPrecondition(format!("stdin of {id:?}/{exec_id:?} is closed"))
            }
            e => ContainerError::Runtime(format!("writing stdin: {e}")),
        })
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let process = self.process(id, exec_id).await?;
        process
            .stdio
            .close_stdin()
            .await
            .map_err(|e| ContainerError::Runtime(format!("closing stdin: {e}")))
    }

    pub async fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(ContainerError::InvalidArgument(format!(
                "terminal size {rows}x{columns} is out of range"
            )));
        };
        let process = self.process(id, exec_id).await?;
        match process.stdio.resize(rows, columns) {
            None => Err(ContainerError::FailedPrecondition(format!(
                "{id:?}/{exec_id:?} has no terminal"
            ))),
            Some(r) => r.map_err(|e| ContainerError::Runtime(format!("resizing: {e}"))),
        }
    }

    pub async fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let container = self.get(id).await?;
        let _op = container.ops.lock().await;
        let mut phase = container.phase.lock().await;
        let (from, to) = if pause {
            (Phase::Running, Phase::Paused)
        } else {
            (Phase::Paused, Phase::Running)
        };
        if *phase != from || container.init.exit_status().is_some() {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is {}, not {}",
                container_status_word(*phase, container.init.exit_status()),
                if pause { "running" } else { "paused" }
            )));
        }
        let cid = id.to_string();
        self.blocking(move |root| {
            let mut c = Self::youki(root, &cid)?;
            if pause {
                c.pause().map_err(runtime_err("pausing"))
            } else {
                c.resume().map_err(runtime_err("resuming"))
            }
        })
        .await?;
        *phase = to;
        Ok(())
    }

    fn cgroup_manager(
        &self,
        container: &Container,
    ) -> Result<libcgroups::common::AnyCgroupManager> {
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: container.cgroup_path.clone(),
            systemd_cgroup: false,
            container_name: container.id.clone(),
        })
        .map_err(|e| ContainerError::Runtime(format!("opening the container's cgroup: {e}")))
    }

    pub async fn stats(&self, id: &str) -> Result<libcgroups::stats::Stats> {
        let container = self.get(id).await?;
        let manager = self.cgroup_manager(&container)?;
        let dir = Path::new("/sys/fs/cgroup").join(
            container
                .cgroup_path
                .strip_prefix("/")
                .unwrap_or(&container.cgroup_path),
        );
        // libcgroups wants every cpu.stat field, and a kernel without CFS bandwidth
        // control (the guest's) has no nr_periods: then read the fields the API
        // reports directly, in libcgroups' units.
        tokio::task::spawn_blocking(move || manager.stats().or_else(|e| basic_stats(&dir).ok_or(e)))
            .await
            .map_err(|e| ContainerError::Runtime(format!("stats task: {e}")))?
            .map_err(|e| ContainerError::Runtime(format!("reading cgroup stats: {e}")))
    }

    pub async fn processes(&self, id: &str) -> Result<Vec<(u32, String)>> {
        let container = self.get(id).await?;
        let manager = self.cgroup_manager(&container)?;
        let pids = manager
            .get_all_pids()
            .map_err(|e| ContainerError::Runtime(format!("listing the cgroup's pids: {e}")))?;
        let mut out: Vec<(u32, String)> = pids
            .into_iter()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                (p.as_raw() as u32, comm.trim().to_string())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let resources: LinuxResources = serde_json::from_slice(resources_json).map_err(|e| {
            ContainerError::InvalidArgument(format!("not a valid OCI linux.resources: {e}"))
        })?;
        let container = self.get(id).await?;
        let manager = self.cgroup_manager(&container)?;
        tokio::task::spawn_blocking(move || {
            manager.apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
        })
        .await
        .map_err(|e| ContainerError::Runtime(format!("update task: {e}")))?
        .map_err(|e| ContainerError::Runtime(format!("updating the cgroup: {e}")))
    }

    /// Removes a container: with `force`, kills it first.
    pub async fn remove(&self, id: &str, force: bool) -> Result<()> {
        let container = self.get(id).await?;
        let _op = container.ops.lock().await;
        let phase = *container.phase.lock().await;
        let stopped = container.init.exit_status().is_some();
        if !stopped && phase != Phase::Created && !force {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is still running; stop it or remove with force"
            )));
        }
        // With force, everything left in the cgroup goes too: exec'd
        // processes outlive the container's own one without a PID namespace.
        if !stopped || force {
            let cid = id.to_string();
            if phase == Phase::Paused {
                let _ = self
                    .blocking(move |root| {
                        Self::youki(root, &cid)?
                            .resume()
                            .map_err(runtime_err("resuming"))
                    })
                    .await;
            }
            let cid = id.to_string();
            let _ = self
                .blocking(move |root| {
                    Self::youki(root, &cid)?
                        .kill(Signal::from(nix::sys::signal::Signal::SIGKILL), true)
                        .map_err(runtime_err("killing"))
                })
                .await;
            let _ = container.init.signal(libc::SIGKILL);
            if tokio::time::timeout(KILL_TIMEOUT, container.init.wait())
                .await
                .is_err()
            {
                return Err(ContainerError::Runtime(format!(
                    "container {id:?} did not die within {KILL_TIMEOUT:?} of SIGKILL"
                )));
            }
        }
        let cid = id.to_string();
        self.blocking(move |root| {
            let mut c = Self::youki(root, &cid)?;
            if c.status() == ContainerStatus::Running || c.status() == ContainerStatus::Paused {
                c.set_status(ContainerStatus::Stopped);
            }
            c.delete(true)
                .map_err(runtime_err("deleting the container"))
        })
        .await?;
        for m in container.storages.iter().rev() {
            m.unmount();
        }
        let _ = std::fs::remove_dir_all(&container.bundle);
        self.containers.lock().await.remove(id);
        Ok(())
    }

    /// Removes every container (sandbox teardown); returns how many.
    pub async fn remove_all(&self) -> usize {
        let ids: Vec<String> = self.containers.lock().await.keys().cloned().collect();
        let mut removed = 0;
        for id in ids {
            match self.remove(&id, true).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("removing {id}: {e}"),
            }
        }
        removed
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

/// pids, cpu usage and memory of a cgroup v2 directory, as libcgroups reports them.
fn basic_stats(dir: &Path) -> Option<libcgroups::stats::Stats> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let number = |text: &str| match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    let mut stats = libcgroups::stats::Stats::default();
    for line in read("cpu.stat")?.lines() {
        let mut kv = line.split_whitespace();
        let (Some(key), Some(value)) = (kv.next(), kv.next().and_then(|v| v.parse().ok())) else {
            continue;
        };
        match key {
            "usage_usec" => stats.cpu.usage.usage_total = value,
            "user_usec" => stats.cpu.usage.usage_user = value,
            "system_usec" => stats.cpu.usage.usage_kernel = value,
            _ => {}
        }
    }
    stats.memory.memory.usage = number(&read("memory.current")?)?;
    stats.memory.memory.limit = number(&read("memory.max")?)?;
    stats.pids.current = number(&read("pids.current")?)?;
    stats.pids.limit = match number(&read("pids.max")?)? {
        u64::MAX => 0,
        n => n,
    };
    Some(stats)
}
