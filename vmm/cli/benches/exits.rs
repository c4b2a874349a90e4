//! Exits per block request, MSI against legacy interrupts: the probe guest runs the same
//! workload (4 queues on 2 vCPUs, 4 KiB requests in batches) in both modes in one run, and the
//! VMM counts the exits between the guest's "workload starts" and "workload done" marks.
//! Userspace exits are what the VMM's vCPU threads handle (port I/O, MMIO); KVM exits are every
//! exit KVM saw, including those it handled in the kernel (doorbell ioeventfds, EOIs, HLT).

use std::process::Command;

use serde_json::Value;

const QUEUES: &str = "4";
const VCPUS: &str = "2";
const REQUESTS: &str = "128";

struct Run {
    requests: f64,
    user: f64,
    kvm: f64,
    ms: f64,
    interrupts_sent: u64,
    ok: bool,
}

fn run(irq: &str) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-vmm"))
        .args(["probe", "--json", "--irq", irq])
        .args([
            "--blk-queues",
            QUEUES,
            "--vcpus",
            VCPUS,
            "--requests",
            REQUESTS,
        ])
        .output()
        .expect("run pulse-vmm probe");
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let dev = &r["devices"][0];
    let w = &r["exits"]["workload"];
    let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let sent: u64 = dev["vectors"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["sent"].as_u64()).sum())
        .unwrap_or(0)
        + dev["legacy"]["sent"].as_u64().unwrap_or(0);
    Run {
        requests: n(&dev["requests_completed"]),
        user: n(&w["pio_exits"]) + n(&w["mmio_exits"]),
        kvm: n(&w["kvm_exits"]),
        ms: n(&w["ms"]),
        interrupts_sent: sent,
        ok: r["ok"] == true,
    }
}

fn main() {
    let msi = run("msi");
    let legacy = run("legacy");
    println!();
    println!(
        "Block workload exits: {QUEUES} queues, {VCPUS} vCPUs, {REQUESTS} requests per queue \
         (4 KiB, half writes, half verifying reads), probe guest under KVM"
    );
    println!();
    println!(
        "| {:<34} | {:>10} | {:>10} | {:>10} |",
        "per completed request", "MSI", "legacy", "MSI/legacy"
    );
    println!("|{:-<36}|{:->12}|{:->12}|{:->12}|", "", "", "", "");
    let row = |name: &str, m: f64, l: f64| {
        println!(
            "| {:<34} | {:>10.3} | {:>10.3} | {:>10.3} |",
            name,
            m,
            l,
            m / l
        );
    };
    row(
        "userspace exits",
        msi.user / msi.requests,
        legacy.user / legacy.requests,
    );
    row(
        "KVM exits",
        msi.kvm / msi.requests,
        legacy.kvm / legacy.requests,
    );
    row(
        "interrupts raised",
        msi.interrupts_sent as f64 / msi.requests,
        legacy.interrupts_sent as f64 / legacy.requests,
    );
    row("workload time (ms, emulated guest)", msi.ms, legacy.ms);
    println!();
    let ratio = (msi.user / msi.requests) / (legacy.user / legacy.requests);
    println!(
        "requests completed: MSI {} legacy {}; probe ok: MSI {} legacy {}; \
         userspace-exit ratio {:.3}: target <= 0.333 {}",
        msi.requests,
        legacy.requests,
        msi.ok,
        legacy.ok,
        ratio,
        if ratio <= 1.0 / 3.0 { "met" } else { "NOT met" }
    );
}
