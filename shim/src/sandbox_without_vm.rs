//! A sandbox without a VM, for the task service's tests: its guest is whatever its agent
//! connects to, its VM does nothing.

use std::path::PathBuf;

use async_trait::async_trait;

use super::*;
use crate::hypervisor::{HostView, HypervisorError};
use crate::network::NicDevice;

/// A VM that is never there; it stops when its [`VmStopper`] says so.
struct NoVm(Arc<Mutex<Option<String>>>);

/// Stops a [`Sandbox::without_vm`]'s VM from outside, as a guest kernel panic would.
pub(crate) struct VmStopper(Arc<Mutex<Option<String>>>);

impl VmStopper {
    /// The VM stops, for `why`.
    pub(crate) fn stop(&self, why: &str) {
        *self.0.lock().unwrap() = Some(why.into());
    }
}

#[async_trait]
impl Hypervisor for NoVm {
    async fn boot(&mut self) -> Result<(), HypervisorError> {
        Ok(())
    }

    fn agent_socket(&self) -> PathBuf {
        PathBuf::new()
    }

    async fn resize_disk(&mut self, _slot: usize, _bytes: u64) -> Result<(), HypervisorError> {
        Ok(())
    }

    fn set_nics(&mut self, _nics: Vec<NicDevice>) {}

    fn host_view(&self) -> HostView {
        HostView {
            backend: "none".into(),
            accel: "none".into(),
            vcpus: 0,
            memory_mib: 0,
            devices: Vec::new(),
            pids: Vec::new(),
        }
    }

    fn exited(&mut self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        Ok(())
    }
}

impl Sandbox {
    /// Pod `pod`'s sandbox, ready, by `config` (its files under `shim.state_dir`), its guest
    /// behind `agent`. Its directory and empty block slots are made and its VM is watched, as
    /// a boot does; the stopper stops the VM.
    pub(crate) fn without_vm(
        config: PulseConfig,
        pod: &str,
        agent: Agent,
    ) -> (Arc<Sandbox>, VmStopper) {
        let paths = SandboxPaths::new(&config.shim.state_dir, "ns", pod).unwrap();
        crate::private_fs::create_dir(&paths.dir).unwrap();
        let slots = BlockSlots::new(&paths, config.devices.block_slots);
        slots.create_placeholders().unwrap();
        let mut machine = SandboxMachine::new(pod);
        machine.ready().unwrap();
        let exit = Arc::new(Mutex::new(None));
        let sandbox = Arc::new(Sandbox {
            pod: pod.into(),
            namespace: "ns".into(),
            slots: Mutex::new(slots),
            oom: Arc::new(OomScanner::new(paths.console())),
            paths,
            config,
            vm: tokio::sync::Mutex::new(Box::new(NoVm(exit.clone()))),
            agent,
            machine: Mutex::new(machine),
            tasks: Mutex::new(Vec::new()),
            cgroup: None,
            share: None,
            network: None,
            late_network: tokio::sync::Mutex::new(None),
            host_pid: None,
        });
        let watcher = watch::watch_vm(Arc::downgrade(&sandbox));
        sandbox.tasks.lock().unwrap().push(watcher);
        (sandbox, VmStopper(exit))
    }

    /// How many block slots hold a container's disk.
    pub(crate) fn slots_in_use(&self) -> usize {
        self.slots.lock().unwrap().used()
    }
}
