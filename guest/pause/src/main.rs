//! `pulse-pause`: the process of a pod's sandbox ("pause") container, built as one static
//! binary (`x86_64-unknown-linux-musl`) and packaged as an image by `scripts/pause-oci.sh`
//! for the CRI tests (`shim/tests/cri/`), which run offline and so cannot pull
//! `registry.k8s.io/pause`.
//!
//! It holds the pod's namespaces open and does nothing else: it sleeps until SIGTERM or SIGINT
//! (then exits 0) and reaps every child that is reparented to it (it is PID 1 of the pod's
//! PID namespace when the pod shares one). The three signals are blocked and taken with
//! `sigwait`, so no handler runs and none is needed as PID 1 (where the kernel drops signals
//! that have no handler).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("pulse-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(sig);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("pulse-pause: blocking SIGTERM, SIGINT and SIGCHLD: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(sig) => {
                eprintln!("pulse-pause: {sig}, exiting");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("pulse-pause: sigwait: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every child that has exited (several may share one SIGCHLD).
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
