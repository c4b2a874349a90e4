//! Pulse's embedded VM against QEMU `-M microvm -accel kvm`, the same kernel, initramfs,
//! vCPUs and memory, vsock only: time from the VM's start to the agent's first answer, and
//! the VMM's memory overhead measured as vmm/cli/benches/boot.rs does: the process's RSS minus
//! the RSS of the guest-RAM mapping, sampled from outside while the guest boots, the sample
//! with the highest RSS.
//!
//! Pulse's VMM lives in the shim's process; here a child process of this binary plays the
//! shim (boots the VM, waits for the agent, stays until told), so that its memory can be
//! read from outside like QEMU's. QEMU's vsock is a second process (vhost-device-vsock),
//! reported on its own row.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pulse_tests::embedded::{EmbeddedConfig, EmbeddedGuest};
use pulse_tests::qemu::{Accel, Guest, GuestConfig};
use pulse_vmm::vm::MemoryUsage;

const RUNS: usize = 3;
const VCPUS: u8 = 2;
const MEMORY_MIB: u64 = 256;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The embedded child's line once the agent answered.
const ANSWERED: &str = "answered-ms";

/// One boot.
#[derive(Clone, Copy, Debug, Default)]
struct Boot {
    /// From the VM's start (Pulse: `Vm::start`; QEMU: spawning it) to the agent's answer.
    answer_ms: f64,
    /// Pulse only: from spawning the child process, which then builds and starts the VM.
    from_spawn_ms: f64,
    /// The VMM process's RSS without the guest-RAM mapping's.
    overhead_kib: u64,
    /// QEMU only: vhost-device-vsock's RSS without guest RAM.
    backend_kib: u64,
}

/// All runs, Pulse and QEMU alternating.
pub struct Boots {
    pulse: Vec<Boot>,
    qemu: Vec<Boot>,
    accel: Accel,
}

pub async fn measure_all() -> Result<Boots> {
    let accel = Accel::detect();
    let mut boots = Boots {
        pulse: Vec::new(),
        qemu: Vec::new(),
        accel,
    };
    for run in 1..=RUNS {
        eprintln!("boot: run {run} of {RUNS} ...");
        boots
            .pulse
            .push(pulse_boot().with_context(|| format!("Pulse, run {run}"))?);
        boots.qemu.push(
            qemu_boot(accel)
                .await
                .with_context(|| format!("QEMU, run {run}"))?,
        );
    }
    Ok(boots)
}

fn embedded_config() -> Result<EmbeddedConfig> {
    let mut config = EmbeddedConfig::from_build()?;
    config.vcpus = VCPUS;
    config.memory_mib = MEMORY_MIB;
    Ok(config)
}

/// The child's side: boot, wait for the agent, print the time, stay until stdin closes.
pub fn embedded_child() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut guest = EmbeddedGuest::boot(&embedded_config()?)?;
    let (_agent, took) = runtime.block_on(guest.connect_agent(BOOT_TIMEOUT))?;
    println!("{ANSWERED} {:.3}", took.as_secs_f64() * 1000.0);
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    Ok(())
}

/// Spawns the embedded child and samples its memory until it reports the agent's answer.
fn pulse_boot() -> Result<Boot> {
    let spawned = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .arg(super::EMBEDDED_CHILD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the embedded VMM child")?;
    let answered = answered_line(&mut child);
    let guest_kib = MEMORY_MIB * 1024;
    let mut peak = PeakRss::default();
    let answer_ms = loop {
        peak.sample(child.id(), guest_kib);
        match answered.recv_timeout(SAMPLE_EVERY) {
            Ok(ms) => break ms,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                bail!("the embedded child ended ({status}) without the agent's answer");
            }
        }
    };
    let from_spawn_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    peak.sample(child.id(), guest_kib);
    drop(child.stdin.take());
    child.wait()?;
    Ok(Boot {
        answer_ms,
        from_spawn_ms,
        overhead_kib: peak.overhead_kib(),
        backend_kib: 0,
    })
}

/// The child's `answered-ms N` line, sent when it comes.
fn answered_line(child: &mut Child) -> mpsc::Receiver<f64> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(ms) = line.strip_prefix(ANSWERED) {
                let _ = tx.send(ms.trim().parse().unwrap_or(f64::NAN));
            }
        }
    });
    rx
}

/// QEMU with the rig's fixture (tests/src/qemu.rs), KVM where there is hardware help.
async fn qemu_boot(accel: Accel) -> Result<Boot> {
    let mut config = GuestConfig::from_build()?;
    config.accel = accel;
    config.vcpus = u32::from(VCPUS);
    config.memory_mib = u32::try_from(MEMORY_MIB).unwrap();
    // What Pulse's embedded guest gets too: no PS/2 probing.
    config.extra_cmdline = "i8042.noaux i8042.nokbd".into();
    let mut guest = Guest::boot(&config)?;
    let pids = [guest.qemu_pid(), guest.backend_pid()];
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || sample_until(stop, pids.map(|p| p.unwrap_or(0))))
    };
    let answered = guest.connect_agent(BOOT_TIMEOUT).await;
    stop.store(true, Ordering::Relaxed);
    let [qemu, backend] = sampler.join().expect("the sampler thread");
    let (_agent, took) = answered?;
    Ok(Boot {
        answer_ms: took.as_secs_f64() * 1000.0,
        from_spawn_ms: f64::NAN,
        overhead_kib: qemu.overhead_kib(),
        backend_kib: backend.overhead_kib(),
    })
}

/// Samples each pid's memory until `stop` (then once more).
fn sample_until(stop: Arc<AtomicBool>, pids: [u32; 2]) -> [PeakRss; 2] {
    let guest_kib = MEMORY_MIB * 1024;
    let mut peaks = [PeakRss::default(), PeakRss::default()];
    loop {
        let last = stop.load(Ordering::Relaxed);
        for (peak, pid) in peaks.iter_mut().zip(pids) {
            peak.sample(pid, guest_kib);
        }
        if last {
            return peaks;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// The sample with the highest process RSS.
#[derive(Clone, Debug, Default)]
struct PeakRss {
    best: Option<MemoryUsage>,
}

impl PeakRss {
    /// Samples `pid` (0, no process, has no sample).
    fn sample(&mut self, pid: u32, guest_kib: u64) {
        if let Some(usage) = MemoryUsage::of_process(pid, guest_kib) {
            if self.best.as_ref().is_none_or(|b| usage.rss_kib > b.rss_kib) {
                self.best = Some(usage);
            }
        }
    }

    fn overhead_kib(&self) -> u64 {
        self.best.as_ref().map_or(0, |b| b.overhead_kib)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Memory first (a count of pages), then the emulated times, then what they mean.
pub fn print_table(boots: &Boots) {
    let col = |runs: &[Boot], f: fn(&Boot) -> f64| median(runs.iter().map(f).collect());
    let p_mem = col(&boots.pulse, |b| mib(b.overhead_kib));
    let q_mem = col(&boots.qemu, |b| mib(b.overhead_kib));
    let q_backend = col(&boots.qemu, |b| mib(b.backend_kib));
    let p_ms = col(&boots.pulse, |b| b.answer_ms);
    let q_ms = col(&boots.qemu, |b| b.answer_ms);
    let p_spawn_ms = col(&boots.pulse, |b| b.from_spawn_ms);
    println!();
    println!(
        "Pulse's embedded VM against qemu-system-x86_64 -M microvm -accel {} in the same L1: \
         {VCPUS} vCPUs, {MEMORY_MIB} MiB, the project's kernel and initramfs, vsock only; \
         median of {RUNS} runs each",
        boots.accel.name()
    );
    println!();
    println!(
        "| {:<48} | {:>9} | {:>9} | {:>10} |",
        "metric", "Pulse", "QEMU", "Pulse/QEMU"
    );
    println!("|{:-<50}|{:->11}|{:->11}|{:->12}|", "", "", "", "");
    let row = |name: &str, p: f64, q: f64| {
        println!("| {name:<48} | {p:>9.2} | {q:>9.2} | {:>10.3} |", p / q);
    };
    row("VMM memory overhead (MiB)", p_mem, q_mem);
    row(
        "  with QEMU's vhost-device-vsock process (MiB)",
        p_mem,
        q_mem + q_backend,
    );
    row(
        "VM start to agent's first answer (s) [emulated]",
        p_ms / 1000.0,
        q_ms / 1000.0,
    );
    println!();
    println!(
        "[emulated]: times in the rig run under two levels of emulation (QEMU TCG with \
         emulated SVM, then KVM in L1):"
    );
    println!("  they are not representative; only their ratio is worth a look.");
    println!(
        "  Pulse's time starts at Vm::start in the process that embeds the VMM (as in the \
         shim), {:.2} s from spawning that process;",
        p_spawn_ms / 1000.0
    );
    println!("  QEMU's at spawning QEMU (its vhost-device-vsock already up).");
    println!(
        "Memory: RSS minus the guest-RAM mapping's RSS, highest sample while booting (as \
         vmm/cli/benches/boot.rs);"
    );
    println!(
        "  Pulse's process also holds the agent's client and a tokio runtime, as the shim does."
    );
}
