//! Pod network throughput and request/response rate over the CNI bridge, Pulse (1 against 2
//! virtio-net queue pairs) against a runc pod on the same bridge: the CRI suite's containerd
//! (`tests/cri/harness.rs`) and client (`tests/cri/kubelet.rs`).
//!
//! Each pod (1.5 CPUs: 3 vCPUs for Pulse) runs busybox `nc` servers: a sink (port 5001) and an
//! echo (port 5002). From the host side of the bridge (containerd's network namespace) the bench
//! measures: host -> pod, one TCP stream and two at once, to the sink; pod -> host, `dd | nc`
//! in the pod to a receiver here; and 64-byte round trips on one TCP connection (TCP_NODELAY)
//! for two seconds. Pulse's queue pairs are `devices.net_queues` (the harness's pulse.toml is
//! rewritten between pods) and checked in the guest's sysfs. Under QEMU's TCG emulator (no
//! VT-x/AMD-V here) the guest's side is emulated: compare the Pulse rows with each other, and
//! with runc only as counts.
//!
//! `cargo bench -p pulse-shim --bench pod_network` (as root, after `make guest`; `make bench`
//! runs it). `BENCH_RUNS` (default 3) rounds per pod, `BENCH_NET_MIB` (default 64) MiB per
//! stream.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/cri/harness.rs"]
mod harness;
#[allow(dead_code, unused_imports)]
#[path = "../tests/cri/kubelet.rs"]
mod kubelet;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{CriEnv, APP_IMAGE, POD_SUBNET_PREFIX};
use kubelet::{container_config, pod_config, resources, ContainerSpec, Kubelet};

const SERVERS: &str = "nc -ll -p 5001 -e sh -c 'cat > /dev/null' & nc -ll -p 5002 -e cat & \
                       exec sleep 3600";

/// One pod's figures: host->pod MiB/s (1 stream, 2 streams), pod->host MiB/s, round trips/s.
type Figures = [f64; 4];
const COLUMNS: [&str; 4] = [
    "host->pod MiB/s",
    "host->pod x2 MiB/s",
    "pod->host MiB/s",
    "64 B round trips/s",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("pod_network bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    for handler in ["runc", "pulse"] {
        if let Some(why) = harness::skip_reason(handler) {
            bail!("the {handler} handler cannot run here: {why}");
        }
    }
    let runs = common::env_count("BENCH_RUNS", 3)?;
    let mib = common::env_count("BENCH_NET_MIB", 64)?;
    let env = CriEnv::start();
    let kubelet = Kubelet::connect(&env.sock())?;
    let host_ns = PathBuf::from(format!("/proc/{}/ns/net", env.containerd_pid()));
    let accel = if pulse_shim::hypervisor::host_has_hw_virt() {
        "kvm"
    } else {
        "tcg"
    };
    println!(
        "== Pod network over the CNI bridge, host side <-> pod: {mib} MiB per stream, median of {runs} ({}) ==",
        if common::embedded() {
            "pulse: embedded backend".to_string()
        } else {
            format!("pulse: qemu backend, {accel}")
        }
    );
    println!("{:<34} {}", "pod", COLUMNS.join("  "));
    let mut rows: Vec<(String, Figures)> = Vec::new();
    for (label, handler, pairs) in [
        ("runc", "runc", 0u16),
        ("pulse, 1 queue pair, 3 vCPUs", "pulse", 1),
        ("pulse, 2 queue pairs, 3 vCPUs", "pulse", 2),
    ] {
        if handler == "pulse" {
            let path = env.pulse_config();
            let text = std::fs::read_to_string(&path)?;
            let line = text
                .lines()
                .find(|l| l.starts_with("net_queues"))
                .context("the harness's pulse.toml has no net_queues")?
                .to_string();
            std::fs::write(&path, text.replace(&line, &format!("net_queues = {pairs}")))?;
        }
        let figures = pod(&env, &kubelet, &host_ns, handler, pairs, runs, mib)
            .with_context(|| format!("the {label} pod"))?;
        println!("{label:<34} {}", row(&figures));
        rows.push((label.to_string(), figures));
    }
    let ratio = |a: &Figures, b: &Figures| -> String {
        (0..COLUMNS.len())
            .map(|c| {
                let x = if b[c] > 0.0 {
                    format!("{:.2}x", a[c] / b[c])
                } else {
                    "-".into()
                };
                format!("{x:>w$}", w = COLUMNS[c].len())
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{:<34} {}",
        "ratio pulse 2 pairs / 1 pair",
        ratio(&rows[2].1, &rows[1].1)
    );
    println!(
        "{:<34} {}",
        "ratio pulse 2 pairs / runc",
        ratio(&rows[2].1, &rows[0].1)
    );
    if let Some(leaks) = env.leaks(Duration::from_secs(20)) {
        bail!("the pods left something behind: {leaks}");
    }
    println!(
        "(the client, containerd and the VMs share this machine's CPUs{})",
        if accel == "tcg" && !common::embedded() {
            "; Pulse's guest runs under QEMU's TCG emulator here: its figures are emulated"
        } else {
            ""
        }
    );
    Ok(())
}

fn row(f: &Figures) -> String {
    f.iter()
        .zip(COLUMNS)
        .map(|(v, c)| format!("{v:>w$.1}", w = c.len()))
        .collect::<Vec<_>>()
        .join("  ")
}

/// One pod: started, measured `runs` times, torn down; the medians.
fn pod(
    env: &CriEnv,
    k: &Kubelet,
    host_ns: &Path,
    handler: &str,
    pairs: u16,
    runs: usize,
    mib: usize,
) -> anyhow::Result<Figures> {
    let name = format!("netbench-{handler}-{pairs}");
    let uid = format!("{name}-uid");
    let cgroup_parent = env.create_pod_cgroup(&uid);
    let log_dir = env.pod_log_root().join(&name);
    std::fs::create_dir_all(&log_dir)?;
    let config = pod_config(
        &name,
        &uid,
        &log_dir,
        &cgroup_parent,
        Some(resources(1500, 128 << 20)),
    );
    let call = |what: &str, e: tonic::Status| anyhow::anyhow!(env.failed_call(what, &e));
    let pod = k
        .run_pod(&config, handler)
        .map_err(|e| call("RunPodSandbox", e))?;
    let result = (|| {
        let id = k
            .create_container(
                &pod,
                &container_config(&ContainerSpec {
                    name: "servers",
                    image: APP_IMAGE,
                    command: &["sh", "-c", SERVERS],
                    log_path: "servers/0.log".into(),
                    mounts: Vec::new(),
                    envs: &[],
                    resources: None,
                    stdin: false,
                }),
                &config,
            )
            .map_err(|e| call("CreateContainer", e))?;
        k.start_container(&id)
            .map_err(|e| call("StartContainer", e))?;
        let ip = k
            .pod_status(&pod)
            .map_err(|e| call("PodSandboxStatus", e))?
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .context("no pod IP")?;
        if handler == "pulse" {
            let r = k
                .exec_sync(&id, &["sh", "-c", "ls /sys/class/net/eth0/queues"], 30)
                .map_err(|e| call("ExecSync", e))?;
            let rx = String::from_utf8_lossy(&r.stdout)
                .split_whitespace()
                .filter(|q| q.starts_with("rx-"))
                .count();
            if rx != usize::from(pairs) {
                bail!("the guest's eth0 has {rx} rx queues, not {pairs}");
            }
        }
        let bytes = mib << 20;
        let mut all: Vec<Figures> = Vec::new();
        for _ in 0..runs {
            let one = retry(|| send(host_ns, &ip, bytes, 1))?;
            let two = retry(|| send(host_ns, &ip, bytes, 2))?;
            let back = receive(host_ns, k, &id, bytes)?;
            let rr = retry(|| round_trips(host_ns, &ip, Duration::from_secs(2)))?;
            all.push([one, two, back, rr]);
        }
        Ok(std::array::from_fn(|c| {
            let mut v: Vec<f64> = all.iter().map(|f| f[c]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        }))
    })();
    let _ = k.stop_pod(&pod);
    let _ = k.remove_pod(&pod);
    env.remove_pod_cgroups();
    result
}

/// The servers may take a moment to listen after StartContainer.
fn retry(mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// `streams` connections at once to the pod's sink, `bytes` each; MiB/s of all together, from
/// the first connect until every sink closed (it closes once it read everything).
fn send(host_ns: &Path, ip: &str, bytes: usize, streams: usize) -> anyhow::Result<f64> {
    let addr = format!("{ip}:5001");
    let took = pulse_netlink::in_netns(host_ns, || -> anyhow::Result<Duration> {
        let started = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..streams)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        let mut c = TcpStream::connect(&addr)
                            .with_context(|| format!("connecting to {addr}"))?;
                        let chunk = vec![0x5au8; 64 << 10];
                        let mut left = bytes;
                        while left > 0 {
                            let n = left.min(chunk.len());
                            c.write_all(&chunk[..n])?;
                            left -= n;
                        }
                        c.shutdown(Shutdown::Write)?;
                        let mut rest = Vec::new();
                        c.read_to_end(&mut rest)?;
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
            }
            anyhow::Ok(())
        })?;
        Ok(started.elapsed())
    })??;
    Ok(mib_per_s(bytes * streams, took))
}

/// `dd | nc` in the pod to a receiver on the bridge's address here; MiB/s from the
/// connection to its end.
fn receive(host_ns: &Path, k: &Kubelet, id: &str, bytes: usize) -> anyhow::Result<f64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let host_ns = host_ns.to_path_buf();
    let receiver = std::thread::spawn(move || {
        pulse_netlink::in_netns(&host_ns, || -> anyhow::Result<(usize, Duration)> {
            let listener = TcpListener::bind((format!("{POD_SUBNET_PREFIX}1").as_str(), 0))?;
            tx.send(listener.local_addr()?.port())?;
            let (mut c, _) = listener.accept()?;
            let started = Instant::now();
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok((got, started.elapsed()))
        })
    });
    let port = rx.recv().context("the receiver did not listen")?;
    let script = format!(
        "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {POD_SUBNET_PREFIX}1 {port}",
        bytes / 65536
    );
    let r = k
        .exec_sync(id, &["sh", "-c", &script], 600)
        .map_err(|e| anyhow::anyhow!("ExecSync {script}: {e}"))?;
    if r.exit_code != 0 {
        bail!(
            "{script}: exit {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let (got, took) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))???;
    if got != bytes {
        bail!("received {got} bytes of {bytes}");
    }
    Ok(mib_per_s(got, took))
}

/// 64-byte round trips on one connection to the pod's echo server for `period`; per second.
fn round_trips(host_ns: &Path, ip: &str, period: Duration) -> anyhow::Result<f64> {
    let addr = format!("{ip}:5002");
    pulse_netlink::in_netns(host_ns, || -> anyhow::Result<f64> {
        let mut c = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed() < period {
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            count += 1;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    })?
}
