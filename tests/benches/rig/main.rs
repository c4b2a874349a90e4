//! Pulse's VMM with the real guest driver, in the nested rig: exits per 4 KiB O_DIRECT read
//! (MSI against the legacy line, 1 and 4 block queues), and Pulse's embedded VM against
//! `qemu-system-x86_64 -M microvm -accel kvm` in the same L1 (start to the agent's first
//! answer, VMM memory overhead).
//!
//! `cargo bench -p pulse-tests --bench rig` (after `make guest`; root). On a host without
//! VT-x/AMD-V the binary runs itself again inside the rig (`scripts/nested.sh`, which needs
//! the binary already built: L1 sees the host's tree read-only, so cargo cannot build there)
//! and its output streams back. Counts are exact; times in the rig are two levels of
//! emulation and only the ratios mean something.

mod boot;
mod exits;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pulse_tests::nested::{self, Options};

/// The argument that makes this binary the Pulse VMM process of one boot measurement.
const EMBEDDED_CHILD: &str = "--embedded-vmm-child";
/// The whole rig run: 4 guests for the exits, 6 boots, the L1 guest's own start.
const RIG_TIMEOUT: Duration = Duration::from_secs(2400);
/// L1 memory: scripts/nested.sh's default, what `make test` runs with.
const RIG_MEMORY_MIB: u32 = 6144;
/// Tries per boot: under emulated SVM a guest now and then triple-faults early in its boot
/// (before the agent runs); such a boot is retried, counted, and reported with the tables.
const BOOT_ATTEMPTS: u32 = 3;

/// Guests that failed (in their boot, typically) and were booted again.
static RETRIED_BOOTS: AtomicU32 = AtomicU32::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.iter().any(|a| a == EMBEDDED_CHILD) {
        boot::embedded_child()
    } else if !nested::host_has_hw_virt() {
        rerun_in_rig(&args[1..])
    } else {
        measure_here()
    };
    if let Err(e) = result {
        eprintln!("rig bench: {e:#}");
        std::process::exit(1);
    }
}

/// Both measurements, where KVM has hardware help (in L1, or on a host with VT-x/AMD-V).
/// A failure in one still lets the other run and print.
fn measure_here() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let exits = runtime
        .block_on(exits::measure_all())
        .map(|rows| exits::print_table(&rows));
    let boots = runtime
        .block_on(boot::measure_all())
        .map(|boots| boot::print_table(&boots));
    let retried = RETRIED_BOOTS.load(Ordering::Relaxed);
    println!("\nguests booted again after a failure (see the log for why): {retried}");
    match (exits, boots) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e.context("exits per read")),
        (Ok(()), Err(e)) => Err(e.context("boot against QEMU")),
        (Err(a), Err(b)) => anyhow::bail!("exits per read: {a:#}\nboot against QEMU: {b:#}"),
    }
}

/// This binary, with the same arguments, as root in the rig's L1 guest; its output streams
/// here. Skips (exit 0) where the rig cannot run, as the rig's tests do.
fn rerun_in_rig(args: &[String]) -> anyhow::Result<()> {
    if let Some(why) = nested::unavailable() {
        println!("rig bench SKIPPED: {why}");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut cmd = vec![exe.display().to_string()];
    cmd.extend(args.iter().cloned());
    println!("no VT-x/AMD-V here: running in the nested rig (scripts/nested.sh)");
    let options = Options {
        timeout: RIG_TIMEOUT,
        memory_mib: RIG_MEMORY_MIB,
        direct_ok: false,
        ..Options::default()
    };
    match nested::run_streaming(&cmd, &options)? {
        0 => Ok(()),
        code => anyhow::bail!("the rig run exited {code}"),
    }
}

/// Runs `attempt` (a boot and whatever follows it) up to BOOT_ATTEMPTS times, logging each
/// failure; the last failure is the error.
async fn retry_boot<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tries < BOOT_ATTEMPTS => {
                let first = format!("{e:#}");
                eprintln!(
                    "{what}: try {tries} failed, again: {}",
                    first.lines().next().unwrap_or_default()
                );
                RETRIED_BOOTS.fetch_add(1, Ordering::Relaxed);
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
