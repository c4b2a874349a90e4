//! A container's life: create (its storages, rootfs and init process), start, remove.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libcontainer::container::{Container as YoukiContainer, ContainerStatus};
use libcontainer::signal::Signal;
use pulse_protocols::containers::Storage;
use tokio::sync::Mutex;

use crate::helper::{self, HelperRequest, StdioFds};

use super::{
    check_id, console, create_missing_cwd, cwd, process, runtime_err, spec, storage, Container,
    ContainerError, Manager, Phase, Process, Reservation, Result, Stdio, StdioError, KILL_TIMEOUT,
};

impl Manager {
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
        Ok((process.pid.cast_unsigned(), cgroup_path, Arc::new(process)))
    }

    /// Runs a create or exec in the helper, with pipes or a terminal.
    pub(super) async fn spawn_process(
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

    /// Loads libcontainer's view of a container (blocking).
    pub(super) fn youki(state_root: &Path, id: &str) -> Result<YoukiContainer> {
        YoukiContainer::load(state_root.join(id)).map_err(runtime_err("loading container state"))
    }

    /// Runs blocking libcontainer work with reaping held off, so children it
    /// waits for itself (hooks) keep their statuses.
    pub(super) async fn blocking<T: Send + 'static>(
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
        Ok(container.init.pid.cast_unsigned())
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
