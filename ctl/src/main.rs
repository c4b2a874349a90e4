//! `pulse-ctl`: host-side commands for Pulse.
//!
//! `pulse-ctl agent report --addr unix:///tmp/a.sock` prints the guest
//! agent's device report as JSON; `agent health`, `agent version` and
//! `agent details` print the other read-only answers.

mod agent;
mod connect;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Agent(args) => runtime.block_on(agent::run(args)),
    }
}
