//! A privileged root shell in the guest, run by the agent as a container: the guest's
//! network namespace, /sys writable, no masked or read-only /proc paths, CAP_NET_ADMIN, CAP_NET_RAW (ping) and
//! CAP_SYS_ADMIN, every device allowed. What a pod never gets; tests and benches need it for
//! /proc/irq, CPU hotplug, taps and O_DIRECT reads on their own disks.

use std::path::Path;

use anyhow::Result;
use pulse_protocols::containers::{Storage, StorageSource};

use crate::agent::Agent;

/// A spec for a root shell running `script` with `/bin/sh -c`; also binds the
/// virtio-console's node (/dev/hvc0).
pub fn root_shell_spec(script: &str) -> oci_spec::runtime::Spec {
    use oci_spec::runtime::*;
    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()
            .unwrap(),
    ));
    let default = Spec::default().process().clone().unwrap_or_default();
    let mut caps = default.capabilities().clone().unwrap_or_default();
    let with = |s: Option<Capabilities>| {
        let mut s = s.unwrap_or_default();
        s.insert(Capability::NetAdmin);
        s.insert(Capability::NetRaw);
        s.insert(Capability::SysAdmin);
        Some(s)
    };
    caps.set_bounding(with(caps.bounding().clone()));
    caps.set_effective(with(caps.effective().clone()));
    caps.set_permitted(with(caps.permitted().clone()));
    let process = ProcessBuilder::default()
        .args(vec!["/bin/sh".into(), "-c".into(), script.into()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .terminal(false)
        .capabilities(caps)
        .rlimits(default.rlimits().clone().unwrap_or_default())
        .build()
        .unwrap();
    spec.set_process(Some(process));
    let mut mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            if m.destination() == Path::new("/sys") {
                m.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into()]));
            }
            m
        })
        .collect();
    mounts.push(
        MountBuilder::default()
            .destination("/dev/hvc0")
            .typ("bind")
            .source("/dev/hvc0")
            .options(vec!["bind".into(), "rw".into()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_masked_paths(Some(Vec::new()));
    linux.set_readonly_paths(Some(Vec::new()));
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    linux.set_namespaces(Some(namespaces));
    let mut resources = linux.resources().clone().unwrap_or_default();
    resources.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwm")
        .build()
        .unwrap()]));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    spec
}

/// An ext4 disk found by its virtio-blk serial, mounted at `target` (relative to the
/// container's bundle: `rootfs` is its root, `rootfs/x` is /x inside).
pub fn block_storage(serial: &str, target: &str, ro: bool) -> Storage {
    let mut options = vec!["nodev".to_string()];
    if ro {
        options.push("ro".into());
    }
    Storage {
        source: StorageSource::STORAGE_SOURCE_BLOCK_SERIAL.into(),
        locator: serial.into(),
        fs_type: "ext4".into(),
        target: target.into(),
        options,
        ..Default::default()
    }
}

/// What a root shell did.
#[derive(Clone, Debug)]
pub struct ShellOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `script` as root in the guest with `storages` mounted (the first is usually the
/// root filesystem at `rootfs`). The container and its mounts are gone when this returns.
pub async fn root_shell(
    agent: &Agent,
    id: &str,
    script: &str,
    storages: Vec<Storage>,
) -> Result<ShellOutput> {
    let spec = serde_json::to_vec(&root_shell_spec(script))?;
    agent.create(id, spec, storages).await?;
    agent.start(id).await?;
    let stdout = agent.read_all(id, false).await?;
    let stderr = agent.read_all(id, true).await?;
    let status = agent.wait(id).await?;
    agent.remove(id).await?;
    Ok(ShellOutput {
        status,
        stdout,
        stderr,
    })
}
