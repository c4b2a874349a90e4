//! The shim's log: tracing events into containerd's log FIFO (`log` in the
//! bundle directory, which containerd reads and forwards to its own log), or
//! stderr when there is none. The VMM's seccomp report (a forbidden system
//! call, written from a signal handler) goes to the same place. `PULSE_LOG` sets the filter; otherwise the pulse
//! config's `shim.log_level` does once it is loaded (`-debug` from containerd
//! means debug).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Handle = reload::Handle<EnvFilter, Registry>;

static HANDLE: OnceLock<Handle> = OnceLock::new();
static FROM_ENV: OnceLock<bool> = OnceLock::new();

/// Sets up the subscriber (once).
pub fn init(debug: bool) {
    let env = std::env::var("PULSE_LOG").ok().filter(|s| !s.is_empty());
    let _ = FROM_ENV.set(env.is_some());
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or(default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fifo = std::fs::OpenOptions::new().write(true).open("log").ok();
    // A VMM thread that makes a forbidden system call reports it in one line written from its
    // SIGSYS handler (no tracing there): to containerd's log too.
    if let Some(report) = fifo.as_ref().and_then(|f| f.try_clone().ok()) {
        use std::os::fd::IntoRawFd;
        pulse_vmm::confine::seccomp::set_report_fd(report.into_raw_fd());
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false);
    let result = match fifo {
        Some(file) => tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_writer(std::sync::Mutex::new(file)))
            .try_init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_ok() {
        let _ = HANDLE.set(handle);
    }
}

/// Applies the config's level unless `PULSE_LOG` was given.
pub fn set_level(level: &str) {
    if FROM_ENV.get().copied().unwrap_or(false) {
        return;
    }
    if let (Some(handle), Ok(filter)) = (HANDLE.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}
