//! The `embedded` backend against real KVM on a host without VT-x/AMD-V
//! (these machines): the VM starts (its vsock socket answers, its tap exists),
//! Linux never gets to its agent under KVM's instruction emulator, the
//! sandbox fails at the (short) agent deadline with a clear error, and nothing
//! is left: no thread, no fd, no socket, no tap, no disk image.
//!
//! One test in this binary, so that the thread and fd counts are its own.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pulse_shim::config::{Backend, PulseConfig};
use pulse_shim::hypervisor::SandboxPaths;
use pulse_shim::network::PodNetns;
use pulse_shim::sandbox::Sandbox;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The open fds and what they are.
fn fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// What the VM's hybrid-vsock socket answers to `CONNECT 1024`, once it exists.
async fn vsock_answer(socket: PathBuf, deadline: Instant) -> Option<String> {
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::UnixStream::connect(&socket).await {
            // A refusal may come before the line is written: read the answer either way.
            let _ = s.write_all(pulse_hvsock::request(1024).as_bytes()).await;
            let mut line = String::new();
            let mut reader = BufReader::new(s);
            if reader.read_line(&mut line).await.is_ok() && !line.is_empty() {
                return Some(line.trim().to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[test]
fn an_embedded_vm_without_hardware_virtualization_fails_clearly_and_leaves_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: not root (the tap needs CAP_NET_ADMIN)");
        return;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: no /dev/kvm");
        return;
    }
    if pulse_shim::hypervisor::host_has_hw_virt() {
        eprintln!("SKIPPED: this host has VT-x/AMD-V: the embedded VM would boot Linux");
        return;
    }
    let Some((kernel, initramfs)) = common::guest_image() else {
        eprintln!("SKIPPED: no guest image (make guest)");
        return;
    };
    let work = tempfile::Builder::new()
        .prefix("pe")
        .tempdir_in("/tmp")
        .unwrap();
    let mut config = PulseConfig::default();
    config.hypervisor.backend = Backend::Embedded;
    config.vm.kernel = kernel;
    config.vm.initramfs = initramfs;
    config.vm.vcpus = 2;
    config.devices.net_queues = 2;
    config.devices.virtio_console = true;
    config.agent.connect_timeout_ms = 3000;
    config.shim.state_dir = work.path().join("ps");
    // The shim (here: this test process) moves into the pod's cgroup and back out.
    let cgroup_parent = format!(
        "pulse-test-{}",
        work.path().file_name().unwrap().to_string_lossy()
    );
    config.shim.cgroup_parent = cgroup_parent.clone().into();
    let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    config.validate(Path::new("test")).unwrap();
    let paths = SandboxPaths::new(&config.shim.state_dir, "ns", "pod").unwrap();
    let tap = Path::new("/sys/class/net").join(paths.tap_name());
    assert!(!tap.exists(), "a stale tap {} exists", tap.display());
    // An empty network namespace of the test's, as CNI's would be before it added anything:
    // the VMM's NIC gets a tap of its own in the shim's namespace. (A spec without a path
    // would make the sandbox start its holder, the shim's binary, which this test is not.)
    let mut netns_holder = std::process::Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .unwrap();
    let netns = PathBuf::from(format!("/proc/{}/ns/net", netns_holder.id()));
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&netns).ok().as_ref() == Some(&ours) {
        assert!(
            Instant::now() < deadline,
            "unshare --net stayed in our namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // tokio's signal driver opens a process-wide socket pair the first time a
    // runtime is built; that one is not the sandbox's.
    drop(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let threads_before = count("/proc/self/task");
    let fds_before = fds();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (result, answer, tap_seen) = rt.block_on(async {
        let (oom, _oom_rx) = tokio::sync::mpsc::unbounded_channel();
        let probe = async {
            let answer =
                vsock_answer(paths.vsock(), Instant::now() + Duration::from_secs(10)).await;
            let tap_seen = tap.exists();
            (answer, tap_seen)
        };
        let (result, (answer, tap_seen)) = tokio::join!(
            Sandbox::start(config, "ns", "pod", None, PodNetns::Path(netns), oom),
            probe
        );
        (result, answer, tap_seen)
    });
    drop(rt);
    let took = started.elapsed();
    let _ = netns_holder.kill();
    let _ = netns_holder.wait();

    let err = match result {
        Ok(_) => panic!("the agent answered under KVM's emulator?"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("error after {took:?}: {err}");
    eprintln!("vsock answered {answer:?} while the guest booted; tap seen: {tap_seen}");
    assert!(
        err.contains("the guest agent is unreachable")
            && (err.contains("did not announce itself") || err.contains("VM stopped before")),
        "{err}"
    );
    assert!(err.contains("embedded") || err.contains("pod pod"), "{err}");
    assert_eq!(
        answer.as_deref(),
        Some("ERR guest vsock driver not ready"),
        "the VM's vsock device served its socket"
    );
    assert!(tap_seen, "the VM's net device created its tap");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    assert!(!tap.exists(), "the tap {} is left", tap.display());
    assert!(!paths.dir.exists(), "{} is left", paths.dir.display());
    if let Some(root) = pulse_shim::mountinfo::cgroup2_mount(&pulse_shim::mountinfo::current()) {
        let parent = root.join(&cgroup_parent);
        assert!(!parent.join("ns").exists(), "the pod's cgroup is left");
        let _ = std::fs::remove_dir(parent);
    }
    assert_eq!(
        std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        own_cgroup,
        "the shim went back to its own cgroup"
    );
    assert_eq!(count("/proc/self/task"), threads_before, "threads left");
    // read_dir's own descriptor is in both lists.
    assert_eq!(
        fds().len(),
        fds_before.len(),
        "fds left: {:?}, before: {fds_before:?}",
        fds()
    );
}
