//! Boot time of the real guest under the QEMU rig: from starting QEMU (the
//! vsock backend is already up) to the agent's first health-check answer
//! over vsock, and the kernel's own timestamp when it ran /init.
//!
//! QEMU here is the TCG software emulator (these machines have no hardware
//! virtualization), so the absolute numbers are far above what the same
//! guest takes under KVM; they track regressions of the kernel config, the
//! initramfs and the agent's start-up.
//!
//! `cargo bench -p pulse-tests --bench guest_boot` (after `make guest`).

use std::time::Duration;

use pulse_tests::qemu::{Guest, GuestConfig, INIT_LINE};

const RUNS: usize = 5;

/// `[    0.812345] Run /init as init process`: the kernel's clock at that line.
fn init_timestamp(console: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(INIT_LINE))?;
    let stamp = line.trim_start().strip_prefix('[')?.split(']').next()?;
    stamp.trim().parse().ok()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // cargo bench passes --bench; nothing to parse. Errors are printed after
    // run() returned, so that every guest has been dropped (and cleaned up).
    if let Err(e) = run().await {
        eprintln!("guest_boot: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let config = GuestConfig::from_build()?;
    println!(
        "guest boot under QEMU TCG (-M microvm, {} vCPU, {} MiB), {RUNS} runs",
        config.vcpus, config.memory_mib
    );
    println!(
        "{:>4} {:>22} {:>24}",
        "run", "kernel: /init (ms)", "agent's first answer (ms)"
    );
    let (mut init, mut answer) = (Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let mut guest = Guest::boot(&config)?;
        let (_, elapsed) = guest
            .connect_agent(Duration::from_secs(120))
            .await
            .map_err(|e| e.context(format!("run {run}")))?;
        let answer_ms = elapsed.as_secs_f64() * 1000.0;
        let init_ms = init_timestamp(&guest.console()).map(|s| s * 1000.0);
        println!(
            "{run:>4} {:>22} {answer_ms:>24.0}",
            init_ms
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into())
        );
        answer.push(answer_ms);
        init.extend(init_ms);
    }
    let init_median = if init.is_empty() {
        "-".to_string()
    } else {
        format!("{:.0}", median(&mut init))
    };
    println!(
        "{:>4} {init_median:>22} {:>24.0}",
        "med",
        median(&mut answer)
    );
    Ok(())
}
