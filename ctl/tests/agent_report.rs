//! `pulse-ctl agent ...` against the agent's real API, served in-process on
//! a unix socket.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use pulse_agent::container::{Manager, RuntimeConfig};
use pulse_agent::listen::ListenAddr;
use pulse_agent::reaper::Reaper;
use pulse_agent::service::Agent;
use serde_json::Value;

struct Served {
    dir: tempfile::TempDir,
    server: ttrpc::r#async::Server,
}

impl Served {
    fn addr(&self) -> String {
        format!("unix://{}", self.dir.path().join("a.sock").display())
    }
}

async fn serve(report_root: &Path) -> Served {
    let dir = tempfile::tempdir().unwrap();
    // No reaper task: these requests start no processes, and pulse-ctl is
    // this test's child, which tokio::process must reap itself.
    let manager = Manager::new(
        RuntimeConfig {
            state_dir: dir.path().join("state"),
            cgroup_parent: "/pulse-ctl-test".into(),
            sys_root: report_root.join("sys"),
        },
        Reaper::new(),
    )
    .unwrap();
    let agent = Arc::new(Agent {
        manager,
        started: Instant::now(),
        init_mode: false,
        stopping: AtomicBool::new(false),
        sandbox_id: Default::default(),
        report_root: report_root.to_path_buf(),
        power_off: Default::default(),
    });
    let addr = ListenAddr::Unix(dir.path().join("a.sock"));
    let server = pulse_agent::server::start(&addr, agent).await.unwrap();
    Served { dir, server }
}

async fn run_ctl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse-ctl"))
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn ctl(args: &[&str]) -> Value {
    let out = run_ctl(args).await;
    assert!(
        out.status.success(),
        "pulse-ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pulse-ctl prints JSON")
}

/// The error pulse-ctl prints when it fails, as it must.
async fn ctl_error(args: &[&str]) -> String {
    let out = run_ctl(args).await;
    assert!(!out.status.success(), "pulse-ctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn report_of_this_machine_as_json() {
    let mut served = serve(Path::new("/")).await;
    let addr = served.addr();
    let report = ctl(&["agent", "report", "--addr", &addr]).await;
    let devices = report["devices"].as_array().unwrap();
    let on_sysfs = std::fs::read_dir("/sys/bus/virtio/devices")
        .unwrap()
        .count();
    assert!(on_sysfs > 0, "this machine has virtio devices");
    assert_eq!(devices.len(), on_sysfs);
    for d in devices {
        assert_eq!(d["transport"]["kind"], "TRANSPORT_KIND_PCI", "{d}");
        assert_eq!(d["msiEnabled"], true, "{d}");
        assert!(d["numQueues"].as_u64().unwrap() >= 1, "{d}");
        assert!(!d["vectors"].as_array().unwrap().is_empty(), "{d}");
        assert!(!d["provenance"].as_array().unwrap().is_empty(), "{d}");
    }

    let health = ctl(&["agent", "health", "--addr", &addr]).await;
    assert_eq!(health["state"], "SERVING_STATE_SERVING");
    let version = ctl(&["agent", "version", "--addr", &addr]).await;
    assert_eq!(version["apiVersion"], 1);
    let details = ctl(&["agent", "details", "--addr", &addr]).await;
    assert_eq!(details["kernelName"], "Linux");
    served.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn report_of_the_msi_fixture_as_json() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/msi-guest");
    let mut served = serve(&root).await;
    let report = ctl(&["agent", "report", "--addr", &served.addr()]).await;
    let blk = &report["devices"][0];
    assert_eq!(blk["name"], "virtio0");
    assert_eq!(blk["transport"]["kind"], "TRANSPORT_KIND_MMIO");
    assert_eq!(blk["transport"]["address"], "0xd0000000");
    assert_eq!(blk["numQueues"], 2);
    assert_eq!(
        blk["vectors"][1]["perCpu"],
        serde_json::json!(["812", "130"])
    );
    assert_eq!(blk["vectors"][0]["role"], "VECTOR_ROLE_CONFIG");
    served.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_agent_is_an_error() {
    let stderr = ctl_error(&[
        "agent",
        "health",
        "--addr",
        "unix:///nonexistent/agent.sock",
    ])
    .await;
    assert!(
        stderr.contains("connecting to the agent at unix:///nonexistent/agent.sock"),
        "{stderr}"
    );
}

/// A stand-in for the VMM's hybrid vsock socket: answers `CONNECT <port>`
/// with `OK`, then forwards the stream to `target`. With `refuse`, it
/// answers with an error line instead.
async fn hybrid_vsock(path: PathBuf, target: PathBuf, refuse: bool) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                if refuse || line != "CONNECT 1024\n" {
                    let _ = stream.get_mut().write_all(b"ERR no such port\n").await;
                    return;
                }
                stream
                    .get_mut()
                    .write_all(b"OK 1073741824\n")
                    .await
                    .unwrap();
                let mut upstream = tokio::net::UnixStream::connect(&target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(stream.get_mut(), &mut upstream).await;
            });
        }
    });
}

#[tokio::test]
async fn hybrid_vsock_handshake() {
    let mut served = serve(Path::new("/")).await;
    let agent_sock = served.dir.path().join("a.sock");
    let vm_sock = served.dir.path().join("vm.vsock");
    hybrid_vsock(vm_sock.clone(), agent_sock.clone(), false).await;
    let addr = format!("hvsock://{}:1024", vm_sock.display());
    let health = ctl(&["agent", "health", "--addr", &addr]).await;
    assert_eq!(health["state"], "SERVING_STATE_SERVING");

    let refusing = served.dir.path().join("refusing.vsock");
    hybrid_vsock(refusing.clone(), agent_sock, true).await;
    let addr = format!("hvsock://{}:1024", refusing.display());
    let stderr = ctl_error(&["agent", "health", "--addr", &addr]).await;
    assert!(
        stderr.contains("CONNECT 1024 refused: \"ERR no such port\""),
        "{stderr}"
    );
    served.server.shutdown().await.unwrap();
}
