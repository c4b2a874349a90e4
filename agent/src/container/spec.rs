//! Checking an OCI runtime spec (and an exec's process) before use.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("not a valid OCI runtime spec: {0}")]
    Malformed(String),
    #[error("unsupported OCI spec: {0}")]
    Unsupported(String),
    #[error("the container's rootfs {0} does not exist or is not a directory")]
    RootfsMissing(PathBuf),
}

/// The longest container or exec id the agent accepts.
pub const MAX_ID_LEN: usize = 128;

/// Ids become file and cgroup names: letters, digits, `_+-.` only.
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{kind} id is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("{kind} id is longer than {MAX_ID_LEN} bytes"));
    }
    if id == "." || id == ".." {
        return Err(format!("{kind} id {id:?} is not allowed"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
    {
        return Err(format!("{kind} id {id:?} contains {c:?}"));
    }
    Ok(())
}

/// Parses and checks a container spec; fills in the cgroup path when the
/// spec has none.
pub fn parse_spec(json: &[u8], default_cgroup: &str) -> Result<Spec, SpecError> {
    let mut spec: Spec =
        serde_json::from_slice(json).map_err(|e| SpecError::Malformed(e.to_string()))?;
    if !spec.version().starts_with("1.") {
        return Err(SpecError::Unsupported(format!(
            "version {:?} (this agent runs 1.x)",
            spec.version()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::Malformed("it has no process".into()))?;
    check_args(process)?;
    if spec.root().is_none() {
        return Err(SpecError::Malformed("it has no root".into()));
    }
    default_mount_sources(&mut spec);
    if let Some(process) = spec.process_mut() {
        normalize_no_new_privileges(process);
    }
    let Some(linux) = spec.linux_mut() else {
        return Err(SpecError::Unsupported(
            "it has no linux section (only Linux containers run here)".into(),
        ));
    };
    if let Some(seccomp) = linux.seccomp() {
        check_seccomp(seccomp)?;
    }
    match linux.cgroups_path() {
        Some(path) if path.is_absolute() => {}
        Some(path) => {
            return Err(SpecError::Unsupported(format!(
                "relative cgroupsPath {} (use an absolute path)",
                path.display()
            )))
        }
        None => {
            linux.set_cgroups_path(Some(PathBuf::from(default_cgroup)));
        }
    }
    Ok(spec)
}

/// A mount of a filesystem type with no source (`ctr run --mount
/// type=tmpfs,dst=/scratch`) gets an empty one, which is what runc passes to
/// mount(2): `/proc/mounts` shows an empty source, as under runc. libcontainer
/// refuses a mount without a source at all.
fn default_mount_sources(spec: &mut Spec) {
    let Some(mounts) = spec.mounts_mut() else {
        return;
    };
    for mount in mounts.iter_mut() {
        if mount.source().is_some() {
            continue;
        }
        if mount
            .typ()
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t != "bind")
        {
            mount.set_source(Some(PathBuf::new()));
        }
    }
}

/// The rootfs path, resolved against the bundle, checked to exist.
pub fn rootfs_of(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| SpecError::Malformed("it has no root".into()))?;
    let path = bundle.join(root.path());
    if path.is_dir() {
        Ok(path)
    } else {
        Err(SpecError::RootfsMissing(root.path().clone()))
    }
}

/// Parses an exec's OCI process object.
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    let mut process: Process =
        serde_json::from_slice(json).map_err(|e| SpecError::Malformed(format!("process: {e}")))?;
    check_args(&process)?;
    normalize_no_new_privileges(&mut process);
    Ok(process)
}

/// libcontainer loads a seccomp filter before it drops the capabilities only when
/// `noNewPrivileges` is absent; when it is present, even `false`, it loads it just before the
/// exec, where the kernel refuses it (EACCES) without CAP_SYS_ADMIN or no_new_privs. `false`
/// is the OCI default, the same as absent: made absent, a profile loads while the
/// capabilities are still there, as runc loads it.
fn normalize_no_new_privileges(process: &mut Process) {
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
}

/// What libseccomp would load, but the guest cannot honour: SCMP_ACT_NOTIFY hands syscalls to
/// a listener on the host (`listenerPath`), out of a VM's reach.
fn check_seccomp(seccomp: &LinuxSeccomp) -> Result<(), SpecError> {
    let notify = |a: LinuxSeccompAction| a == LinuxSeccompAction::ScmpActNotify;
    if notify(seccomp.default_action())
        || seccomp
            .syscalls()
            .iter()
            .flatten()
            .any(|s| notify(s.action()))
    {
        return Err(SpecError::Unsupported(
            "seccomp profile: SCMP_ACT_NOTIFY needs a listener on the host (listenerPath), \
             which a container in a VM cannot reach"
                .into(),
        ));
    }
    Ok(())
}

fn check_args(process: &Process) -> Result<(), SpecError> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(SpecError::Malformed("process.args is empty".into())),
    }
    check_env(process.env().as_deref().unwrap_or_default())
}

/// Each `process.env` entry is `NAME=value` with a non-empty name and no NUL, as runc
/// requires (it fails the start on such an entry); libcontainer would set `FOO` as an empty
/// variable and drop `=x` silently.
fn check_env(env: &[String]) -> Result<(), SpecError> {
    for entry in env {
        let problem = match entry.split_once('=') {
            None => "it has no '='",
            Some(("", _)) => "its name is empty",
            Some(_) if entry.contains('\0') => "it contains a NUL byte",
            Some(_) => continue,
        };
        return Err(SpecError::Malformed(format!(
            "process.env entry {entry:?}: {problem} (entries are NAME=value)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn default_spec_gets_a_cgroup_path() {
        let spec = parse_spec(&spec_json(|_| {}), "/pulse/c1").unwrap();
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/pulse/c1"))
        );
    }

    #[test]
    fn bad_specs_are_rejected_with_reasons() {
        let err = parse_spec(b"{not json", "/x").unwrap_err();
        assert!(err.to_string().starts_with("not a valid OCI runtime spec"));
        let err = parse_spec(&spec_json(|v| v["ociVersion"] = "2.0.0".into()), "/x").unwrap_err();
        assert!(err.to_string().contains("version \"2.0.0\""), "{err}");
        let err = parse_spec(
            &spec_json(|v| v["process"]["args"] = serde_json::json!([])),
            "/x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("process.args is empty"), "{err}");
        let err = parse_spec(
            &spec_json(|v| {
                v.as_object_mut().unwrap().remove("linux");
            }),
            "/x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no linux section"), "{err}");
    }

    #[test]
    fn environment_entries_must_be_name_equals_value() {
        for (env, problem) in [
            (vec!["PATH=/bin", "FOO"], "\"FOO\": it has no '='"),
            (vec!["=x"], "\"=x\": its name is empty"),
            (vec!["A=b\0c"], "it contains a NUL byte"),
        ] {
            let json = spec_json(|v| v["process"]["env"] = serde_json::json!(env));
            let err = parse_spec(&json, "/x").unwrap_err().to_string();
            assert!(err.contains(problem), "{env:?}: {err}");
            let process = serde_json::json!({"args": ["true"], "cwd": "/", "env": env, "user": {"uid": 0, "gid": 0}});
            let err = parse_process(process.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(problem), "exec {env:?}: {err}");
        }
        let json = spec_json(|v| v["process"]["env"] = serde_json::json!(["A=", "B=c=d"]));
        parse_spec(&json, "/x").expect("an empty value and a value with '=' are fine");
    }

    #[test]
    fn a_mount_without_a_source_gets_an_empty_one() {
        let json = spec_json(|v| {
            v["mounts"] = serde_json::json!([
                {"destination": "/scratch", "type": "tmpfs", "options": ["nosuid"]},
                {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"]},
            ])
        });
        let spec = parse_spec(&json, "/x").unwrap();
        let sources: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(sources, [PathBuf::new(), PathBuf::from("/srv")]);
    }

    #[test]
    fn ids() {
        assert!(check_id("container", "web-1_a.b+c").is_ok());
        assert!(check_id("container", "").is_err());
        assert!(check_id("container", "../etc").is_err());
        assert!(check_id("exec", &"x".repeat(MAX_ID_LEN + 1)).is_err());
    }
}
