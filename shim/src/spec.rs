//! The container's OCI spec, as containerd wrote it for the host, made fit
//! for the guest: the rootfs is the disk the agent mounts at `rootfs`, host
//! paths (namespace files, hooks, the host cgroup path) are dropped, and the
//! network namespace is the VM's own (every container of a pod shares the
//! VM's network, as the pod's containers share one). A bind mount of a host
//! path cannot reach the guest yet: it fails the create by name
//! ([`check_mounts`]), never silently dropped.

use serde_json::Value;

/// What was changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adjustments {
    /// Notes, one per change.
    pub notes: Vec<String>,
}

/// A mount of the spec the guest cannot provide.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "mount {destination}: the host path {host_path} cannot reach the VM (a bind mount; Pulse \
     does not share host files with the guest yet): remove the mount or put the files in the image"
)]
pub struct UnsupportedMount {
    /// Where the container wanted it.
    pub destination: String,
    /// The host path.
    pub host_path: String,
}

/// Every mount must reach the container or fail the create by name: bind mounts of host
/// paths do not reach the guest yet.
pub fn check_mounts(spec: &Value) -> Result<(), UnsupportedMount> {
    let Some(mounts) = spec.get("mounts").and_then(Value::as_array) else {
        return Ok(());
    };
    for m in mounts {
        let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
            || m.get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        if is_bind {
            return Err(UnsupportedMount {
                destination: m
                    .get("destination")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .into(),
                host_path: m
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .into(),
            });
        }
    }
    Ok(())
}

/// The host directory the spec's `root.path` names, resolved against the bundle as runc
/// resolves it (an absolute path stays as it is). It is the container's tree when containerd
/// mounted nothing (`ctr run --rootfs DIR`, `ctr run --config`): the bundle's own `rootfs`
/// directory is then empty.
pub fn host_root(spec: &Value, bundle: &std::path::Path) -> std::path::PathBuf {
    let path = spec
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .unwrap_or("rootfs");
    bundle.join(path)
}

/// Rewrites `spec` (a config.json value) for the guest; [`check_mounts`] has passed.
pub fn for_guest(spec: &mut Value) -> Adjustments {
    let mut adj = Adjustments::default();
    if let Some(root) = spec.get_mut("root").and_then(Value::as_object_mut) {
        root.insert("path".into(), Value::String("rootfs".into()));
    } else if let Some(obj) = spec.as_object_mut() {
        obj.insert("root".into(), serde_json::json!({"path": "rootfs"}));
    }
    if let Some(obj) = spec.as_object_mut() {
        if obj.remove("hooks").is_some() {
            adj.notes
                .push("hooks dropped (they are host programs)".into());
        }
    }
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        if linux.remove("cgroupsPath").is_some() {
            adj.notes
                .push("host cgroupsPath dropped (the agent places the container)".into());
        }
        if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            namespaces.retain(|ns| ns.get("type").and_then(Value::as_str) != Some("network"));
            for ns in namespaces.iter_mut() {
                if let Some(ns) = ns.as_object_mut() {
                    if let Some(path) = ns.remove("path") {
                        adj.notes.push(format!(
                            "{} namespace path {path} dropped (a host path)",
                            ns.get("type").and_then(Value::as_str).unwrap_or("?")
                        ));
                    }
                }
            }
        }
    }
    adj
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_paths_go_and_the_rootfs_is_the_disk() {
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/run/containerd/x/rootfs", "readonly": true},
            "hooks": {"prestart": []},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/scratch", "type": "tmpfs", "options": ["nosuid"]}
            ],
            "linux": {
                "cgroupsPath": "/default/c1",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"}
                ]
            }
        });
        let adj = for_guest(&mut spec);
        assert_eq!(spec["root"], json!({"path": "rootfs", "readonly": true}));
        assert!(spec.get("hooks").is_none());
        assert_eq!(spec["mounts"].as_array().unwrap().len(), 2);
        assert!(spec["linux"].get("cgroupsPath").is_none());
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}])
        );
        assert_eq!(adj.notes.len(), 3, "{:?}", adj.notes);
    }

    #[test]
    fn a_bind_mount_fails_by_name_by_type_or_by_option() {
        for mount in [
            json!({"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts", "options": ["rbind", "ro"]}),
            json!({"destination": "/data", "source": "/srv/data", "options": ["bind"]}),
            json!({"destination": "/data", "type": "none", "source": "/srv/data", "options": ["rbind", "rw"]}),
        ] {
            let spec = json!({"mounts": [{"destination": "/proc", "type": "proc"}, mount.clone()]});
            let err = check_mounts(&spec).unwrap_err();
            assert_eq!(err.destination, mount["destination"]);
            assert_eq!(err.host_path, mount["source"]);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("mount {}: the host path", err.destination)),
                "{text}"
            );
        }
    }

    #[test]
    fn kernel_filesystems_and_tmpfs_pass() {
        let spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/scratch", "type": "tmpfs"}
        ]});
        assert_eq!(check_mounts(&spec), Ok(()));
        assert_eq!(check_mounts(&json!({})), Ok(()));
    }

    #[test]
    fn the_host_root_is_the_specs_path_against_the_bundle() {
        let bundle = std::path::Path::new("/run/containerd/b/c1");
        let root = |spec: Value| host_root(&spec, bundle);
        assert_eq!(
            root(json!({"root": {"path": "rootfs"}})),
            bundle.join("rootfs")
        );
        assert_eq!(
            root(json!({"root": {"path": "/srv/trees/busybox", "readonly": true}})),
            std::path::Path::new("/srv/trees/busybox")
        );
        assert_eq!(root(json!({"root": {"path": "tree"}})), bundle.join("tree"));
        assert_eq!(root(json!({})), bundle.join("rootfs"));
    }

    #[test]
    fn a_spec_without_root_gets_one() {
        let mut spec = json!({"ociVersion": "1.0.2"});
        for_guest(&mut spec);
        assert_eq!(spec["root"]["path"], "rootfs");
    }
}
