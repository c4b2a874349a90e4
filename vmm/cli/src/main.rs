//! `pulse-vmm`: boot a microVM from the command line (`run`), or self-test with the embedded
//! probe guest (`probe`). Errors print one line and exit with status 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pulse_probe::{self as probe, ProbeOptions, ProbeReport};
use pulse_vmm::{BootProtocol, Vm, VmConfigFile, VmHandle};

/// `println!` that ignores a closed stdout (`pulse-vmm probe | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(name = "pulse-vmm", version, about = "Pulse's KVM microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel and run until the guest stops.
    Run(RunArgs),
    /// Boot the embedded probe guest and report what it found.
    Probe(ProbeArgs),
}

#[derive(Args)]
struct RunArgs {
    /// TOML file with the same settings; command-line flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel: ELF vmlinux (64-bit or PVH entry) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u64>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Serial output: stdio, file:PATH or none.
    #[arg(long)]
    serial: Option<String>,
    /// Boot protocol: auto, linux64 or pvh.
    #[arg(long)]
    boot: Option<String>,
    /// virtio-blk disk, repeatable: PATH or path=PATH[,queues=N][,queue_size=N][,ro][,serial=ID].
    #[arg(long = "block")]
    block: Vec<pulse_vmm::config::BlockConfigFile>,
    /// virtio-vsock device: cid=N,uds=PATH (guest connections to host port P go to PATH_P).
    #[arg(long)]
    vsock: Option<pulse_vmm::config::VsockConfigFile>,
    /// virtio-net device, repeatable: tap=NAME[,queues=N][,mac=aa:bb:cc:dd:ee:ff][,mtu=N]
    /// or fd=N (an inherited tap descriptor).
    #[arg(long = "net")]
    net: Vec<pulse_vmm::devices::net::NetConfig>,
    /// virtio-console (hvc0): file:PATH, stdio, unix:PATH (Pulse listens) or none.
    #[arg(long)]
    console: Option<pulse_vmm::devices::console::ConsoleConfig>,
    /// Offer per-queue MSI on the virtio devices: on (default) or off.
    #[arg(long, value_parser = parse_on_off)]
    msi: Option<bool>,
    /// Seccomp filters on the VMM's threads: on (default) or off (only to debug the VMM).
    #[arg(long, value_parser = parse_on_off)]
    seccomp: Option<bool>,
    /// Map the test devices (the debug-exit port 0x501, whose byte becomes the exit status,
    /// and the phase-marker port 0x441) for a test guest.
    #[arg(long)]
    test_devices: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

#[derive(Args)]
struct ProbeArgs {
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: u64,
    /// Boot protocol: auto, linux64 or pvh.
    #[arg(long, default_value = "auto")]
    boot: String,
    /// Add a virtio-blk device with this many queues (on a temporary disk).
    #[arg(long)]
    blk_queues: Option<u16>,
    /// Interrupt mode of the guest's virtio driver: msi or legacy.
    #[arg(long, default_value = "msi")]
    irq: String,
    /// Block requests per queue (half writes, half verifying reads).
    #[arg(long, default_value_t = 32)]
    requests: u32,
    /// Add a virtio-vsock device: host connections echoed by the guest, a guest connection
    /// to a host listener, a transport reset at the end.
    #[arg(long)]
    vsock: bool,
    /// Add a virtio-net device with this many queue pairs, on a tap the run creates and
    /// removes: the guest sends frames on every tx queue, the host sends it frames until
    /// every rx queue has some.
    #[arg(long)]
    net_queues: Option<u16>,
    /// Add a virtio-console device: the guest writes on hvc0 and echoes a host line.
    #[arg(long)]
    console: bool,
    /// Whether the VMM offers per-queue MSI: on (default) or off (the guest driver then
    /// falls back to the legacy line even with --irq msi).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    offer_msi: bool,
    /// After the block workload, double the disk while the guest runs: the guest must take
    /// the configuration-change interrupt and see the new capacity.
    #[arg(long)]
    blk_resize: bool,
    /// Hostile mode: a block device (--blk-queues, default 2), a net device, a vsock device
    /// and a console; the guest breaks every rule of the transport and the devices (odd
    /// register writes, refused MSI messages, hostile descriptor chains, floods) and checks
    /// that they still work where they should. The other workload options are ignored. Exit
    /// status 0 when every check held and no thread was left behind.
    #[arg(long)]
    hostile: bool,
    /// Concurrent host vsock connections.
    #[arg(long, default_value_t = 100)]
    vsock_conns: u32,
    /// Bytes each vsock connection sends and must get back.
    #[arg(long, default_value_t = 65536)]
    vsock_bytes: u32,
    /// Extra guest command-line word (repeatable), e.g. probe.selftest=fail.
    #[arg(long = "guest-arg")]
    guest_args: Vec<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Copy the guest's serial output to stderr.
    #[arg(long)]
    serial_echo: bool,
    /// Stop the guest after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Seccomp filters on the VMM's threads: on (default) or off (only to debug the VMM).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    seccomp: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PULSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print as clap formats them; a bad flag is one error line.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            eprintln!(
                "pulse-vmm: error: {} (see pulse-vmm --help)",
                first.trim_start_matches("error: ").trim()
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Probe(args) => probe_command(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pulse-vmm: error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error chain as one line; a cause already spelled out by its parent is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let file = match &args.config {
        Some(path) => VmConfigFile::load(path)?,
        None => VmConfigFile::default(),
    };
    let flags = VmConfigFile {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        serial: args.serial,
        boot_protocol: args.boot,
        block: args.block,
        vsock: args.vsock,
        net: args.net,
        console: args.console,
        msi: args.msi,
        seccomp: args.seccomp,
        test_devices: args.test_devices.then_some(true),
    };
    let config = file.merged_with(flags).into_vm_config()?;
    let signals = SignalWatcher::block()?;
    let mut vm = Vm::start(&config).context("cannot start the VM")?;
    let watcher = signals.watch(vm.handle());
    let exit = vm.wait(None);
    watcher.finish();
    tracing::info!(%exit, "VM stopped");
    if let pulse_vmm::VmExit::Crashed(why) = &exit {
        eprintln!("pulse-vmm: guest stopped: {why}");
    }
    // Clamped to the range of an exit status, so the conversion cannot fail.
    let status = u8::try_from(exit.exit_status().clamp(0, 255)).unwrap_or(u8::MAX);
    Ok(ExitCode::from(status))
}

fn probe_command(args: ProbeArgs) -> Result<ExitCode> {
    let vcpus = u8::try_from(args.vcpus)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| anyhow::anyhow!("vcpus must be between 1 and 254, got {}", args.vcpus))?;
    let boot_protocol: BootProtocol = args.boot.parse().map_err(anyhow::Error::msg)?;
    if let Some(q) = args.blk_queues {
        anyhow::ensure!(
            (1..=pulse_vmm::devices::block::MAX_QUEUES).contains(&q),
            "--blk-queues must be between 1 and {}, got {q}",
            pulse_vmm::devices::block::MAX_QUEUES
        );
    }
    anyhow::ensure!(
        args.vsock_conns <= 128,
        "--vsock-conns must be at most 128, got {}",
        args.vsock_conns
    );
    anyhow::ensure!(
        (1..=16 << 20).contains(&args.vsock_bytes),
        "--vsock-bytes must be between 1 and 16777216, got {}",
        args.vsock_bytes
    );
    let options = ProbeOptions {
        vsock: args.vsock.then_some(probe::VsockWorkload {
            conns: args.vsock_conns,
            bytes: args.vsock_bytes,
        }),
        blk_queues: args.blk_queues,
        net_queues: args.net_queues,
        console: args.console,
        offer_msi: args.offer_msi,
        blk_resize: args.blk_resize,
        hostile: args.hostile,
        irq: args.irq.parse().map_err(anyhow::Error::msg)?,
        requests: args.requests,
        vcpus,
        memory_mib: args.memory_mib,
        boot_protocol,
        extra_cmdline: args.guest_args,
        echo_serial: args.serial_echo,
        timeout: Duration::from_secs(args.timeout_s),
        seccomp: args.seccomp,
    };
    let report = probe::run(&options).context("cannot run the probe")?;
    if args.json {
        out!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(r: &ProbeReport) {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    out!(
        "probe {}: booted via {} on {}/{} vCPUs, boot timer at {}, VM ran {:.1} ms",
        if r.ok { "OK" } else { "FAILED" },
        r.boot_protocol,
        r.vcpus,
        r.vcpus_configured,
        ms(r.boot_ms),
        r.run_ms
    );
    out!("  exit:    {}", r.exit);
    if let Some(guest) = &r.guest {
        out!(
            "  guest:   ok={} apic_ids={} errors={}",
            guest["ok"],
            guest["apic_ids"],
            guest["errors"]
        );
    } else {
        out!("  guest:   printed no result line");
    }
    out!(
        "  exits:   {} port I/O, {} MMIO, {} to unclaimed addresses (userspace)",
        r.exits.pio,
        r.exits.mmio,
        r.exits.unhandled
    );
    out!(
        "  memory:  VMM overhead {:.1} MiB (process RSS {:.1} MiB, guest pages {:.1} MiB)",
        r.memory.overhead_kib as f64 / 1024.0,
        r.memory.rss_kib as f64 / 1024.0,
        r.memory.guest_resident_kib as f64 / 1024.0
    );
    if !r.exits.kvm.is_empty() {
        let k = |name: &str| r.exits.kvm.get(name).copied().unwrap_or(0);
        out!(
            "  KVM:     {} exits, {} halts, {} interrupt injections",
            k("exits"),
            k("halt_exits"),
            k("irq_injections")
        );
    }
    if let Some(w) = &r.exits.workload {
        out!(
            "  workload: {:.1} ms, {} port I/O + {} MMIO exits to userspace, {} KVM exits",
            w.ms,
            w.pio_exits,
            w.mmio_exits,
            w.kvm_exits
        );
    }
    let t = &r.threads;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    out!(
        "  threads: {} before the VM, {} at the workload's start, {} at its end, {} after",
        opt(t.before),
        opt(t.at_start),
        opt(t.at_done),
        opt(t.after)
    );
    for d in &r.devices {
        print_device(d);
    }
    if let Some(v) = &r.vsock_device {
        out!(
            "  vsock device: {} packets from the guest ({} bad), {} to it, {} refused, \
             replies dropped {} (queued {})",
            v.tx_packets,
            v.bad_packets,
            v.rx_packets,
            v.refused,
            v.replies_dropped,
            v.replies_queued
        );
    }
    if let Some(n) = &r.net_host {
        out!(
            "  net host side: tap {}, guest frames seen per pair {:?}, {} frames sent, \
             delivered per rx queue {:?}",
            n.tap,
            n.from_guest,
            n.sent,
            n.delivered
        );
        for e in &n.errors {
            out!("    error: {e}");
        }
    }
    if let Some(c) = &r.console_host {
        out!(
            "  console host side: {} ({:?})",
            if c.ok {
                "hello and echo received"
            } else {
                "FAILED"
            },
            c.output
        );
        for e in &c.errors {
            out!("    error: {e}");
        }
    }
    if let Some(v) = &r.vsock_host {
        out!(
            "  vsock host side: {} connections echoed intact ({} mismatched, {} retries before \
             the guest was ready) in {:.0} ms; guest connection {}; {} transport reset(s)",
            v.echoed,
            v.mismatched,
            v.retries,
            v.ms,
            if v.guest_connected {
                "answered"
            } else {
                "FAILED"
            },
            v.resets
        );
        for e in &v.errors {
            out!("    error: {e}");
        }
    }
    for line in &r.serial {
        out!("  serial:  {line}");
    }
}

fn print_device(d: &probe::DeviceReport) {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    out!();
    let work = match d.requests_asked {
        Some(asked) => format!(
            "requests {}/{asked} completed, data errors {}",
            d.requests_completed,
            opt(d.data_errors)
        ),
        None => format!("{} packets", d.requests_completed),
    };
    out!(
        "  {} at {}: {} queues, MSI {} (guest says {}), {work}",
        d.device_type,
        d.base,
        d.queues,
        if d.msi_enabled { "on" } else { "off" },
        d.guest_msi
            .map_or("-", |m| if m { "MSI" } else { "legacy" }),
    );
    if let Some(n) = &d.net {
        out!(
            "    guest: {} pairs (VQ_PAIRS_SET {}), sent per pair {}, host frames per rx queue {}, other {}",
            n["pairs"], n["mq_set"], n["tx_done"], n["rx_host"], n["rx_other"]
        );
    }
    if let Some(r) = &d.resize {
        out!(
            "    guest: resize seen, capacity {} -> {} sectors, {} config-change interrupt(s)",
            r["capacity_before"],
            r["capacity_after"],
            r["config_interrupts"]
        );
    }
    if let Some(c) = &d.console {
        out!(
            "    guest: {} writes, {} bytes in, echo sent {}",
            c["writes_done"],
            c["bytes_received"],
            c["echo_sent"]
        );
    }
    if let Some(v) = &d.vsock {
        out!(
            "    guest: {} of {} connections echoed ({} bytes), guest connection ok {}, {} event(s)",
            v["conns_done"], v["conns_expected"], v["bytes_echoed"], v["connect_ok"], v["events"]
        );
    }
    if let Some(h) = &d.hostile {
        out!(
            "    hostile: {}/{} rules held, {}/{} hostile chains returned ({} published), \
             flood {} ({} answers), broken queue seen {}, healthy queue {}, alive {}",
            h["checks_passed"],
            h["checks"],
            h["chains_returned"],
            h["chains_expected"],
            h["chains"],
            h["flood"],
            h["flood_answers"],
            h["broken_queue_seen"],
            h["healthy_queue"],
            h["alive"]
        );
        let e = &d.transport_errors;
        out!(
            "    refused by the transport: width {}, status {}, features {}, queue setup {}, \
             notify {}, MSI op {}, vector {}, MSI address {}, MSI data {}, CSR after DRIVER_OK {}",
            e.bad_access_width,
            e.bad_status,
            e.bad_features,
            e.bad_queue_setup,
            e.bad_notify,
            e.unknown_msi_op,
            e.vector_out_of_range,
            e.msi_address_rejected,
            e.msi_data_rejected,
            e.csr_after_driver_ok
        );
        let f = &d.faults;
        out!(
            "    refused by the device: malformed chains {}, heads beyond the table {}, \
             avail index too far {}, ring access {}, starts without queues {} ({} log lines)",
            f.malformed_chain,
            f.head_out_of_range,
            f.avail_index_too_far,
            f.ring_access,
            f.incomplete_setup,
            f.log_lines
        );
    }
    if let Some(note) = &d.guest_note {
        out!("    guest note: {note}");
    }
    for e in &d.guest_errors {
        out!("    guest error: {e}");
    }
    out!(
        "    {:<7} {:<8} {:>5} {:>4} {:>8} {:>9} {:>8}",
        "vector",
        "role",
        "gsi",
        "cpu",
        "sent",
        "received",
        "dropped"
    );
    for v in &d.vectors {
        let role = match v.queue {
            Some(q) => format!("queue {q}"),
            None => v.role.to_string(),
        };
        out!(
            "    {:<7} {:<8} {:>5} {:>4} {:>8} {:>9} {:>8}",
            v.index,
            role,
            v.gsi,
            opt(v.cpu),
            v.sent,
            opt(v.received),
            v.dropped
        );
    }
    out!(
        "    {:<7} {:<8} {:>5} {:>4} {:>8} {:>9}",
        "legacy",
        "line",
        d.legacy.gsi,
        "-",
        d.legacy.sent,
        opt(d.legacy.received)
    );
}

/// SIGINT, SIGTERM and SIGHUP stop the VM cleanly: they are blocked in every thread and taken
/// by one thread with sigwait(2).
struct SignalWatcher {
    set: libc::sigset_t,
}

struct RunningWatcher {
    thread: std::thread::JoinHandle<()>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

impl SignalWatcher {
    /// Blocks the stop signals in this thread, and so in every thread started after it.
    fn block() -> Result<Self> {
        // SAFETY: sigemptyset/sigaddset initialise the set we own; pthread_sigmask only changes
        // this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in STOP_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            anyhow::ensure!(rc == 0, "pthread_sigmask failed: {rc}");
            set
        };
        Ok(Self { set })
    }

    /// Starts the thread that turns a stop signal into a VM stop request.
    fn watch(self, handle: VmHandle) -> RunningWatcher {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_done = done.clone();
        let set = self.set;
        let thread = std::thread::spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if thread_done.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if rc == 0 {
                tracing::info!(signal = sig, "stopping the VM");
                handle.request_stop();
            }
        });
        RunningWatcher { thread, done }
    }
}

impl RunningWatcher {
    /// Ends the watcher thread.
    fn finish(self) {
        use std::os::unix::thread::JoinHandleExt;
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        // std's raw pthread handle is an integer; musl's `pthread_t` is a pointer.
        #[allow(clippy::unnecessary_cast)]
        let thread = self.thread.as_pthread_t() as libc::pthread_t;
        // SAFETY: the thread is alive until joined below; SIGTERM is blocked there and taken by
        // its sigwait.
        unsafe { libc::pthread_kill(thread, libc::SIGTERM) };
        let _ = self.thread.join();
    }
}
