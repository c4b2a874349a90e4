//! `pulse-ctl agent ...`: read-only queries to a guest agent.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use protobuf::MessageFull;
use pulse_protocols::devices_ttrpc::DevicesClient;
use pulse_protocols::health_ttrpc::HealthClient;
use pulse_protocols::sandbox_ttrpc::SandboxClient;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's address: unix:///PATH, vsock://CID:PORT, or
    /// hvsock://PATH:PORT (a VMM's hybrid vsock socket and the guest port).
    #[arg(long, global = true, default_value = "unix:///run/pulse-agent.sock")]
    addr: String,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    query: Query,
}

#[derive(Subcommand, Debug)]
enum Query {
    /// The virtio device and interrupt report.
    Report,
    /// Liveness: serving state, uptime, container count.
    Health,
    /// Agent and API version.
    Version,
    /// Kernel, memory, CPUs and cgroups of the guest.
    Details,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let client = crate::connect::connect(&args.addr, timeout).await?;
    let ctx = || crate::connect::deadline(timeout);
    // A query: the client of its service, its call (every request is empty) and the call's name.
    macro_rules! ask {
        ($client:ident.$call:ident, $name:literal) => {
            to_json(
                &$client::new(client)
                    .$call(ctx(), &Default::default())
                    .await
                    .context($name)?,
            )?
        };
    }
    let json = match args.query {
        Query::Report => ask!(DevicesClient.get_device_report, "GetDeviceReport"),
        Query::Health => ask!(HealthClient.check, "Health.Check"),
        Query::Version => ask!(HealthClient.version, "Health.Version"),
        Query::Details => ask!(SandboxClient.get_guest_details, "Sandbox.GetGuestDetails"),
    };
    println!("{json}");
    Ok(())
}

/// The message in protobuf's JSON mapping (every field, enums by name),
/// pretty-printed.
fn to_json<M: MessageFull>(message: &M) -> Result<String> {
    let options = protobuf_json_mapping::PrintOptions {
        always_output_default_values: true,
        ..Default::default()
    };
    let compact = protobuf_json_mapping::print_to_string_with_options(message, &options)
        .context("encoding the answer as JSON")?;
    let value: serde_json::Value = serde_json::from_str(&compact)?;
    Ok(serde_json::to_string_pretty(&value)?)
}
