//! A pod's sandbox: its VM (through a [`Hypervisor`] backend), the agent
//! connection, the block slots that carry container rootfs disks, the share
//! that carries the containers' bind mounts of host paths (virtio-fs), the
//! device check, the management socket, and a teardown that leaves nothing
//! behind.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use pulse_protocols::{containers, sandbox as sandbox_api};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::agent::{self, Agent};
use crate::block_slots::{self, BlockSlots};
use crate::cgroup::{self, PodCgroup};
use crate::config::{PulseConfig, RootfsMode};
use crate::console::{rotated_path, OomScanner};
use crate::hypervisor::{self, Hypervisor, SandboxPaths, SharedDir, VmSpec};
use crate::network::late::LateNetwork;
use crate::network::{self, GuestNetwork, PodNetns, PodNetwork};
use crate::persist::{self, ProcRecord, SandboxRecord};
use crate::report::{self, Report};
use crate::rootfs::{self, RootfsMount};
use crate::shared_fs::{self, SharedFs, SANDBOX_SHM_BYTES};
use crate::spec::MountPlan;
use crate::state::{SandboxMachine, StateError};

/// Where in the bundle the guest mounts a container's writable layer (`rootfs.mode = "shared"`).
const WRITABLE_LAYER: &str = "rw";
/// How long the agent gets to remove the containers at teardown.
const POWEROFF_WAIT: Duration = Duration::from_secs(3);

/// One pod's VM and what belongs to it.
pub struct Sandbox {
    /// The pod's id.
    pub pod: String,
    /// containerd namespace.
    pub namespace: String,
    /// Its files.
    pub paths: SandboxPaths,
    config: PulseConfig,
    vm: tokio::sync::Mutex<Box<dyn Hypervisor>>,
    agent: Agent,
    slots: Mutex<BlockSlots>,
    machine: Mutex<SandboxMachine>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    oom: Arc<OomScanner>,
    cgroup: Option<Arc<PodCgroup>>,
    share: Option<SharedFs>,
    network: Option<PodNetwork>,
    /// The pod's own network namespace, which `ctr run --cni` fills after the boot.
    late_network: tokio::sync::Mutex<Option<LateNetwork>>,
    host_pid: Option<u32>,
}

impl Sandbox {
    /// Boots the pod's VM, connects to its agent, checks its devices and opens
    /// the management socket. On any failure everything started is removed again.
    /// The guest's hostname is `hostname` (the pod's, from the CRI sandbox's spec) or the
    /// pod's id. `oom` receives container ids the guest kernel OOM-killed in. With
    /// `devices.net_queues` > 0 the interfaces CNI made in `netns` become the VM's NICs
    /// ([`crate::network`]); a pod on the host's network is refused.
    pub async fn start(
        config: PulseConfig,
        namespace: &str,
        pod: &str,
        hostname: Option<&str>,
        netns: PodNetns,
        oom: mpsc::UnboundedSender<String>,
    ) -> Result<Arc<Sandbox>> {
        let paths = SandboxPaths::new(&config.shim.state_dir, namespace, pod)?;
        check_socket_paths(&paths)?;
        if config.devices.net_queues > 0 && netns == PodNetns::Host {
            return Err(anyhow!(network::NetworkError::HostNetwork).context(format!(
                "pod {pod} (devices.net_queues in the pulse config is {})",
                config.devices.net_queues
            )));
        }
        if paths.dir.exists() {
            // A dead shim's leftovers: kill what it recorded, then start clean.
            cleanup_recorded(&paths.dir);
        }
        crate::private_fs::create_dir(&paths.dir)
            .with_context(|| format!("creating the sandbox directory {}", paths.dir.display()))?;
        let cgroup = create_cgroup(&config, namespace, pod)?;
        let mut record = SandboxRecord {
            pod: pod.into(),
            namespace: namespace.into(),
            dir: paths.dir.clone(),
            shim: ProcRecord::of(std::process::id()),
            vm: Vec::new(),
            cgroup: cgroup.as_ref().map(|c| c.path().to_path_buf()),
        };
        let _ = record.save(&paths.state_file());

        // Bound before the boot, so the agent's announcement finds it.
        let ready = agent::ReadyListener::bind(&paths.ready()).with_context(|| {
            format!(
                "binding the agent's readiness socket {}",
                paths.ready().display()
            )
        })?;
        let (pod_network, guest_network) = match setup_network(&config, &netns, &paths).await {
            Ok(Some((net, nics, guest))) => (Some((net, nics)), Some(guest)),
            Ok(None) => (None, None),
            Err(e) => {
                remove_cgroup(cgroup.as_ref()).await;
                persist::remove_dir(&paths.dir);
                return Err(e.context(format!("pod {pod}: carrying its network into the VM")));
            }
        };
        let share = config.devices.shared_fs.then(|| SharedFs::new(&paths));
        let slots = BlockSlots::new(&paths, config.devices.block_slots);
        let spec = VmSpec::new(&config, slots.disks(), share.as_ref().map(shared_dir));
        let mut vm = hypervisor::create(
            config.hypervisor.backend,
            spec,
            &config.qemu,
            paths.clone(),
            cgroup.clone(),
        );
        let late_network = match netns {
            PodNetns::Fresh => {
                let pairs = (config.devices.net_queues > 0).then(|| queue_pairs(&config));
                match LateNetwork::prepare(cgroup.as_deref(), &paths.dir, pairs) {
                    Ok((late, nic)) => {
                        vm.set_nics(nic.into_iter().collect());
                        Some(late)
                    }
                    Err(e) => {
                        remove_cgroup(cgroup.as_ref()).await;
                        persist::remove_dir(&paths.dir);
                        return Err(anyhow!(e).context(format!(
                            "pod {pod}: making its own network namespace (for `ctr run --cni`)"
                        )));
                    }
                }
            }
            _ => None,
        };
        let host_pid = late_network.as_ref().map(LateNetwork::pid);
        let pod_network = pod_network.map(|(net, nics)| {
            vm.set_nics(nics);
            net
        });
        let booted = boot(vm.as_mut(), &slots, share.as_ref()).await;
        record.vm = vm
            .host_view()
            .pids
            .into_iter()
            .filter(|p| *p != std::process::id())
            .chain(host_pid)
            .filter_map(ProcRecord::of)
            .collect();
        let _ = record.save(&paths.state_file());
        let fail_cgroup = cgroup.clone();
        let fail_network = pod_network.clone();
        let fail = |vm: Box<dyn Hypervisor>, paths: SandboxPaths, keep_console: bool| async move {
            let mut vm = vm;
            let _ = vm.stop().await;
            teardown_network(fail_network).await;
            remove_cgroup(fail_cgroup.as_ref()).await;
            let console_tail = console_tail(&paths.console());
            if !keep_console {
                persist::remove_dir(&paths.dir);
            }
            console_tail
        };
        if let Err(e) = booted {
            let _ = fail(vm, paths, config.shim.keep_console_log).await;
            return Err(e.context(format!(
                "starting the {} VM of pod {pod}",
                config.hypervisor.backend.name()
            )));
        }
        let socket = vm.agent_socket();
        let agent = match agent::connect(
            &socket,
            ready,
            || vm.exited(),
            config.agent.port,
            config.connect_timeout(),
            config.request_timeout(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                let tail = fail(vm, paths, config.shim.keep_console_log).await;
                let mut err = anyhow!(e);
                if !tail.is_empty() {
                    err = err.context(format!("guest console ends with: {tail}"));
                }
                return Err(err.context(format!("pod {pod}: the guest agent is unreachable")));
            }
        };
        let created = agent
            .sandbox()
            .create_sandbox(
                agent.ctx(),
                &sandbox_api::CreateSandboxRequest {
                    sandbox_id: pod.into(),
                    hostname: hostname_of(hostname.filter(|h| !h.is_empty()).unwrap_or(pod)),
                    host_time_unix_nanos: host_time_unix_nanos(),
                    shared_fs_tag: vm.shared_fs_tag().unwrap_or_default().into(),
                    shm_size_bytes: SANDBOX_SHM_BYTES,
                    ..Default::default()
                },
            )
            .await;
        if let Err(e) = created {
            let _ = fail(vm, paths, config.shim.keep_console_log).await;
            return Err(anyhow!("pod {pod}: the agent refused CreateSandbox: {e}"));
        }
        if let Some(guest) = &guest_network {
            if let Err(e) = apply_guest_network(&agent, guest).await {
                let _ = fail(vm, paths, config.shim.keep_console_log).await;
                return Err(e.context(format!("pod {pod}: setting the guest's network")));
            }
        }

        let mut machine = SandboxMachine::new(pod);
        machine.ready().map_err(|e| anyhow!(e))?;
        let sandbox = Arc::new(Sandbox {
            pod: pod.into(),
            namespace: namespace.into(),
            slots: Mutex::new(slots),
            paths: paths.clone(),
            config,
            vm: tokio::sync::Mutex::new(vm),
            agent,
            machine: Mutex::new(machine),
            tasks: Mutex::new(Vec::new()),
            oom: Arc::new(OomScanner::new(paths.console())),
            cgroup,
            share,
            network: pod_network,
            late_network: tokio::sync::Mutex::new(late_network),
            host_pid,
        });
        sandbox.check_devices().await;
        match crate::mgmt::serve(&paths.mgmt(), Arc::downgrade(&sandbox)) {
            Ok(task) => sandbox.tasks.lock().unwrap().push(task),
            Err(e) => tracing::warn!("management socket {}: {e}", paths.mgmt().display()),
        }
        let watchers = [
            watch_console_for_oom(sandbox.oom.clone(), oom),
            watch::watch_vm(Arc::downgrade(&sandbox)),
        ];
        sandbox.tasks.lock().unwrap().extend(watchers);
        Ok(sandbox)
    }

    /// Containers the guest kernel OOM-killed in since the last look.
    pub fn scan_oom(&self) -> Vec<String> {
        self.oom.scan()
    }

    /// The host process that stands for the pod's own container toward containerd: the
    /// holder of the pod's own network namespace, where `ctr run --cni` runs CNI.
    pub fn host_pid(&self) -> Option<u32> {
        self.host_pid
    }

    /// Carries what CNI put in the pod's own namespace since the boot into the VM, once,
    /// before the pod's container starts (`ctr run --cni`; see [`crate::network::late`]).
    pub async fn connect_late_network(&self) -> Result<()> {
        let mut slot = self.late_network.lock().await;
        let Some(mut late) = slot.take() else {
            return Ok(());
        };
        let (late, connected) = tokio::task::spawn_blocking(move || {
            let connected = late.connect();
            (late, connected)
        })
        .await?;
        *slot = Some(late);
        match connected.context("carrying the interface CNI added into the VM")? {
            Some(guest) => {
                apply_guest_network(&self.agent, &guest).await?;
                tracing::info!(pod = %self.pod, "the pod's own network namespace is carried into the VM");
            }
            None => tracing::info!(
                pod = %self.pod,
                "nothing was added to the pod's own network namespace: the guest's NIC stays down"
            ),
        }
        Ok(())
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The configuration the sandbox was started with.
    pub fn config(&self) -> &PulseConfig {
        &self.config
    }

    /// Refuses new containers unless the sandbox is ready.
    pub fn check_add_container(&self) -> Result<(), StateError> {
        self.machine.lock().unwrap().check_add_container()
    }

    /// Compares what the VMM configured with the guest's report; logs both on a mismatch.
    pub async fn check_devices(&self) -> Report {
        let report = self.report().await;
        if let Some(e) = &report.guest_error {
            tracing::warn!(pod = %self.pod, "no device report from the guest: {e}");
        } else if !report.mismatches.is_empty() {
            tracing::warn!(
                pod = %self.pod,
                mismatches = ?report.mismatches,
                host = %serde_json::to_string(&report.host).unwrap_or_default(),
                guest = %report.guest,
                "the guest's devices differ from what the VMM configured"
            );
        } else {
            tracing::info!(pod = %self.pod, devices = report.host.devices.len(), "device report matches the VMM's configuration");
        }
        report
    }

    /// Both views and their differences.
    pub async fn report(&self) -> Report {
        let host = self.vm.lock().await.host_view();
        let guest = self.agent.device_report().await.map_err(|e| e.to_string());
        Report::new(&self.pod, host, guest.as_ref().map_err(Clone::clone))
    }

    /// The Prometheus text of both views.
    pub async fn metrics_text(&self) -> String {
        let host = self.vm.lock().await.host_view();
        let guest = self.agent.device_report().await.ok();
        let mismatches = guest
            .as_ref()
            .map(|g| report::compare(&host, g).len())
            .unwrap_or(0);
        report::prometheus(&self.pod, &host, guest.as_ref(), mismatches)
    }

    /// Makes container `id`'s rootfs for the guest from `mounts` (or from `tree`, the spec's
    /// root.path, when containerd mounted nothing), by `rootfs.mode` (see [`crate::rootfs`]):
    /// its layers shared read-only with a writable disk in a free slot, or a copy of it on a
    /// disk in a free slot. Returns the storages the agent mounts, the last at the bundle's
    /// `rootfs`.
    pub async fn attach_rootfs(
        &self,
        id: &str,
        mounts: &[RootfsMount],
        tree: &Path,
    ) -> Result<Vec<containers::Storage>> {
        let shared = match (
            &self.share,
            self.config.rootfs.mode_for(self.share.is_some()),
        ) {
            (Some(share), RootfsMode::Shared) => match rootfs::image_view(mounts, tree) {
                Some(view) => Some((share, view)),
                None => {
                    tracing::info!(
                        container = id,
                        ?mounts,
                        "rootfs: not overlay layers, copied"
                    );
                    None
                }
            },
            _ => None,
        };
        let slot = self.slots.lock().unwrap().take(id).ok_or_else(|| {
            anyhow!(
                "pod {}: all {} block slots are in use (devices.block_slots in the pulse config)",
                self.pod,
                self.config.devices.block_slots
            )
        })?;
        let result = async {
            let image = self.slots.lock().unwrap().image(slot);
            let disk = containers::Storage {
                source: containers::StorageSource::STORAGE_SOURCE_BLOCK_SERIAL.into(),
                locator: block_slots::serial(slot),
                fs_type: "ext4".into(),
                ..Default::default()
            };
            let storages = match &shared {
                Some((share, view)) => {
                    let c = &self.config.rootfs;
                    let size = rootfs::make_writable_disk(&image, c.writable_mib, &c.mkfs).await?;
                    self.attach_disk(slot, size).await?;
                    let lower_dirs = vec![share.mount_image(id, view)?];
                    tracing::info!(
                        container = id,
                        slot,
                        layers = rootfs::view_layers(view),
                        "rootfs image shared"
                    );
                    vec![
                        containers::Storage {
                            target: WRITABLE_LAYER.into(),
                            options: rootfs::WRITABLE_MOUNT_OPTIONS.map(String::from).to_vec(),
                            ..disk
                        },
                        containers::Storage {
                            source: containers::StorageSource::STORAGE_SOURCE_OVERLAY.into(),
                            lower_dirs,
                            upper_dir: format!("{WRITABLE_LAYER}/upper"),
                            work_dir: format!("{WRITABLE_LAYER}/work"),
                            target: "rootfs".into(),
                            ..Default::default()
                        },
                    ]
                }
                None => {
                    let staging = self.paths.staging(id)?;
                    let size =
                        rootfs::build_disk(mounts, tree, &staging, &image, &self.config.rootfs)
                            .await?;
                    self.attach_disk(slot, size).await?;
                    tracing::info!(
                        container = id,
                        slot,
                        mib = size >> 20,
                        "rootfs disk attached"
                    );
                    vec![containers::Storage {
                        target: "rootfs".into(),
                        ..disk
                    }]
                }
            };
            anyhow::Ok(storages)
        }
        .await;
        if let Err(e) = result {
            self.detach_rootfs(id).await;
            return Err(e.context(format!("container {id}: preparing its rootfs")));
        }
        result
    }

    /// Whether the pod's VM has a virtio-fs share for host paths.
    pub fn has_shared_fs(&self) -> bool {
        self.share.is_some()
    }

    /// Binds the host sources of container `id`'s shared mounts into the pod's share (what
    /// [`crate::spec::rewrite_mounts`] points the guest at).
    pub fn share_mounts(&self, id: &str, plans: &[MountPlan]) -> Result<()> {
        if !plans.iter().any(|p| matches!(p, MountPlan::Share { .. })) {
            return Ok(());
        }
        let share = self
            .share
            .as_ref()
            .ok_or_else(|| anyhow!("pod {}: its VM has no shared filesystem", self.pod))?;
        let bound = share
            .bind(id, plans)
            .with_context(|| format!("container {id}: sharing its bind mounts with the guest"))?;
        tracing::info!(
            container = id,
            bound,
            "host paths bound into the pod's share"
        );
        Ok(())
    }

    /// Removes container `id`'s binds from the pod's share.
    pub fn unshare_mounts(&self, id: &str) {
        if let Some(share) = &self.share {
            share.unbind(id);
        }
    }

    /// Empties container `id`'s slot and takes its image out of the share (the agent
    /// unmounted both when it removed the container).
    pub async fn detach_rootfs(&self, id: &str) {
        if let Some(share) = &self.share {
            share.unmount_image(id);
        }
        let released = self.slots.lock().unwrap().release(id);
        if let Some((slot, emptied)) = released {
            let resized = match emptied {
                Ok(()) => self
                    .vm
                    .lock()
                    .await
                    .resize_disk(slot, 0)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = resized {
                tracing::warn!(container = id, slot, "emptying the slot: {e}");
            }
        }
    }

    /// Makes the disk image of `bytes` bytes just written into `slot` visible to the guest.
    async fn attach_disk(&self, slot: usize, bytes: u64) -> Result<()> {
        self.vm.lock().await.resize_disk(slot, bytes).await?;
        self.slots.lock().unwrap().attached(slot, bytes);
        Ok(())
    }

    /// Stops the pod: the agent removes every container and powers the guest
    /// off, then the VMM is stopped and the sandbox directory removed. Runs once.
    pub async fn stop(&self) {
        if !self.machine.lock().unwrap().stopping() {
            return;
        }
        let destroy = self
            .agent
            .sandbox()
            .destroy_sandbox(
                pulse_protocols::deadline(POWEROFF_WAIT),
                &sandbox_api::DestroySandboxRequest {
                    force: true,
                    ..Default::default()
                },
            )
            .await;
        if let Err(e) = destroy {
            tracing::debug!(pod = %self.pod, "DestroySandbox: {e}");
        }
        // The containers are gone and nothing in the guest needs saving: the
        // VMM stops the VM now rather than waiting for the guest's power-off.
        let mut vm = self.vm.lock().await;
        if let Err(e) = vm.stop().await {
            tracing::warn!(pod = %self.pod, "stopping the VM: {e}");
        }
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        teardown_network(self.network.clone()).await;
        if let Some(mut late) = self.late_network.lock().await.take() {
            late.stop().await;
        }
        remove_cgroup(self.cgroup.as_ref()).await;
        if self.config.shim.keep_console_log {
            let keep = self
                .config
                .shim
                .state_dir
                .join(format!("{}-console.log", self.pod));
            let console = self.paths.console();
            let _ = std::fs::rename(rotated_path(&console), rotated_path(&keep));
            let _ = std::fs::rename(console, keep);
        }
        persist::remove_dir(&self.paths.dir);
        self.machine.lock().unwrap().stopped();
        tracing::info!(pod = %self.pod, "sandbox stopped");
    }

    /// Whether the VM died under the shim.
    pub async fn vm_exited(&self) -> Option<String> {
        self.vm.lock().await.exited()
    }
}

/// The pod's share as its VM exports it.
fn shared_dir(share: &SharedFs) -> SharedDir {
    SharedDir {
        tag: shared_fs::TAG,
        export: share.export_dir().to_path_buf(),
    }
}

/// Makes what the VM boots with (the block slots' placeholders, the pod's share), then boots it.
async fn boot(vm: &mut dyn Hypervisor, slots: &BlockSlots, share: Option<&SharedFs>) -> Result<()> {
    slots.create_placeholders()?;
    if let Some(share) = share {
        share
            .prepare()
            .context("preparing the pod's shared directory")?;
    }
    vm.boot().await?;
    Ok(())
}

/// With `devices.net_queues` > 0 and a namespace CNI made: a tap per veth there, joined to
/// it, recorded in the sandbox directory; the NICs for the VMM and the guest's settings. The
/// queue pairs are the pod's vCPUs, at most `devices.net_queues`.
async fn setup_network(
    config: &PulseConfig,
    netns: &PodNetns,
    paths: &SandboxPaths,
) -> Result<Option<(PodNetwork, Vec<network::NicDevice>, GuestNetwork)>> {
    let PodNetns::Path(path) = netns else {
        return Ok(None);
    };
    if config.devices.net_queues == 0 {
        return Ok(None);
    }
    let pairs = queue_pairs(config);
    let path = path.clone();
    let (net, nics, guest) =
        tokio::task::spawn_blocking(move || PodNetwork::setup(&path, pairs)).await??;
    if let Err(e) = net.save(&paths.dir) {
        tracing::warn!(
            "recording the pod's network in {}: {e}",
            paths.dir.display()
        );
    }
    tracing::info!(
        netns = %net.netns.display(),
        carried = ?net.carried,
        queue_pairs = pairs,
        "the pod's network is carried into the VM"
    );
    Ok(Some((net, nics, guest)))
}

/// A NIC's queue pairs: the pod's vCPUs, at most `devices.net_queues`.
fn queue_pairs(config: &PulseConfig) -> u16 {
    config
        .devices
        .net_queues
        .min(u16::from(config.vm.vcpus))
        .max(1)
}

/// Removes what [`setup_network`] made (off the runtime thread: it enters the namespace).
async fn teardown_network(network: Option<PodNetwork>) {
    let Some(network) = network else {
        return;
    };
    match tokio::task::spawn_blocking(move || network.teardown()).await {
        Ok(Ok(removed)) => tracing::info!(?removed, "the pod's network removed"),
        Ok(Err(e)) => tracing::warn!("removing the pod's network: {e}"),
        Err(e) => tracing::warn!("removing the pod's network: {e}"),
    }
}

/// Has the agent set the guest's interfaces, routes and neighbours.
async fn apply_guest_network(agent: &Agent, guest: &GuestNetwork) -> Result<()> {
    if guest.interfaces.is_empty() {
        return Ok(());
    }
    let (interfaces, routes, neighbours) = network::requests(guest);
    let client = agent.network();
    client
        .update_interfaces(agent.ctx(), &interfaces)
        .await
        .map_err(|e| anyhow!("UpdateInterfaces: {e}"))?;
    client
        .update_routes(agent.ctx(), &routes)
        .await
        .map_err(|e| anyhow!("UpdateRoutes: {e}"))?;
    client
        .add_neighbours(agent.ctx(), &neighbours)
        .await
        .map_err(|e| anyhow!("AddNeighbours: {e}"))?;
    tracing::info!(
        interfaces = interfaces.interfaces.len(),
        routes = routes.routes.len(),
        neighbours = neighbours.neighbours.len(),
        "the guest's network is set"
    );
    Ok(())
}

/// The pod's cgroup (`shim.cgroup_parent`), unless that is empty or cgroup v2 is not mounted.
fn create_cgroup(
    config: &PulseConfig,
    namespace: &str,
    pod: &str,
) -> Result<Option<Arc<PodCgroup>>> {
    let parent = &config.shim.cgroup_parent;
    if parent.as_os_str().is_empty() {
        return Ok(None);
    }
    let Some(root) = cgroup::v2_root() else {
        return Ok(None);
    };
    let cgroup = PodCgroup::create(&root, parent, namespace, pod)
        .with_context(|| format!("pod {pod}: its cgroup (shim.cgroup_parent in the pulse config; empty turns pod cgroups off)"))?;
    Ok(Some(Arc::new(cgroup)))
}

/// Removes the pod's cgroup once the VM is gone (off the runtime thread: it may wait).
async fn remove_cgroup(cgroup: Option<&Arc<PodCgroup>>) {
    let Some(cgroup) = cgroup.cloned() else {
        return;
    };
    match tokio::task::spawn_blocking(move || cgroup.remove()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{e}"),
        Err(e) => tracing::warn!("removing the pod's cgroup: {e}"),
    }
}

/// Unix socket paths must fit in sun_path (108 bytes with the NUL).
fn check_socket_paths(paths: &SandboxPaths) -> Result<()> {
    for p in [
        paths.vhost(),
        paths.vsock(),
        paths.qmp(),
        paths.mgmt(),
        paths.virtiofs(),
    ] {
        // The VMM's vsock adds `_<port>` for guest-initiated connections.
        if p.as_os_str().len() > pulse_vmm::devices::vsock::MAX_UDS_PATH {
            return Err(anyhow!(
                "socket path {} is too long for a unix socket; use a shorter shim.state_dir",
                p.display()
            ));
        }
    }
    Ok(())
}

/// A hostname for the guest (the pod's, or its id), cut to 63 characters.
fn hostname_of(name: &str) -> String {
    name.chars().take(63).collect()
}

/// The host's wall-clock time for the guest to take (0 if the host's clock is before 1970).
fn host_time_unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The last lines of the guest console, for error messages.
pub fn console_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Kills what a sandbox record lists and removes the directory (a dead shim's leftovers).
pub fn cleanup_recorded(dir: &Path) -> usize {
    let record = SandboxRecord::load(&dir.join("state.json")).unwrap_or_default();
    let killed = persist::kill_all(&record.vm, Duration::from_secs(5));
    // The VM is gone, and with it the taps: what is left is the veths' ingress qdiscs.
    network::cleanup_recorded(dir);
    if let Some(path) = &record.cgroup {
        if let Err(e) = cgroup::remove(path, cgroup::REMOVE_WAIT) {
            tracing::warn!("{e}");
        }
    }
    persist::remove_dir(dir);
    killed
}

/// Scans the guest console every 250 ms and reports OOM kills.
fn watch_console_for_oom(
    scanner: Arc<OomScanner>,
    oom: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for id in scanner.scan() {
                if oom.send(id).is_err() {
                    return;
                }
            }
        }
    })
}

#[path = "sandbox_watch.rs"]
mod watch;

#[cfg(test)]
#[path = "sandbox_without_vm.rs"]
mod without_vm;
#[cfg(test)]
pub(crate) use without_vm::VmStopper;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(console_tail(&p), "b | c | d");
        assert_eq!(console_tail(&dir.path().join("none")), "");
    }

    #[test]
    fn the_guests_hostname_is_cut_to_63_characters() {
        assert_eq!(hostname_of("apps"), "apps");
        assert_eq!(hostname_of(&"a".repeat(64)).len(), 63);
    }

    #[test]
    fn long_state_dirs_are_refused() {
        let long = "x".repeat(90);
        let paths = SandboxPaths::new(Path::new("/run"), "default", &long).unwrap();
        assert!(check_socket_paths(&paths).is_err());
        let short = SandboxPaths::new(Path::new("/run/pulse"), "default", "p").unwrap();
        check_socket_paths(&short).unwrap();
    }
}
