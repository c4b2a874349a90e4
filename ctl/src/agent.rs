//! `pulse-ctl agent ...`: read-only queries to a guest agent.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use protobuf::MessageFull;
use pulse_protocols::{devices, devices_ttrpc, health, health_ttrpc, sandbox, sandbox_ttrpc};

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
    let json = match args.query {
        Query::Report => {
            let agent = devices_ttrpc::DevicesClient::new(client);
            let request = devices::DeviceReportRequest::new();
            answer(agent.get_device_report(ctx(), &request), "GetDeviceReport").await
        }
        Query::Health => {
            let agent = health_ttrpc::HealthClient::new(client);
            answer(
                agent.check(ctx(), &health::CheckRequest::new()),
                "Health.Check",
            )
            .await
        }
        Query::Version => {
            let agent = health_ttrpc::HealthClient::new(client);
            answer(
                agent.version(ctx(), &health::VersionRequest::new()),
                "Health.Version",
            )
            .await
        }
        Query::Details => {
            let agent = sandbox_ttrpc::SandboxClient::new(client);
            let request = sandbox::GuestDetailsRequest::new();
            answer(
                agent.get_guest_details(ctx(), &request),
                "Sandbox.GetGuestDetails",
            )
            .await
        }
    }?;
    println!("{json}");
    Ok(())
}

/// The answer to the call `method`, as [`to_json`] prints it.
async fn answer<M: MessageFull>(
    call: impl Future<Output = ttrpc::Result<M>>,
    method: &'static str,
) -> Result<String> {
    to_json(&call.await.context(method)?)
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
