//! Pod start time through the CRI, Pulse against runc: what kubelet waits for when it starts a
//! pod of one container, RunPodSandbox + CreateContainer + StartContainer, and the pod's
//! teardown, StopPodSandbox + RemovePodSandbox. The client is the CRI suite's own
//! (`tests/cri/kubelet.rs`, CRI v1 over gRPC) against the suite's private containerd 1.6 with its
//! CRI plugin, CNI bridge and images (`tests/cri/harness.rs`); both handlers go through the same
//! containerd, one pod at a time, alternating, each after one warm-up pod that is not counted.
//!
//! Each call is timed from the client: it includes containerd's work (the CNI network, the
//! snapshot, the sandbox image) as kubelet sees it. With the qemu backend on a host without
//! VT-x/AMD-V, Pulse's VM runs under QEMU's TCG emulator: its times are far above what the same
//! pod takes under KVM (the table says which it is).
//!
//! `cargo bench -p pulse-shim --bench cri` (as root, after `make guest`; `make bench` runs it).
//! `BENCH_RUNS` (default 5) sets the counted pods per handler.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/cri/harness.rs"]
mod harness;
#[allow(dead_code, unused_imports)]
#[path = "../tests/cri/kubelet.rs"]
mod kubelet;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{CriEnv, APP_IMAGE};
use kubelet::{container_config, pod_config, ContainerSpec, ContainerState, Kubelet};

const HANDLERS: [&str; 2] = ["runc", "pulse"];
const COLUMNS: [&str; 5] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "pod started",
    "teardown",
];

/// One pod's times: the three start calls, their sum, the teardown.
type Times = [Duration; 5];

fn main() {
    // cargo bench passes --bench; there is nothing to parse.
    if let Err(e) = run() {
        eprintln!("cri bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    for handler in HANDLERS {
        if let Some(why) = harness::skip_reason(handler) {
            bail!("the {handler} handler cannot run here: {why}");
        }
    }
    let runs = common::env_count("BENCH_RUNS", 5)?;
    let env = CriEnv::start();
    let kubelet = Kubelet::connect(&env.sock())?;
    let labels = HANDLERS.map(label);
    println!(
        "== CRI pod start, Pulse against runc: one pod of one container through containerd 1.6's CRI plugin, \
         {runs} pods per handler (ms) =="
    );
    println!("{:<8} {:<44} {}", "pod", "handler", header());
    let mut times: [Vec<Times>; 2] = [Vec::new(), Vec::new()];
    for round in 0..=runs {
        for (h, handler) in HANDLERS.iter().enumerate() {
            let t = pod(&env, &kubelet, handler, round)
                .with_context(|| format!("the {handler} pod of round {round}"))?;
            let name = if round == 0 {
                "warm-up".to_string()
            } else {
                round.to_string()
            };
            println!("{name:<8} {:<44} {}", labels[h], row(&t));
            if round > 0 {
                times[h].push(t);
            }
        }
    }
    if let Some(leaks) = env.leaks(Duration::from_secs(20)) {
        bail!("the pods left something behind: {leaks}");
    }
    let medians = times.map(|t| medians(&t));
    for (h, m) in medians.iter().enumerate() {
        println!("{:<8} {:<44} {}", "median", labels[h], row(m));
    }
    let ratio: Vec<String> = (0..COLUMNS.len())
        .map(|c| {
            let runc = medians[0][c].as_secs_f64();
            let x = if runc > 0.0 {
                format!("{:.1}x", medians[1][c].as_secs_f64() / runc)
            } else {
                "-".to_string()
            };
            format!("{x:>w$}", w = COLUMNS[c].len())
        })
        .collect();
    println!("{:<8} {:<44} {}", "ratio", "pulse / runc", ratio.join("  "));
    println!(
        "(pod started: the three calls' sum per pod, its median; teardown: StopPodSandbox + \
         RemovePodSandbox with the container running. The client, containerd and the pods share \
         this machine's CPUs{})",
        if label("pulse").contains("tcg") {
            "; Pulse's guest runs under QEMU's TCG emulator here, not KVM"
        } else {
            ""
        }
    );
    Ok(())
}

/// The handler with the runtime and, for Pulse, the backend and QEMU's accelerator.
fn label(handler: &str) -> String {
    match handler {
        "pulse" if common::embedded() => "pulse (io.containerd.pulse.v2, embedded)".into(),
        "pulse" => format!(
            "pulse (io.containerd.pulse.v2, qemu, {})",
            if pulse_shim::hypervisor::host_has_hw_virt() {
                "kvm"
            } else {
                "tcg"
            }
        ),
        other => format!("{other} (io.containerd.{other}.v2)"),
    }
}

fn header() -> String {
    COLUMNS.join("  ")
}

fn row(t: &Times) -> String {
    t.iter()
        .zip(COLUMNS)
        .map(|(d, c)| format!("{:>w$.0}", d.as_secs_f64() * 1000.0, w = c.len()))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Each column's median (the middle value; the upper one of an even count).
fn medians(times: &[Times]) -> Times {
    std::array::from_fn(|c| {
        let mut v: Vec<Duration> = times.iter().map(|t| t[c]).collect();
        v.sort();
        v[v.len() / 2]
    })
}

/// One pod as kubelet starts it, timed; then torn down, timed.
fn pod(env: &CriEnv, k: &Kubelet, handler: &str, round: usize) -> anyhow::Result<Times> {
    let name = format!("bench-{handler}-{round}");
    let uid = format!("{name}-uid");
    let cgroup_parent = env.create_pod_cgroup(&uid);
    let log_dir = env
        .pod_log_root()
        .join(format!("pulse-cri-test_{name}_{uid}"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let config = pod_config(&name, &uid, &log_dir, &cgroup_parent, None);
    let container = container_config(&ContainerSpec {
        name: "app",
        image: APP_IMAGE,
        command: &["sleep", "3600"],
        log_path: "app/0.log".into(),
        mounts: Vec::new(),
        envs: &[],
        resources: None,
        stdin: false,
    });
    let call = |what: &str, e: tonic::Status| anyhow::anyhow!(env.failed_call(what, &e));

    let t0 = Instant::now();
    let pod = k
        .run_pod(&config, handler)
        .map_err(|e| call("RunPodSandbox", e))?;
    let t1 = Instant::now();
    let id = k
        .create_container(&pod, &container, &config)
        .map_err(|e| call("CreateContainer", e))?;
    let t2 = Instant::now();
    k.start_container(&id)
        .map_err(|e| call("StartContainer", e))?;
    let t3 = Instant::now();

    let status = k
        .container_status(&id)
        .map_err(|e| call("ContainerStatus", e))?;
    if status.state != ContainerState::ContainerRunning as i32 {
        bail!("the container is not running after StartContainer: {status:?}");
    }
    let t4 = Instant::now();
    k.stop_pod(&pod).map_err(|e| call("StopPodSandbox", e))?;
    k.remove_pod(&pod)
        .map_err(|e| call("RemovePodSandbox", e))?;
    let teardown = t4.elapsed();
    env.remove_pod_cgroups();
    Ok([t1 - t0, t2 - t1, t3 - t2, t3 - t0, teardown])
}
