//! A container's create: the pod's VM for its first container (sized for the pod's limits),
//! the container's mounts and rootfs, the agent's create, the task's record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;
use ttrpc::Code;

use super::errors::{internal, state_err, status};
use super::guest::Guest;
use super::registry::{Container, Process};
use crate::config::{self, PulseConfig};
use crate::ids::{self, IdKind};
use crate::persist::{BundleRecord, BUNDLE_RECORD};
use crate::pod::{annotations_of, size_vm, PodResources, PodRole};
use crate::rootfs::RootfsMount;
use crate::sandbox::Sandbox;
use crate::service::Service;
use crate::stdio::{Pumps, StdioPaths};

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

impl Service {
    pub(crate) fn load_config(options: Option<&Any>) -> anyhow::Result<PulseConfig> {
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
    pub(crate) async fn sandbox_for(
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

    /// Creates the container (and the pod's sandbox with its first one), then publishes
    /// `/tasks/create`.
    pub(crate) async fn create_task(
        &self,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let _serial = self.inner.lifecycle.lock().await;
        tracing::info!(id = %req.id, bundle = %req.bundle, "create");
        let pid = self.create_container(&req).await.inspect_err(|e| {
            tracing::error!(id = %req.id, "create failed: {e}");
        })?;
        let io = ev::TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        };
        let event = ev::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(io),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, event).await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
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

    pub(crate) async fn create_in(
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
        init.host_pid = sandbox.host_pid().filter(|_| req.id == sandbox.pod);
        let pid = init.set_guest_pid(pid);
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
}
