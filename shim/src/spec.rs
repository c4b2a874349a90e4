//! The container's OCI spec, as containerd wrote it for the host, made fit
//! for the guest: the rootfs is the disk the agent mounts at `rootfs`, host
//! paths (namespace files, hooks, the host cgroup path) are dropped, and the
//! network namespace is the VM's own (every container of a pod shares the
//! VM's network, as the pod's containers share one). A bind mount of a host
//! directory or regular file reaches the guest through the pod's virtio-fs
//! share, containerd's CRI pod `/dev/shm` becomes the pod's tmpfs in the guest
//! ([`plan_mounts`], [`rewrite_mounts`]); any other bind mount fails the create
//! by name, never silently dropped.

use serde_json::Value;

/// What was changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adjustments {
    /// Notes, one per change.
    pub notes: Vec<String>,
}

/// Where the guest mounts the pod's virtio-fs share (the agent, at `CreateSandbox`).
pub const GUEST_SHARED_DIR: &str = "/run/pulse/shared";
/// Where the guest mounts the pod's shared-memory tmpfs (the agent, at `CreateSandbox`).
pub const GUEST_SANDBOX_SHM: &str = "/run/pulse/sandbox-shm";

/// A mount of the spec the guest cannot provide.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("mount {destination}: the host path {host_path} cannot reach the VM: {reason}")]
pub struct UnsupportedMount {
    /// Where the container wanted it.
    pub destination: String,
    /// The host path.
    pub host_path: String,
    /// Why.
    pub reason: String,
}

/// What a bind mount's host source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// Anything else, named (`a socket`, `a character device`, ...): it cannot be shared.
    Other(&'static str),
}

/// What becomes of one bind mount of the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountPlan {
    /// The host path is carried into the guest through the pod's virtio-fs share.
    Share {
        /// The mount's index in the spec's `mounts` (it names the share's entry too).
        index: usize,
        /// The host path.
        source: std::path::PathBuf,
        /// A directory or a regular file.
        kind: SourceKind,
        /// `rbind`: the mounts below the source come along.
        recursive: bool,
        /// `ro`.
        readonly: bool,
    },
    /// containerd's CRI pod `/dev/shm` (a tmpfs the CRI plugin made on the host for the pod):
    /// the pod's shared-memory tmpfs in the guest instead (as Kata does), so that the pod's
    /// containers share it there.
    SandboxShm {
        /// The mount's index in the spec's `mounts`.
        index: usize,
    },
}

impl MountPlan {
    /// The entry of a shared host path in the guest: `<GUEST_SHARED_DIR>/<container>/<index>`.
    pub fn guest_source(&self, container: &str) -> String {
        match self {
            MountPlan::Share { index, .. } => format!("{GUEST_SHARED_DIR}/{container}/{index}"),
            MountPlan::SandboxShm { .. } => GUEST_SANDBOX_SHM.to_string(),
        }
    }

    fn index(&self) -> usize {
        match self {
            MountPlan::Share { index, .. } | MountPlan::SandboxShm { index } => *index,
        }
    }
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn has_option(m: &Value, option: &str) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|o| o == option))
}

/// Whether `source` is a pod's `/dev/shm` made by containerd's CRI plugin:
/// `<state>/io.containerd.grpc.v1.cri/sandboxes/<pod>/shm`.
pub fn is_cri_sandbox_shm(destination: &str, source: &str) -> bool {
    let parts: Vec<&str> = source.split('/').filter(|c| !c.is_empty()).collect();
    destination.trim_end_matches('/') == "/dev/shm"
        && source.starts_with('/')
        && parts.len() >= 4
        && parts[parts.len() - 1] == "shm"
        && parts[parts.len() - 3] == "sandboxes"
        && parts[parts.len() - 4] == "io.containerd.grpc.v1.cri"
        && !parts.contains(&"..")
}

/// Decides, for every bind mount of the spec, how it reaches the guest; fails on the first one
/// that cannot, by name. `shared_fs`: whether the pod's VM has a virtio-fs share. `kind_of`
/// tells what a host path is (it follows symbolic links, as the bind does).
pub fn plan_mounts(
    spec: &Value,
    shared_fs: bool,
    kind_of: impl Fn(&std::path::Path) -> std::io::Result<SourceKind>,
) -> Result<Vec<MountPlan>, UnsupportedMount> {
    let Some(mounts) = spec.get("mounts").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let mut plans = Vec::new();
    for (index, m) in mounts.iter().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let destination = m.get("destination").and_then(Value::as_str).unwrap_or("?");
        let source = m.get("source").and_then(Value::as_str).unwrap_or("");
        let refuse = |reason: String| UnsupportedMount {
            destination: destination.into(),
            host_path: if source.is_empty() { "?" } else { source }.into(),
            reason,
        };
        if is_cri_sandbox_shm(destination, source) {
            plans.push(MountPlan::SandboxShm { index });
            continue;
        }
        let path = std::path::Path::new(source);
        if !path.is_absolute() {
            return Err(refuse(
                "a bind mount's source must be an absolute path".into(),
            ));
        }
        if !shared_fs {
            return Err(refuse(
                "this pod's VM has no shared filesystem (devices.shared_fs is off in the \
                 shim's configuration): turn it on, remove the mount or put the files in the \
                 image"
                    .into(),
            ));
        }
        let kind = kind_of(path).map_err(|e| refuse(format!("it cannot be read: {e}")))?;
        if let SourceKind::Other(what) = kind {
            return Err(refuse(format!(
                "it is {what}; only directories and regular files are shared with the guest \
                 (virtio-fs)"
            )));
        }
        plans.push(MountPlan::Share {
            index,
            source: path.to_path_buf(),
            kind,
            recursive: has_option(m, "rbind"),
            readonly: has_option(m, "ro"),
        });
    }
    Ok(plans)
}

/// Points the planned mounts of `spec` at their guest sources ([`MountPlan::guest_source`]);
/// the type and options stay as the spec says (the agent binds them with those).
pub fn rewrite_mounts(spec: &mut Value, container: &str, plans: &[MountPlan]) {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return;
    };
    for plan in plans {
        if let Some(m) = mounts.get_mut(plan.index()).and_then(Value::as_object_mut) {
            m.insert("source".into(), Value::String(plan.guest_source(container)));
        }
    }
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

/// Rewrites `spec` (a config.json value) for the guest; [`plan_mounts`] has passed and
/// [`rewrite_mounts`] has pointed the bind mounts at the guest's paths.
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

    fn kinds(path: &std::path::Path) -> std::io::Result<SourceKind> {
        match path.to_str().unwrap() {
            p if p.starts_with("/srv/dir") => Ok(SourceKind::Dir),
            p if p.starts_with("/srv/file") => Ok(SourceKind::File),
            "/run/x.sock" => Ok(SourceKind::Other("a socket")),
            "/dev/kvm" => Ok(SourceKind::Other("a character device")),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    #[test]
    fn binds_by_type_or_by_option_are_shared_and_rewritten() {
        let mut spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/srv/file-hosts", "options": ["rbind", "ro"]},
            {"destination": "/data", "source": "/srv/dir-data", "options": ["bind"]},
            {"destination": "/cfg", "type": "none", "source": "/srv/dir-cfg", "options": ["rbind", "rw"]},
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"}
        ]});
        let plans = plan_mounts(&spec, true, kinds).unwrap();
        assert_eq!(
            plans,
            [
                MountPlan::Share {
                    index: 1,
                    source: "/srv/file-hosts".into(),
                    kind: SourceKind::File,
                    recursive: true,
                    readonly: true
                },
                MountPlan::Share {
                    index: 2,
                    source: "/srv/dir-data".into(),
                    kind: SourceKind::Dir,
                    recursive: false,
                    readonly: false
                },
                MountPlan::Share {
                    index: 3,
                    source: "/srv/dir-cfg".into(),
                    kind: SourceKind::Dir,
                    recursive: true,
                    readonly: false
                },
            ]
        );
        rewrite_mounts(&mut spec, "c1", &plans);
        let m = &spec["mounts"];
        assert_eq!(m[0]["source"], "proc");
        assert_eq!(m[1]["source"], "/run/pulse/shared/c1/1");
        assert_eq!(m[1]["options"], json!(["rbind", "ro"]), "options stay");
        assert_eq!(m[1]["type"], "bind");
        assert_eq!(m[2]["source"], "/run/pulse/shared/c1/2");
        assert_eq!(m[3]["source"], "/run/pulse/shared/c1/3");
        assert_eq!(m[4]["source"], "tmpfs");
    }

    #[test]
    fn what_cannot_be_shared_fails_by_name() {
        for (mount, shared_fs, why) in [
            (
                json!({"destination": "/run/x.sock", "type": "bind", "source": "/run/x.sock"}),
                true,
                "it is a socket",
            ),
            (
                json!({"destination": "/dev/kvm", "source": "/dev/kvm", "options": ["bind"]}),
                true,
                "it is a character device",
            ),
            (
                json!({"destination": "/gone", "type": "bind", "source": "/srv/none"}),
                true,
                "it cannot be read",
            ),
            (
                json!({"destination": "/rel", "type": "bind", "source": "srv/dir"}),
                true,
                "absolute path",
            ),
            (
                json!({"destination": "/data", "type": "none", "source": "/srv/dir-data", "options": ["rbind"]}),
                false,
                "no shared filesystem",
            ),
        ] {
            // A bind that can be shared comes first where there is a share: it passes.
            let ok = if shared_fs {
                json!({"destination": "/ok", "type": "bind", "source": "/srv/dir-ok"})
            } else {
                json!({"destination": "/scratch", "type": "tmpfs"})
            };
            let spec =
                json!({"mounts": [{"destination": "/proc", "type": "proc"}, ok, mount.clone()]});
            let err = plan_mounts(&spec, shared_fs, kinds).unwrap_err();
            assert_eq!(err.destination, mount["destination"]);
            assert_eq!(err.host_path, mount["source"]);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "mount {}: the host path {} cannot reach the VM: ",
                    err.destination, err.host_path
                )) && text.contains(why),
                "{text}"
            );
        }
    }

    #[test]
    fn the_cri_pod_shm_becomes_the_guests_pod_tmpfs_with_or_without_a_share() {
        let shm = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/0123abcd/shm";
        let mut spec = json!({"mounts": [
            {"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rw"]}
        ]});
        let plans = plan_mounts(&spec, false, kinds).unwrap();
        assert_eq!(plans, [MountPlan::SandboxShm { index: 0 }]);
        rewrite_mounts(&mut spec, "c1", &plans);
        assert_eq!(spec["mounts"][0]["source"], "/run/pulse/sandbox-shm");
        assert!(is_cri_sandbox_shm("/dev/shm/", shm));
        assert!(!is_cri_sandbox_shm("/data", shm), "only at /dev/shm");
        assert!(!is_cri_sandbox_shm("/dev/shm", "/srv/shm"));
        assert!(!is_cri_sandbox_shm(
            "/dev/shm",
            "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/../../../etc/shm"
        ));
        assert!(!is_cri_sandbox_shm(
            "/dev/shm",
            "io.containerd.grpc.v1.cri/sandboxes/p/shm"
        ));
    }

    #[test]
    fn kernel_filesystems_and_tmpfs_pass() {
        let spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/scratch", "type": "tmpfs"}
        ]});
        assert_eq!(plan_mounts(&spec, false, kinds), Ok(Vec::new()));
        assert_eq!(plan_mounts(&json!({}), false, kinds), Ok(Vec::new()));
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
