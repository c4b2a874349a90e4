//! The shim binary's protocol with containerd: `start` (find or spawn the
//! pod's shim, print its address, write `address` and `shim.pid`), `delete`
//! (clean up after a shim that is gone), and serving the task service.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::{publisher::RemotePublisher, ExitSignal, Shim};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;
use tokio::io::AsyncReadExt;

use crate::hypervisor::SandboxPaths;
use crate::persist::{BundleRecord, SandboxRecord, BUNDLE_RECORD};
use crate::pod::{annotations_of, PodRole};
use crate::service::Service;
use crate::task::errors::timestamp;

/// How long a new shim may take to serve its socket.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim.
pub struct PulseShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// The ttrpc socket this process serves (daemon mode).
    socket: String,
}

/// The pod a bundle's container belongs to, from its config.json.
pub fn pod_of_bundle(bundle: &Path, id: &str) -> PodRole {
    let spec = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    PodRole::of(id, &annotations_of(&spec))
}

fn other(message: impl Into<String>) -> Error {
    Error::Other(message.into())
}

/// Whether a shim already serves `address`.
async fn serving(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    tokio::net::UnixStream::connect(path).await.is_ok()
}

#[async_trait]
impl Shim for PulseShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            crate::logging::init(args.debug);
        }
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        PulseShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            socket: args.socket.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let role = pod_of_bundle(&self.bundle, &opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, role.pod());
        let bundle = self.bundle.clone();
        let write = |name: &str, value: String| {
            std::fs::write(bundle.join(name), value)
                .map_err(|e| other(format!("writing {name} in {}: {e}", bundle.display())))
        };
        if serving(&address).await {
            // The pod's shim runs already: this container joins it.
            write("address", address.clone())?;
            if let Ok(pid) = std::fs::read_to_string(self.bundle.join("shim.pid")) {
                write("shim.pid", pid)?;
            }
            return Ok(address);
        }
        let exe =
            std::env::current_exe().map_err(|e| other(format!("finding the shim binary: {e}")))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.current_dir(&self.bundle)
            .args([
                "-namespace",
                &opts.namespace,
                "-id",
                &opts.id,
                "-address",
                &opts.address,
                "-socket",
                &address,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if opts.debug {
            cmd.arg("-debug");
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| other(format!("spawning the shim: {e}")))?;
        let pid = child.id().unwrap_or(0);
        // The daemon closes its stdout once its socket serves.
        let mut out = child.stdout.take().ok_or_else(|| other("no shim stdout"))?;
        let mut sink = Vec::new();
        match tokio::time::timeout(SPAWN_TIMEOUT, out.read_to_end(&mut sink)).await {
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill().await;
                return Err(other(format!(
                    "the shim did not serve {address} within {SPAWN_TIMEOUT:?}"
                )));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                return Err(other(format!("the shim exited at start: {status}")));
            }
        }
        write("address", address.clone())?;
        write("shim.pid", pid.to_string())?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = self.bundle.clone();
        let id = self.id.clone();
        let namespace = self.namespace.clone();
        tokio::task::spawn_blocking(move || cleanup_dead_shim(&bundle, &namespace, &id))
            .await
            .map_err(|e| other(e.to_string()))?;
        Ok(DeleteResponse {
            pid: 0,
            // As containerd's own shims report a process that died with its shim: SIGKILL.
            exit_status: 128 + 9,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // containerd may have removed the bundle (and its `address` file) by
        // now, so the socket is removed here rather than by the library.
        let path = self.socket.trim_start_matches("unix://");
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let service = Service::new(&self.namespace, publisher, self.exit.clone());
        service.stop_on_signals();
        service
    }
}

/// What `delete` does for container `id` of a shim that is gone: if the pod's
/// shim is dead, kill the VM's processes it recorded and remove the sandbox
/// directory (sockets, disk images, staging mounts); always unmount the
/// bundle's rootfs and drop the bundle record.
pub fn cleanup_dead_shim(bundle: &Path, namespace: &str, id: &str) {
    let record: Option<BundleRecord> = std::fs::read(bundle.join(BUNDLE_RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let dir = match &record {
        Some(r) => Some(r.sandbox_dir.clone()),
        None => {
            // No record (the shim died before it wrote one): the default place.
            let pod = pod_of_bundle(bundle, id);
            let state_dir = std::env::var(crate::config::CONFIG_ENV)
                .ok()
                .and_then(|p| crate::config::PulseConfig::load(Path::new(&p)).ok())
                .map(|c| c.shim.state_dir)
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_STATE_DIR));
            // An id that could name a directory elsewhere never had a sandbox.
            match SandboxPaths::new(&state_dir, namespace, pod.pod()) {
                Ok(paths) => Some(paths.dir),
                Err(e) => {
                    tracing::warn!("delete: {e}");
                    None
                }
            }
        }
    };
    if let Some(dir) = dir.filter(|d| d.exists()) {
        let state = SandboxRecord::load(&dir.join("state.json")).unwrap_or_default();
        let shim_alive = state
            .shim
            .as_ref()
            .is_some_and(|s| s.alive() && s.pid != std::process::id());
        if shim_alive {
            tracing::info!(dir = %dir.display(), "the pod's shim still runs; leaving its sandbox");
        } else {
            let killed = crate::sandbox::cleanup_recorded(&dir);
            tracing::info!(dir = %dir.display(), killed, "cleaned up a dead shim's sandbox");
        }
    }
    // The dead shim's ttrpc socket, unless another shim of the pod serves it.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = address.trim().trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let rootfs = bundle.join("rootfs");
    if crate::rootfs::is_mount_point(&rootfs) {
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_file(bundle.join(BUNDLE_RECORD));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::ProcRecord;

    /// The record containerd's bundle keeps of the pod `pod` in `sandbox`.
    fn write_bundle_record(bundle: &std::path::Path, sandbox: &std::path::Path) {
        std::fs::write(
            bundle.join(BUNDLE_RECORD),
            serde_json::to_vec(&BundleRecord {
                pod: "pod".into(),
                sandbox_dir: sandbox.to_path_buf(),
            })
            .unwrap(),
        )
        .unwrap();
    }
    /// A work directory with `bundle` and the sandbox directory `sandbox` in it, both made.
    fn bundle_and_sandbox(sandbox: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let work = tempfile::tempdir().unwrap();
        let bundle = work.path().join("bundle");
        let sandbox = work.path().join(sandbox);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&sandbox).unwrap();
        (work, bundle, sandbox)
    }

    /// A process that lives a minute: the stand-in for a VM or another shim.
    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap()
    }

    #[test]
    fn delete_kills_a_dead_shims_vm_and_removes_its_files() {
        let (_work, bundle, sandbox) = bundle_and_sandbox("state/ns/pod");
        std::fs::create_dir_all(sandbox.join("rootfs")).unwrap();
        std::fs::write(sandbox.join("slot-0.img"), b"disk").unwrap();
        let mut vm = sleeper();
        // A shim that is gone: a record whose start time matches nothing.
        let dead_shim = ProcRecord {
            pid: std::process::id(),
            start_time: 1,
        };
        SandboxRecord {
            pod: "pod".into(),
            namespace: "ns".into(),
            dir: sandbox.clone(),
            shim: Some(dead_shim),
            vm: vec![ProcRecord::of(vm.id()).unwrap()],
            cgroup: None,
        }
        .save(&sandbox.join("state.json"))
        .unwrap();
        write_bundle_record(&bundle, &sandbox);
        cleanup_dead_shim(&bundle, "ns", "c1");
        assert!(!vm.wait().unwrap().success(), "the VM process was killed");
        assert!(!sandbox.exists());
        assert!(!bundle.join(BUNDLE_RECORD).exists());
    }

    #[test]
    fn delete_leaves_a_live_shims_sandbox() {
        let (_work, bundle, sandbox) = bundle_and_sandbox("ns/pod");
        let mut other_shim = sleeper();
        SandboxRecord {
            shim: ProcRecord::of(other_shim.id()),
            ..Default::default()
        }
        .save(&sandbox.join("state.json"))
        .unwrap();
        write_bundle_record(&bundle, &sandbox);
        cleanup_dead_shim(&bundle, "ns", "c2");
        assert!(
            sandbox.exists(),
            "another container's shim still serves the pod"
        );
        other_shim.kill().unwrap();
        other_shim.wait().unwrap();
    }

    #[test]
    fn pod_of_a_bundle_reads_its_annotations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "p1"}}"#,
        )
        .unwrap();
        assert_eq!(pod_of_bundle(dir.path(), "c").pod(), "p1");
        assert_eq!(pod_of_bundle(&dir.path().join("none"), "c").pod(), "c");
    }
}
