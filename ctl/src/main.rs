//! `pulse-ctl`: host-side commands for Pulse.
//!
//! `pulse-ctl agent report --addr unix:///tmp/a.sock` prints the guest
//! agent's device report as JSON; `agent health`, `agent version` and
//! `agent details` print the other read-only answers. `pulse-ctl status POD`
//! prints a running pod's device report (VMM and guest views, metrics) from its
//! shim; `pulse-ctl check` says whether this host can run Pulse.

mod agent;
mod check;
mod connect;
mod status;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pulse-ctl", version, about = "Pulse host-side client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Talk to a guest agent.
    Agent(agent::AgentArgs),
    /// A running pod's devices: what the VMM configured, what the guest reports, metrics.
    Status(status::StatusArgs),
    /// Whether this host can run Pulse, and why not.
    Check(check::CheckArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Agent(args) => runtime.block_on(agent::run(args)),
        Command::Status(args) => runtime.block_on(status::run(args)),
        Command::Check(args) => {
            if !check::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
