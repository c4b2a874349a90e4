//! `pulse-agent`: the guest agent binary (also the initramfs's `/init`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use pulse_agent::container::{make_cwd_hook_main, Manager, RuntimeConfig, MAKE_CWD_SUBCOMMAND};
use pulse_agent::helper::{helper_main, HELPER_SUBCOMMAND};
use pulse_agent::init::{self, ShutdownAction};
use pulse_agent::listen::ListenAddr;
use pulse_agent::reaper::Reaper;
use pulse_agent::service::Agent;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(name = "pulse-agent", version, about = "Pulse guest agent")]
struct Cli {
    /// Where to serve the API: vsock://PORT, vsock://CID:PORT or unix:///PATH.
    /// As PID 1 it comes from the kernel command line's PULSE_AGENT_LISTEN=.
    #[arg(long, env = "PULSE_AGENT_LISTEN", default_value = "vsock://1024")]
    listen: String,
    /// Once serving on vsock, connect to this host vsock port (CID 2) and
    /// write `READY <port>`: the host waits for it before connecting.
    /// As PID 1 it comes from PULSE_AGENT_READY_PORT= on the kernel command line.
    #[arg(long, env = "PULSE_AGENT_READY_PORT")]
    ready_port: Option<u32>,
    /// State directory (bundles, runtime state, console sockets).
    #[arg(long, default_value = "/run/pulse-agent")]
    state_dir: PathBuf,
    /// Parent cgroup for containers whose spec sets no cgroupsPath.
    #[arg(long, default_value = "/pulse")]
    cgroup_parent: String,
    /// Root under which /proc and /sys are read for the device report.
    #[arg(long, default_value = "/")]
    report_root: PathBuf,
    /// As PID 1: what ends the guest once the sandbox is destroyed.
    #[arg(long, value_enum, default_value_t = ShutdownAction::Poweroff)]
    on_destroy: ShutdownAction,
    /// As PID 1: the hostname to set at boot.
    #[arg(long, default_value = "pulse")]
    hostname: String,
    /// Log filter (tracing's env-filter syntax); PULSE_AGENT_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    // The helper must run before anything starts a thread.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == HELPER_SUBCOMMAND)
    {
        return ExitCode::from(u8::try_from(helper_main()).unwrap_or(1));
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == MAKE_CWD_SUBCOMMAND)
    {
        return ExitCode::from(u8::try_from(make_cwd_hook_main()).unwrap_or(1));
    }
    let init_mode = nix::unistd::getpid().as_raw() == 1;
    // As PID 1 the kernel passes its own arguments; ignore what clap cannot use.
    let cli = if init_mode {
        // The settings come as environment variables then (see the fields).
        Cli::try_parse().unwrap_or_else(|e| {
            eprintln!("pulse-agent: ignoring the kernel's arguments for init: {e}");
            Cli::parse_from(["pulse-agent"])
        })
    } else {
        Cli::parse()
    };
    let filter = std::env::var("PULSE_AGENT_LOG").unwrap_or_else(|_| cli.log.clone());
    // Colours only for a terminal: as PID 1 stderr is the serial console, read from a log.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && !init_mode)
        .init();

    let result = run(cli, init_mode);
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    if init_mode {
        // PID 1 must never exit: end the guest instead.
        let action = result.unwrap_or(ShutdownAction::Poweroff);
        let err = init::shutdown(action);
        tracing::error!("shutdown failed: {err}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn run(cli: Cli, init_mode: bool) -> Result<ShutdownAction> {
    if init_mode {
        // Containers cannot pivot_root out of the initramfs: move off it first.
        if let Err(e) = init::leave_initramfs() {
            tracing::warn!("staying on the initramfs, containers will fail: {e}");
        }
        init::setup_guest().context("setting up the guest as PID 1")?;
        nix::unistd::sethostname(&cli.hostname).context("setting the hostname")?;
    }
    let addr = ListenAddr::parse(&cli.listen).map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(cli, addr, init_mode))
}

async fn serve(cli: Cli, addr: ListenAddr, init_mode: bool) -> Result<ShutdownAction> {
    let reaper = Reaper::new();
    reaper.spawn().context("installing the SIGCHLD handler")?;
    let manager = Manager::new(
        RuntimeConfig {
            state_dir: cli.state_dir.clone(),
            cgroup_parent: cli.cgroup_parent.clone(),
            sys_root: cli.report_root.join("sys"),
        },
        reaper,
    )
    .with_context(|| format!("creating the state directory {}", cli.state_dir.display()))?;
    let agent = Arc::new(Agent {
        manager,
        started: Instant::now(),
        init_mode,
        stopping: AtomicBool::new(false),
        sandbox_id: Default::default(),
        report_root: cli.report_root.clone(),
        power_off: Default::default(),
    });

    let mut server = pulse_agent::server::start(&addr, Arc::clone(&agent))
        .await
        .context("starting the API server")?;
    tracing::info!(listen = %cli.listen, init_mode, "pulse-agent serving");
    match (cli.ready_port, &addr) {
        (Some(ready), ListenAddr::Vsock { port, .. }) => {
            let port = *port;
            tokio::task::spawn_blocking(move || pulse_agent::ready::announce(ready, port));
        }
        (Some(_), ListenAddr::Unix(_)) => {
            tracing::warn!("--ready-port is for vsock only: not announcing");
        }
        (None, _) => {}
    }

    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = agent.power_off.notified() => {
            // Let the DestroySandbox reply leave before the guest goes away.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tracing::info!("sandbox destroyed: ending the guest");
        }
        _ = sigterm.recv() => tracing::info!("SIGTERM"),
        _ = sigint.recv() => tracing::info!("SIGINT"),
    }
    let removed = agent.manager.remove_all().await;
    tracing::info!(removed, "containers removed");
    server.shutdown().await.ok();
    if let ListenAddr::Unix(path) = &addr {
        let _ = std::fs::remove_file(path);
    }
    Ok(cli.on_destroy)
}
