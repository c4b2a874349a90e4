//! containerd's task service (API v2) for one pod: every call maps onto the
//! guest agent's Containers API through the pod's [`Sandbox`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::task::events::{ContainerdEvents, EventSink};
use crate::task::guest::Guest;
use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::cgroups_v2::metrics as cg2;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::{mpsc, watch};
use ttrpc::Code;

use crate::config::{self, PulseConfig};
use crate::ids::{self, IdKind};
use crate::persist::{BundleRecord, BUNDLE_RECORD};
use crate::pod::{annotations_of, size_vm, PodResources, PodRole};
use crate::rootfs::RootfsMount;
use crate::sandbox::Sandbox;
use crate::state::{ExitInfo, ProcessState};
use crate::stdio::{Pumps, StdioPaths};
use crate::task::errors::{internal, state_err, status, timestamp};
use crate::task::registry::{map_status, Container, Process, State};

/// How long a process's output may take to drain after it exited.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Sizes the pod's VM from its limits (`pod::size_vm`): the configured vCPUs and memory plus
/// what the pod may use.
fn size_for_pod(config: &mut PulseConfig, role: &PodRole, spec: &serde_json::Value) {
    let Some(resources) = PodResources::of_pod(role, spec) else {
        return;
    };
    let host_cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let (vcpus, memory_mib) = size_vm(
        config.vm.vcpus,
        config.vm.memory_mib,
        Some(&resources),
        host_cpus,
    );
    tracing::info!(
        pod = role.pod(),
        ?resources,
        vcpus,
        memory_mib,
        configured_vcpus = config.vm.vcpus,
        configured_memory_mib = config.vm.memory_mib,
        "the VM is sized for the pod's limits"
    );
    config.vm.vcpus = vcpus;
    config.vm.memory_mib = memory_mib;
}

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    events: Arc<dyn EventSink>,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
    /// Serializes create, delete and shutdown (they boot and tear down the VM).
    lifecycle: tokio::sync::Mutex<()>,
    oom_tx: mpsc::UnboundedSender<String>,
}

impl Service {
    /// The sandbox of container `id` (which must exist).
    fn sandbox_of(&self, id: &str) -> ttrpc::Result<Arc<Sandbox>> {
        let mut state = self.inner.state.lock().unwrap();
        state.container(id)?;
        state.sandbox()
    }
    /// A service publishing to containerd's `publisher` in `namespace`; `exit` is signalled
    /// once the pod is gone.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let events = Arc::new(ContainerdEvents::new(publisher, namespace));
        Self::with_events(namespace, events, exit)
    }

    /// A service of containerd namespace `namespace` publishing to `events`.
    pub fn with_events(namespace: &str, events: Arc<dyn EventSink>, exit: Arc<ExitSignal>) -> Self {
        let (oom_tx, mut oom_rx) = mpsc::unbounded_channel::<String>();
        let service = Service {
            inner: Arc::new(Inner {
                namespace: namespace.into(),
                events,
                exit,
                state: Mutex::new(State::default()),
                lifecycle: tokio::sync::Mutex::new(()),
                oom_tx,
            }),
        };
        let weak = Arc::downgrade(&service.inner);
        tokio::spawn(async move {
            while let Some(id) = oom_rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                Service { inner }.publish_oom(id).await;
            }
        });
        service
    }

    /// `/tasks/oom` for container `id`, if this shim runs it.
    async fn publish_oom(&self, id: String) {
        let known = self
            .inner
            .state
            .lock()
            .unwrap()
            .containers
            .contains_key(&id);
        if known {
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                ev::TaskOOM {
                    container_id: id,
                    ..Default::default()
                },
            )
            .await;
        }
    }

    async fn publish<M: MessageDyn>(&self, topic: &str, event: M) {
        self.inner.events.publish(topic, Box::new(event)).await;
    }

    fn load_config(options: Option<&Any>) -> anyhow::Result<PulseConfig> {
        let from_options =
            options.and_then(|o| config::config_path_from_options(&o.type_url, &o.value));
        let env = std::env::var(config::CONFIG_ENV).ok();
        let path = config::resolve_path(from_options.as_deref(), env.as_deref());
        let config = PulseConfig::load(&path)?;
        crate::logging::set_level(&config.shim.log_level);
        tracing::info!(path = %path.display(), backend = config.hypervisor.backend.name(), "pulse config loaded");
        Ok(config)
    }

    /// The sandbox for a new container, booting it for the pod's first container.
    async fn sandbox_for(
        &self,
        role: &PodRole,
        options: Option<&Any>,
        spec: &serde_json::Value,
    ) -> ttrpc::Result<(Arc<Sandbox>, bool)> {
        if let Some(s) = self.inner.state.lock().unwrap().sandbox.clone() {
            if s.pod != role.pod() {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!("this shim serves pod {}, not {}", s.pod, role.pod()),
                ));
            }
            return Ok((s, false));
        }
        if !role.creates_pod() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("pod {} has no running sandbox in this shim", role.pod()),
            ));
        }
        let mut config = Self::load_config(options)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{e:#}")))?;
        size_for_pod(&mut config, role, spec);
        // The pod's hostname (CRI's PodSandboxConfig.hostname is the sandbox spec's): the
        // guest's own, so the pod's app containers, which CRI puts in the sandbox's UTS
        // namespace, see it too.
        let hostname = spec.get("hostname").and_then(serde_json::Value::as_str);
        let sandbox = Sandbox::start(
            config,
            &self.inner.namespace,
            role.pod(),
            hostname,
            crate::network::netns_of(spec),
            self.inner.oom_tx.clone(),
        )
        .await
        .map_err(internal)?;
        self.inner.state.lock().unwrap().sandbox = Some(sandbox.clone());
        Ok((sandbox, true))
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> ttrpc::Result<u32> {
        let bundle = PathBuf::from(&req.bundle);
        let spec_text = std::fs::read(bundle.join("config.json")).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("reading {}/config.json: {e}", req.bundle),
            )
        })?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec_text).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("{}/config.json: {e}", req.bundle),
            )
        })?;
        let role = PodRole::of(&req.id, &annotations_of(&spec));
        // Both become directory names (the sandbox, a rootfs staging mount).
        for (kind, id) in [
            (IdKind::Container, req.id.as_str()),
            (IdKind::Pod, role.pod()),
        ] {
            ids::validate(kind, id).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        }
        if self
            .inner
            .state
            .lock()
            .unwrap()
            .containers
            .contains_key(&req.id)
        {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let (sandbox, new_sandbox) = self.sandbox_for(&role, req.options.as_ref(), &spec).await?;
        if let Some(why) = PodResources::from_spec(&spec).and_then(|r| {
            let vm = &sandbox.config().vm;
            crate::pod::exceeds_vm(&r, vm.vcpus, vm.memory_mib)
        }) {
            tracing::warn!(
                container = %req.id,
                pod = role.pod(),
                "the container's limits exceed its pod's VM ({why}): the VM is sized when the \
                 pod starts, from the CRI's io.kubernetes.cri.sandbox-* annotations (when \
                 kubelet sends the pod's resources) or a pod of one's own limits"
            );
        }
        let result = self.create_in(&sandbox, req, &bundle, &mut spec).await;
        if result.is_err() && new_sandbox {
            // The pod's first container failed: take the whole sandbox down again.
            sandbox.stop().await;
            self.inner.state.lock().unwrap().sandbox = None;
        }
        result
    }

    async fn create_in(
        &self,
        sandbox: &Arc<Sandbox>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        spec: &mut serde_json::Value,
    ) -> ttrpc::Result<u32> {
        sandbox.check_add_container().map_err(state_err)?;
        let plans =
            crate::spec::plan_mounts(spec, sandbox.has_shared_fs(), crate::shared_fs::source_kind)
                .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        sandbox.share_mounts(&req.id, &plans).map_err(internal)?;
        let mounts: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        // Without mounts the tree is the spec's root.path, as runc takes it.
        let storages = match sandbox
            .attach_rootfs(&req.id, &mounts, &crate::spec::host_root(spec, bundle))
            .await
        {
            Ok(storages) => storages,
            Err(e) => {
                sandbox.unshare_mounts(&req.id);
                return Err(internal(e));
            }
        };
        crate::spec::rewrite_mounts(spec, &req.id, &plans);
        for note in crate::spec::for_guest(spec).notes {
            tracing::info!(container = %req.id, "spec: {note}");
        }
        if req.terminal {
            if let Some(p) = spec.get_mut("process").and_then(|p| p.as_object_mut()) {
                p.insert("terminal".into(), serde_json::Value::Bool(true));
            }
        }
        let agent = sandbox.agent();
        let spec_json = serde_json::to_vec(spec).unwrap_or_default();
        let pid = match Guest::new(agent).create(&req.id, spec_json, storages).await {
            Ok(pid) => pid,
            Err(e) => {
                sandbox.detach_rootfs(&req.id).await;
                sandbox.unshare_mounts(&req.id);
                return Err(e);
            }
        };
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut init = Process::new(format!("container {}", req.id), stdio.clone(), Vec::new());
        init.pid = pid;
        let pumps = Pumps::start(agent, &req.id, "", &stdio);
        let _ = std::fs::write(
            bundle.join(BUNDLE_RECORD),
            serde_json::to_vec(&BundleRecord {
                pod: sandbox.pod.clone(),
                sandbox_dir: sandbox.paths.dir.clone(),
            })
            .unwrap_or_default(),
        );
        self.inner.state.lock().unwrap().containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
            },
        );
        self.spawn_waiter(sandbox.clone(), req.id.clone(), String::new(), pumps);
        Ok(pid)
    }

    /// Waits for a process to exit (in the background), drains its output,
    /// records the exit and publishes it. For a container's own process the
    /// wait starts right away (a created container can be killed before start).
    fn spawn_waiter(&self, sandbox: Arc<Sandbox>, id: String, exec: String, mut pumps: Pumps) {
        let service = self.clone();
        let stdin = pumps.stdin.take();
        if let Ok(p) = self.inner.state.lock().unwrap().process(&id, &exec) {
            p.stdin = stdin;
        }
        tokio::spawn(async move {
            let waited = Guest::new(sandbox.agent()).wait(&id, &exec).await;
            let (status_code, pid) = match waited {
                Ok(r) => (u32::try_from(r.status).unwrap_or(0), r.pid),
                Err(e) => {
                    tracing::warn!(container = %id, exec = %exec, "waiting for the process: {e}");
                    (255, 0)
                }
            };
            pumps.drain(DRAIN_LIMIT).await;
            // A kill by the OOM killer is on the console by now: publish it before the exit.
            for oom in sandbox.scan_oom() {
                service.publish_oom(oom).await;
            }
            let exit = ExitInfo {
                status: status_code,
                at: SystemTime::now(),
            };
            let pid = {
                let mut state = service.inner.state.lock().unwrap();
                match state.process(&id, &exec) {
                    Ok(p) => {
                        if !p.machine.exited(exit) {
                            return;
                        }
                        let _ = p.exit.send(Some(exit));
                        if pid != 0 {
                            pid
                        } else {
                            p.pid
                        }
                    }
                    Err(_) => return,
                }
            };
            tracing::info!(container = %id, exec = %exec, status = status_code, "process exited");
            service
                .publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    ev::TaskExit {
                        container_id: id.clone(),
                        id: if exec.is_empty() {
                            id.clone()
                        } else {
                            exec.clone()
                        },
                        pid,
                        exit_status: status_code,
                        exited_at: MessageField::some(timestamp(exit.at)),
                        ..Default::default()
                    },
                )
                .await;
        });
    }

    /// Stops the pod when the shim gets SIGTERM or SIGINT (containerd-shim's
    /// own handler only logs them): its containers are killed (their exits
    /// are published), the VM is stopped, the sandbox directory removed, and
    /// the shim exits (its socket goes with it).
    pub fn stop_on_signals(&self) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot watch SIGTERM/SIGINT");
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let Some(inner) = weak.upgrade() else { return };
            tracing::info!("{name}: stopping the pod and exiting");
            let service = Service { inner };
            service.terminate().await;
            service.inner.exit.signal();
        });
    }

    /// Kills every process of the pod, waits briefly for their exits, then tears the sandbox down.
    async fn terminate(&self) {
        let _serial = self.inner.lifecycle.lock().await;
        let (sandbox, waits) = {
            let state = self.inner.state.lock().unwrap();
            let waits: Vec<(String, watch::Receiver<Option<ExitInfo>>)> = state
                .containers
                .iter()
                .filter(|(_, c)| c.init.machine.check_kill().is_ok())
                .map(|(id, c)| (id.clone(), c.init.exit.subscribe()))
                .collect();
            (state.sandbox.clone(), waits)
        };
        if let Some(sandbox) = sandbox {
            let guest = Guest::new(sandbox.agent());
            for (id, _) in &waits {
                let sigkill = libc::SIGKILL.unsigned_abs();
                if let Err(e) = guest.signal(id, "", sigkill, true).await {
                    tracing::warn!(container = %id, "SIGKILL at shutdown: {e}");
                }
            }
            let exits = wait_for_exits(waits);
            if tokio::time::timeout(DRAIN_LIMIT, exits).await.is_err() {
                tracing::warn!("some containers did not exit in time; stopping the VM anyway");
            }
        }
        self.teardown().await;
    }

    async fn teardown(&self) {
        let sandbox = self.inner.state.lock().unwrap().sandbox.take();
        if let Some(s) = sandbox {
            s.stop().await;
        }
    }
}

/// Waits until every receiver has seen an exit.
async fn wait_for_exits(waits: Vec<(String, watch::Receiver<Option<ExitInfo>>)>) {
    for (_, mut rx) in waits {
        while rx.borrow_and_update().is_none() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let mut state = self.inner.state.lock().unwrap();
        let bundle = state.container(&req.id)?.bundle.clone();
        let p = state.process(&req.id, &req.exec_id)?;
        let s = p.machine.state();
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: map_status(s).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        if let Some(e) = s.exit() {
            resp.exit_status = e.status;
            resp.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(resp)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let _serial = self.inner.lifecycle.lock().await;
        tracing::info!(id = %req.id, bundle = %req.bundle, "create");
        let pid = self.create_container(&req).await.inspect_err(|e| {
            tracing::error!(id = %req.id, "create failed: {e}");
        })?;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let (sandbox, spec, stdio) = {
            let mut state = self.inner.state.lock().unwrap();
            let sandbox = state.sandbox()?;
            let p = state.process(&req.id, &req.exec_id)?;
            p.machine.check_start().map_err(state_err)?;
            (sandbox, p.spec.clone(), p.stdio.clone())
        };
        let agent = sandbox.agent();
        let pid = if req.exec_id.is_empty() {
            Guest::new(agent).start(&req.id).await?
        } else {
            Guest::new(agent).exec(&req.id, &req.exec_id, spec).await?
        };
        {
            let mut state = self.inner.state.lock().unwrap();
            let p = state.process(&req.id, &req.exec_id)?;
            p.pid = pid;
            p.machine.started().map_err(state_err)?;
        }
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                ev::TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                },
            )
            .await;
        } else {
            let pumps = Pumps::start(agent, &req.id, &req.exec_id, &stdio);
            self.spawn_waiter(sandbox.clone(), req.id.clone(), req.exec_id.clone(), pumps);
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                ev::TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                },
            )
            .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut state = self.inner.state.lock().unwrap();
            let c = state.container(&req.id)?;
            let p = c.execs.get_mut(&req.exec_id).ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("exec {} of {} not found", req.exec_id, req.id),
                )
            })?;
            let exit = p.machine.deleted(SystemTime::now()).map_err(state_err)?;
            let pid = p.pid;
            c.execs.remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            });
        }
        let _serial = self.inner.lifecycle.lock().await;
        let (sandbox, pid) = {
            let mut state = self.inner.state.lock().unwrap();
            // An unknown task is NOT_FOUND (containerd takes that as deleted already), also
            // in a shim whose VM never booted.
            let p = state.process(&req.id, "")?;
            p.machine.check_delete().map_err(state_err)?;
            let pid = p.pid;
            (state.sandbox()?, pid)
        };
        let agent = sandbox.agent();
        if let Err(e) = Guest::new(agent).remove(&req.id).await {
            // The guest may be gone already; the slot and the state still go.
            tracing::warn!(container = %req.id, "removing the container in the guest: {e}");
        }
        sandbox.detach_rootfs(&req.id).await;
        sandbox.unshare_mounts(&req.id);
        let exit = {
            let mut state = self.inner.state.lock().unwrap();
            let c = state.container(&req.id)?;
            let exit = c
                .init
                .machine
                .deleted(SystemTime::now())
                .map_err(state_err)?;
            let bundle = c.bundle.clone();
            state.containers.remove(&req.id);
            let _ = std::fs::remove_file(Path::new(&bundle).join(BUNDLE_RECORD));
            exit
        };
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            ev::TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        )
        .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let sandbox = self.sandbox_of(&req.id)?;
        let agent = sandbox.agent();
        let pids = Guest::new(agent).pids(&req.id).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            state
                .process(&req.id, "")?
                .machine
                .check_pause()
                .map_err(state_err)?;
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent).pause(&req.id).await?;
        self.inner
            .state
            .lock()
            .unwrap()
            .process(&req.id, "")?
            .machine
            .paused()
            .map_err(state_err)?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            ev::TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            state
                .process(&req.id, "")?
                .machine
                .check_resume()
                .map_err(state_err)?;
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent).resume(&req.id).await?;
        self.inner
            .state
            .lock()
            .unwrap()
            .process(&req.id, "")?
            .machine
            .resumed()
            .map_err(state_err)?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            ev::TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            let p = state.process(&req.id, &req.exec_id)?;
            if p.machine.check_kill().is_err() {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent)
            .signal(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        {
            let mut state = self.inner.state.lock().unwrap();
            let c = state.container(&req.id)?;
            if !matches!(c.init.machine.state(), ProcessState::Running) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {} is {}, not running",
                        req.id,
                        c.init.machine.state().name()
                    ),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            let spec = req
                .spec
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default();
            if spec.is_empty() {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    "exec without a process spec",
                ));
            }
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            let mut spec = spec;
            if req.terminal {
                if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&spec) {
                    v["terminal"] = serde_json::Value::Bool(true);
                    spec = serde_json::to_vec(&v).unwrap_or(spec);
                }
            }
            c.execs.insert(
                req.exec_id.clone(),
                Process::new(format!("exec {} of {}", req.exec_id, req.id), stdio, spec),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = {
            let mut state = self.inner.state.lock().unwrap();
            state.process(&req.id, &req.exec_id)?;
            state.sandbox()?
        };
        let agent = sandbox.agent();
        Guest::new(agent)
            .resize(&req.id, &req.exec_id, req.height, req.width)
            .await?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        if !req.stdin {
            return Ok(api::Empty::new());
        }
        let (sandbox, pump) = {
            let mut state = self.inner.state.lock().unwrap();
            let sandbox = state.sandbox()?;
            (sandbox, state.process(&req.id, &req.exec_id)?.stdin.take())
        };
        if let Some(mut pump) = pump {
            // The shim lets go of the FIFO and answers at once, as containerd's runc shim does:
            // the pump forwards what is left and ends stdin in the guest when the last writer is
            // gone, however long the process takes to read it. (ctr calls CloseIO from inside
            // its read of the EOF and closes its own writer only once CloseIO has returned:
            // waiting here for that writer cost every ctr 2 s and then cut off what the pump
            // had not forwarded yet.)
            drop(pump.hold.take());
            return Ok(api::Empty::new());
        }
        crate::stdio::close_stdin(sandbox.agent(), &req.id, &req.exec_id).await;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let sandbox = self.sandbox_of(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update without resources"))?;
        let agent = sandbox.agent();
        Guest::new(agent).update(&req.id, resources).await?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let mut rx = {
            let mut state = self.inner.state.lock().unwrap();
            state.process(&req.id, &req.exec_id)?.exit.subscribe()
        };
        let exit = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(status(Code::NOT_FOUND, "the process went away"));
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let sandbox = self.sandbox_of(&req.id)?;
        let agent = sandbox.agent();
        let s = Guest::new(agent).stats(&req.id).await?;
        let metrics = cg2::Metrics {
            pids: MessageField::some(cg2::PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
                ..Default::default()
            }),
            cpu: MessageField::some(cg2::CPUStat {
                usage_usec: s.cpu_usage_ns / 1000,
                user_usec: s.cpu_user_ns / 1000,
                system_usec: s.cpu_system_ns / 1000,
                ..Default::default()
            }),
            memory: MessageField::some(cg2::MemoryStat {
                usage: s.memory_usage_bytes,
                usage_limit: s.memory_limit_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut state = self.inner.state.lock().unwrap();
        let task_pid = state.container(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _serial = self.inner.lifecycle.lock().await;
        let remaining = self.inner.state.lock().unwrap().containers.len();
        if remaining > 0 && !req.now {
            tracing::debug!(remaining, "shutdown: other containers of the pod remain");
            return Ok(api::Empty::new());
        }
        tracing::info!("shutdown: stopping the pod");
        // containerd gives Shutdown a few seconds; the teardown finishes in the
        // background and the shim exits when it is done.
        let service = self.clone();
        tokio::spawn(async move {
            service.teardown().await;
            service.inner.exit.signal();
        });
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::events::RecordedEvents;

    fn service() -> (Service, Arc<RecordedEvents>) {
        let events = Arc::new(RecordedEvents::default());
        let service = Service::with_events("ns", events.clone(), Arc::new(ExitSignal::default()));
        (service, events)
    }

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        }
    }

    fn code(e: ttrpc::Error) -> (Code, String) {
        match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other}"),
        }
    }

    fn add_container(service: &Service, id: &str) {
        service.inner.state.lock().unwrap().containers.insert(
            id.into(),
            Container {
                bundle: "/nonexistent/bundle".into(),
                init: Process::new(format!("container {id}"), StdioPaths::default(), Vec::new()),
                execs: HashMap::new(),
            },
        );
    }

    #[tokio::test]
    async fn calls_on_unknown_containers_are_not_found_and_publish_nothing() {
        let (service, events) = service();
        let state = service
            .state(
                &ctx(),
                api::StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code(state),
            (Code::NOT_FOUND, "container c1 not found".into())
        );
        let kill = service
            .kill(
                &ctx(),
                api::KillRequest {
                    id: "c1".into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(kill).0, Code::NOT_FOUND);
        let delete = service
            .delete(
                &ctx(),
                api::DeleteRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(delete).0, Code::NOT_FOUND);
        assert!(events.taken().is_empty(), "{:?}", events.taken());
    }

    #[tokio::test]
    async fn a_bundle_without_a_spec_is_refused_by_name() {
        let (service, events) = service();
        let bundle = tempfile::tempdir().unwrap();
        let err = service
            .create(
                &ctx(),
                api::CreateTaskRequest {
                    id: "c1".into(),
                    bundle: bundle.path().display().to_string(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        let (code, message) = code(err);
        assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
        assert!(message.contains("config.json"), "{message}");
        assert!(events.taken().is_empty());
        assert!(service.inner.state.lock().unwrap().containers.is_empty());
    }

    #[tokio::test]
    async fn the_state_of_a_created_container_and_its_oom_event() {
        let (service, events) = service();
        add_container(&service, "c1");
        let state = service
            .state(
                &ctx(),
                api::StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(state.status.enum_value(), Ok(api::Status::CREATED));
        assert_eq!(state.bundle, "/nonexistent/bundle");
        // An OOM kill the guest reports for a container of this shim is a /tasks/oom event; one
        // for a container it does not know is dropped.
        service.inner.oom_tx.send("c1".into()).unwrap();
        service.inner.oom_tx.send("other".into()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while events.taken().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            events.taken(),
            [(
                topics::TASK_OOM_EVENT_TOPIC.to_string(),
                "containerd.events.TaskOOM".to_string()
            )]
        );
        // A start before the sandbox booted is a precondition failure, not a crash.
        let start = service
            .start(
                &ctx(),
                api::StartRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(start).0, Code::FAILED_PRECONDITION);
    }
}
