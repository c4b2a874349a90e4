//! containerd-shim-pulse-v2: see the `pulse_shim` library.

use containerd_shim::Config;

fn main() {
    // `ctr run --cni`'s network namespace holder is this binary too (network/late.rs): it
    // waits before anything else is set up, so it holds no runtime and little memory.
    pulse_shim::network::late::hold_if_asked();
    shim();
}

// One thread: the VM's helper processes get PR_SET_PDEATHSIG from the thread
// that spawned them, and this one lives as long as the shim.
#[tokio::main(flavor = "current_thread")]
async fn shim() {
    let config = Config {
        // tracing, into containerd's log FIFO (see logging.rs).
        no_setup_logger: true,
        // tokio reaps the processes it spawned; a second waitpid(-1) would steal their status.
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<pulse_shim::shim::PulseShim>(
        pulse_shim::RUNTIME_NAME,
        Some(config),
    )
    .await;
}
