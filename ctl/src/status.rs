//! `pulse-ctl status <sandbox>`: the device report of a running pod, from its
//! shim's management socket (`<state_dir>/<namespace>/<sandbox>/mgmt.sock`):
//! both views as JSON (`/report`) and the Prometheus metrics (`/metrics`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The pod (sandbox) id.
    sandbox: String,
    /// The shim's state directory (`[shim] state_dir` of pulse.toml).
    #[arg(long, default_value = "/run/pulse")]
    state_dir: PathBuf,
    /// containerd namespace; by default every namespace is searched.
    #[arg(long)]
    namespace: Option<String>,
    /// Only the JSON report.
    #[arg(long)]
    json: bool,
}

/// The management socket of `sandbox`.
fn find_socket(args: &StatusArgs) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match &args.namespace {
        Some(ns) => vec![args.state_dir.join(ns).join(&args.sandbox)],
        None => std::fs::read_dir(&args.state_dir)
            .with_context(|| format!("reading {}", args.state_dir.display()))?
            .flatten()
            .map(|e| e.path().join(&args.sandbox))
            .collect(),
    };
    let socket = candidates
        .into_iter()
        .map(|d| d.join(pulse_protocols::MANAGEMENT_SOCKET))
        .find(|s| s.exists());
    match socket {
        Some(s) => Ok(s),
        None => bail!(
            "no running sandbox {} under {} (is the pod running with runtime io.containerd.pulse.v2?)",
            args.sandbox,
            args.state_dir.display()
        ),
    }
}

/// `GET path` over the unix socket; returns the body of a 200 answer.
pub async fn get(socket: &Path, path: &str) -> Result<String> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: pulse\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    if head.split_whitespace().nth(1) != Some("200") {
        bail!("{path}: {}", head.lines().next().unwrap_or("no answer"));
    }
    Ok(body.to_string())
}

pub async fn run(args: StatusArgs) -> Result<()> {
    let socket = find_socket(&args)?;
    let report = get(&socket, "/report").await?;
    let value: serde_json::Value =
        serde_json::from_str(&report).context("the report is not JSON")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let host = &value["host"];
    println!(
        "sandbox {}: backend {} ({}), {} vCPU(s), {} MiB",
        args.sandbox,
        host["backend"].as_str().unwrap_or("?"),
        host["accel"].as_str().unwrap_or("?"),
        host["vcpus"],
        host["memory_mib"]
    );
    println!("\nVMM configured:");
    for d in host["devices"].as_array().into_iter().flatten() {
        println!(
            "  {:<6} {:<14} queues {:<3} msi {}",
            d["kind"].as_str().unwrap_or("?"),
            d["id"].as_str().unwrap_or("?"),
            d["queues"],
            if d["msi"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            }
        );
    }
    println!("\nguest reports:");
    match value["guest"]["devices"].as_array() {
        Some(devices) => {
            for d in devices {
                let irqs: u64 = d["vectors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| {
                        v["total"]
                            .as_str()
                            .and_then(|t| t.parse().ok())
                            .or(v["total"].as_u64())
                    })
                    .sum();
                println!(
                    "  {:<8} {:<6} {:<4} queues {:<3} msi {:<3} vectors {:<2} interrupts {}",
                    d["name"].as_str().unwrap_or("?"),
                    d["deviceType"].as_str().unwrap_or("?"),
                    d["subsystemName"].as_str().unwrap_or(""),
                    d["blockHwQueues"]
                        .as_u64()
                        .filter(|q| *q > 0)
                        .unwrap_or(d["numQueues"].as_u64().unwrap_or(0)),
                    if d["msiEnabled"].as_bool() == Some(true) {
                        "on"
                    } else {
                        "off"
                    },
                    d["vectors"].as_array().map(|v| v.len()).unwrap_or(0),
                    irqs
                );
            }
        }
        None => println!(
            "  (no report: {})",
            value["guest_error"].as_str().unwrap_or("unknown")
        ),
    }
    let mismatches: Vec<&str> = value["mismatches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .collect();
    if mismatches.is_empty() {
        println!("\ncheck: the guest's devices match what the VMM configured");
    } else {
        println!("\ncheck: {} mismatch(es):", mismatches.len());
        for m in mismatches {
            println!("  - {m}");
        }
    }
    println!("\n# /metrics");
    print!("{}", get(&socket, "/metrics").await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(state_dir: &Path, sandbox: &str, namespace: Option<&str>) -> StatusArgs {
        StatusArgs {
            sandbox: sandbox.to_string(),
            state_dir: state_dir.to_path_buf(),
            namespace: namespace.map(str::to_string),
            json: false,
        }
    }

    #[test]
    fn the_socket_is_found_in_its_namespace_or_by_searching_them_all() {
        let state = tempfile::tempdir().unwrap();
        let pod = state.path().join("k8s.io/pod1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::create_dir_all(state.path().join("default/other")).unwrap();
        std::fs::write(pod.join(pulse_protocols::MANAGEMENT_SOCKET), "").unwrap();
        let expected = pod.join("mgmt.sock");

        let found = find_socket(&args(state.path(), "pod1", Some("k8s.io"))).unwrap();
        assert_eq!(found, expected);
        let found = find_socket(&args(state.path(), "pod1", None)).unwrap();
        assert_eq!(found, expected);

        let err = find_socket(&args(state.path(), "pod1", Some("default"))).unwrap_err();
        assert!(err.to_string().contains("no running sandbox pod1"), "{err}");
        let err = find_socket(&args(state.path(), "pod2", None)).unwrap_err();
        assert!(err.to_string().contains("no running sandbox pod2"), "{err}");
    }
}
