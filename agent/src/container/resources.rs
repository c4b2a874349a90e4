//! A container's cgroup: pause and resume, stats, its processes, resource updates.

use std::path::Path;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use super::{
    container_status_word, runtime_err, Container, ContainerError, Manager, Phase, Result,
};

impl Manager {
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
                (p.as_raw().cast_unsigned(), comm.trim().to_string())
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
