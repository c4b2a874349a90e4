//! Exits per 4 KiB O_DIRECT read with the guest's own virtio-blk driver.
//!
//! Each configuration boots one guest and runs `dd iflag=direct bs=4k` pinned to CPU0 in a
//! root shell (a container the agent starts) three times: a warm-up, then SMALL_READS and
//! LARGE_READS reads. The VMM's and KVM's counters are read around the last two; the
//! difference of their deltas, divided by the extra reads, leaves what one read costs: the
//! container's own start and stop, the same both times, cancel out.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use pulse_tests::agent::Agent;
use pulse_tests::embedded::{Disk, EmbeddedConfig, EmbeddedGuest};
use pulse_tests::rootfs;
use pulse_tests::shell::{block_storage, root_shell};
use pulse_vmm::Vm;

const SMALL_READS: u64 = 200;
const LARGE_READS: u64 = 2200;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const ROOT_SERIAL: &str = "pulse-bench-root";
const DATA_SERIAL: &str = "pulse-bench-data";
/// The file the reads come from: larger than LARGE_READS x 4 KiB, and not zeros (mkfs.ext4
/// -d could store zeros as holes, which O_DIRECT reads without the disk).
const DATA_FILE_MIB: usize = 10;

/// One guest's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub msi: bool,
    pub queues: u16,
}

impl Setup {
    fn label(self) -> String {
        let irq = if self.msi { "MSI" } else { "legacy" };
        let q = if self.queues == 1 { "queue" } else { "queues" };
        format!("{irq}, {} {q}", self.queues)
    }
}

const SETUPS: [Setup; 4] = [
    Setup {
        msi: true,
        queues: 1,
    },
    Setup {
        msi: false,
        queues: 1,
    },
    Setup {
        msi: true,
        queues: 4,
    },
    Setup {
        msi: false,
        queues: 4,
    },
];

/// The counters read around one dd run.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    /// Port I/O and MMIO exits the VMM's vCPU threads handled.
    user_exits: u64,
    /// Every exit KVM saw (its `exits` statistic, summed over the vCPUs).
    kvm_exits: u64,
    /// Interrupts the VMM raised for the data disk (MSI vectors and the legacy line).
    interrupts: u64,
    /// Requests the data disk completed.
    requests: u64,
    /// The guest's local timer interrupts, all CPUs (from its /proc/interrupts).
    timer_ticks: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            user_exits: self.user_exits.saturating_sub(o.user_exits),
            kvm_exits: self.kvm_exits.saturating_sub(o.kvm_exits),
            interrupts: self.interrupts.saturating_sub(o.interrupts),
            requests: self.requests.saturating_sub(o.requests),
            timer_ticks: self.timer_ticks.saturating_sub(o.timer_ticks),
        }
    }
}

/// What one extra read costs, in one configuration.
#[derive(Clone, Debug)]
pub struct PerRead {
    pub setup: Setup,
    pub user_exits: f64,
    pub kvm_exits: f64,
    pub interrupts: f64,
    pub requests: f64,
    pub timer_ticks: f64,
    /// Milliseconds per read, from the two containers' times (emulated: only for the note).
    pub ms: f64,
}

/// Every configuration, one guest each, one after the other; a configuration that fails
/// (after retries) is reported and left out of the table.
pub async fn measure_all() -> Result<Vec<PerRead>> {
    let images = Images::new()?;
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for setup in SETUPS {
        let label = setup.label();
        eprintln!("exits: {label} ...");
        match super::retry_boot(&label, || measure(&images, setup)).await {
            Ok(per_read) => all.push(per_read),
            Err(e) => {
                eprintln!("exits: {label} failed: {e:#}");
                failed.push(label);
            }
        }
    }
    if all.is_empty() {
        bail!("every configuration failed: {}", failed.join(", "));
    }
    if !failed.is_empty() {
        println!("exits: left out (failed): {}", failed.join(", "));
    }
    Ok(all)
}

async fn measure(images: &Images, setup: Setup) -> Result<PerRead> {
    let mut guest = EmbeddedGuest::boot(&images.config(setup)?)?;
    let (agent, _) = guest.connect_agent(BOOT_TIMEOUT).await?;
    read_run(&agent, guest.vm(), "warm-up", SMALL_READS).await?;
    let (small, small_time) = read_run(&agent, guest.vm(), "small", SMALL_READS).await?;
    let (large, large_time) = read_run(&agent, guest.vm(), "large", LARGE_READS).await?;
    let extra = large - small;
    let reads = (LARGE_READS - SMALL_READS) as f64;
    let per = |n: u64| n as f64 / reads;
    Ok(PerRead {
        setup,
        user_exits: per(extra.user_exits),
        kvm_exits: per(extra.kvm_exits),
        interrupts: per(extra.interrupts),
        requests: per(extra.requests),
        timer_ticks: per(extra.timer_ticks),
        ms: large_time.saturating_sub(small_time).as_secs_f64() * 1000.0 / reads,
    })
}

/// One container that reads `reads` blocks; the counters' deltas over its whole life
/// (host side) plus the guest's timer ticks, and how long it took (busybox's dd does not
/// say).
async fn read_run(agent: &Agent, vm: &Vm, id: &str, reads: u64) -> Result<(Counters, Duration)> {
    let started = Instant::now();
    let before = host_counters(vm)?;
    let storages = vec![
        block_storage(ROOT_SERIAL, "rootfs", true),
        block_storage(DATA_SERIAL, "rootfs/data", true),
    ];
    let out = root_shell(agent, id, &read_script(reads), storages).await?;
    let after = host_counters(vm)?;
    let took = started.elapsed();
    ensure!(
        out.status == 0,
        "{id}: exit {}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    ensure!(
        out.stderr.contains(&format!("{reads}+0 records in")),
        "{id}: dd did not read {reads} blocks: {}",
        out.stderr
    );
    let ticks = timer_ticks(&out.stdout)?;
    let mut delta = after - before;
    delta.timer_ticks = ticks;
    Ok((delta, took))
}

/// dd pinned to CPU0, between two looks at the guest's local timer interrupts.
fn read_script(reads: u64) -> String {
    format!(
        "set -e\n\
         grep LOC: /proc/interrupts\n\
         taskset -c 0 dd if=/data/blob of=/dev/null bs=4k iflag=direct count={reads}\n\
         grep LOC: /proc/interrupts\n"
    )
}

/// The VMM's and KVM's counters now (the data disk is the second block device).
fn host_counters(vm: &Vm) -> Result<Counters> {
    let stats = vm.device_stats();
    let Some(data) = stats.iter().filter(|d| d.device_type == "block").nth(1) else {
        bail!("no second block device in {stats:?}");
    };
    let metrics = vm.metrics();
    let kvm = vm.kvm_stats();
    let Some(&kvm_exits) = kvm.get("exits") else {
        bail!("KVM has no `exits` statistic: {kvm:?}");
    };
    Ok(Counters {
        user_exits: metrics.pio_exits + metrics.mmio_exits,
        kvm_exits,
        interrupts: data.vectors.iter().map(|v| v.sent).sum::<u64>() + data.legacy_sent,
        requests: data.requests_completed.iter().sum(),
        timer_ticks: 0,
    })
}

/// The second `LOC:` line's per-CPU counts minus the first's.
fn timer_ticks(stdout: &str) -> Result<u64> {
    let sums: Vec<u64> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("LOC:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse::<u64>().ok())
                .sum()
        })
        .collect();
    match sums[..] {
        [before, after] => Ok(after - before),
        _ => bail!("expected two LOC: lines: {stdout}"),
    }
}

/// A busybox root disk and a data disk holding `/blob`, both mounted read-only: no
/// journal or lazy-init writes add requests.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Result<Images> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        rootfs::busybox_tree(&root)?;
        std::fs::create_dir_all(root.join("data"))?;
        rootfs::ext4_image(&root, &dir.path().join("root.img"))?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("blob"), vec![0x5a; DATA_FILE_MIB << 20])?;
        rootfs::ext4_image(&data, &dir.path().join("data.img"))?;
        Ok(Images { dir })
    }

    /// 2 vCPUs; the console only because the root shell binds /dev/hvc0.
    fn config(&self, setup: Setup) -> Result<EmbeddedConfig> {
        let disk = |name: &str, serial: &str, queues: u16| Disk {
            image: self.dir.path().join(name),
            serial: serial.into(),
            queues,
            read_only: true,
        };
        let mut config = EmbeddedConfig::from_build()?;
        config.vcpus = 2;
        config.msi = setup.msi;
        config.console = true;
        config.disks = vec![
            disk("root.img", ROOT_SERIAL, 1),
            disk("data.img", DATA_SERIAL, setup.queues),
        ];
        Ok(config)
    }
}

/// The table: counts per read, then MSI/legacy ratios, then the notes.
pub fn print_table(rows: &[PerRead]) {
    println!();
    println!(
        "Exits per 4 KiB O_DIRECT read (dd pinned to CPU0), Linux's virtio-blk driver under \
         Pulse's VMM, 2 vCPUs; ({LARGE_READS} - {SMALL_READS}) reads' difference"
    );
    println!();
    println!(
        "| {:<18} | {:>22} | {:>14} | {:>15} | {:>13} | {:>17} |",
        "config",
        "userspace exits/read",
        "KVM exits/read",
        "interrupts/read",
        "requests/read",
        "timer ticks/read"
    );
    println!(
        "|{:-<20}|{:->24}|{:->16}|{:->17}|{:->15}|{:->19}|",
        "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<18} | {:>22.3} | {:>14.3} | {:>15.3} | {:>13.3} | {:>17.3} |",
            r.setup.label(),
            r.user_exits,
            r.kvm_exits,
            r.interrupts,
            r.requests,
            r.timer_ticks
        );
    }
    println!();
    for queues in [1, 4] {
        let find = |msi: bool| {
            rows.iter()
                .find(|r| r.setup.msi == msi && r.setup.queues == queues)
        };
        if let (Some(m), Some(l)) = (find(true), find(false)) {
            println!(
                "MSI/legacy, {queues} queue(s): userspace exits {:.3}, KVM exits {:.3}",
                m.user_exits / l.user_exits,
                m.kvm_exits / l.kvm_exits
            );
        }
    }
    println!();
    println!(
        "Counts are exact: requests/read 1.000 says every read reached the disk, interrupts/read \
         1.000 one interrupt each."
    );
    println!(
        "Noise that remains is time-driven: the guest's timer ticks (HZ=250, tickless when \
         idle) fall into the counts, each a few KVM exits;"
    );
    println!(
        "under two levels of emulation a read takes long enough for them to show (the timer \
         ticks/read column); on hardware they would be far rarer per read."
    );
    println!(
        "Time per read (two levels of emulation, not representative): {}",
        rows.iter()
            .map(|r| format!("{} {:.2} ms", r.setup.label(), r.ms))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
