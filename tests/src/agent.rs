//! ttrpc clients for a guest's agent, and the few calls the tests make.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pulse_protocols::containers::*;
use pulse_protocols::containers_ttrpc::ContainersClient;
use pulse_protocols::devices::{DeviceReport, DeviceReportRequest};
use pulse_protocols::devices_ttrpc::DevicesClient;
use pulse_protocols::health::{CheckRequest, CheckResponse, ServingState, VersionRequest};
use pulse_protocols::health_ttrpc::HealthClient;
use pulse_protocols::sandbox::{GuestDetails, GuestDetailsRequest};
use pulse_protocols::sandbox_ttrpc::SandboxClient;
use ttrpc::context;

use crate::connect::deadline;

/// Every request's deadline. Generous: the guest runs under an emulator.
pub fn ctx() -> context::Context {
    deadline(Duration::from_secs(60))
}

/// The deadline of calls that wait on the container (its output, its exit): they answer only
/// when it writes or ends, and a quiet workload under two levels of emulation (the nested rig)
/// can take minutes. A hang still ends here, as a failure.
pub fn wait_ctx() -> context::Context {
    deadline(Duration::from_secs(600))
}

/// The agent's services over one connection.
#[derive(Clone)]
pub struct Agent {
    pub health: HealthClient,
    pub sandbox: SandboxClient,
    pub containers: ContainersClient,
    pub devices: DevicesClient,
}

impl Agent {
    /// Connects to `addr` (`hvsock://PATH:PORT`, `unix://PATH`, ...) with
    /// pulse-ctl's connection code.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Agent> {
        let client = crate::connect::connect(addr, timeout).await?;
        Ok(Agent {
            health: HealthClient::new(client.clone()),
            sandbox: SandboxClient::new(client.clone()),
            containers: ContainersClient::new(client.clone()),
            devices: DevicesClient::new(client),
        })
    }

    /// The health check; an error unless the agent is serving.
    pub async fn check(&self) -> Result<CheckResponse> {
        let resp = self
            .health
            .check(short_ctx(), &CheckRequest::default())
            .await
            .context("health check")?;
        if resp.state.enum_value_or_default() != ServingState::SERVING_STATE_SERVING {
            bail!("agent is not serving: {:?}", resp.state);
        }
        Ok(resp)
    }

    /// Whether the agent runs as the guest's PID 1.
    pub async fn init_mode(&self) -> Result<bool> {
        Ok(self
            .health
            .version(ctx(), &VersionRequest::default())
            .await
            .context("version")?
            .init_mode)
    }

    pub async fn guest_details(&self) -> Result<GuestDetails> {
        self.sandbox
            .get_guest_details(ctx(), &GuestDetailsRequest::default())
            .await
            .context("guest details")
    }

    pub async fn device_report(&self) -> Result<DeviceReport> {
        self.devices
            .get_device_report(ctx(), &DeviceReportRequest::default())
            .await
            .context("device report")
    }

    pub async fn create(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        storages: Vec<Storage>,
    ) -> Result<u32> {
        let req = CreateContainerRequest {
            container_id: id.to_string(),
            oci_spec_json: spec_json,
            storages,
            ..Default::default()
        };
        Ok(self
            .containers
            .create_container(ctx(), &req)
            .await
            .with_context(|| format!("creating container {id}"))?
            .pid)
    }

    pub async fn start(&self, id: &str) -> Result<u32> {
        let req = StartContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        Ok(self
            .containers
            .start_container(ctx(), &req)
            .await
            .with_context(|| format!("starting container {id}"))?
            .pid)
    }

    /// Reads the container's stdout or stderr to its end.
    pub async fn read_all(&self, id: &str, stderr: bool) -> Result<String> {
        let mut out = Vec::new();
        loop {
            let req = ReadOutputRequest {
                container_id: id.to_string(),
                max_bytes: 4096,
                ..Default::default()
            };
            let resp = if stderr {
                self.containers.read_stderr(wait_ctx(), &req).await
            } else {
                self.containers.read_stdout(wait_ctx(), &req).await
            }
            .with_context(|| format!("reading the output of {id}"))?;
            if resp.eof {
                break;
            }
            out.extend_from_slice(&resp.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Waits for the container's init process; returns its exit status.
    pub async fn wait(&self, id: &str) -> Result<i32> {
        let req = WaitProcessRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        Ok(self
            .containers
            .wait_process(wait_ctx(), &req)
            .await
            .with_context(|| format!("waiting for {id}"))?
            .exit_status)
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
            force: true,
            ..Default::default()
        };
        self.containers
            .remove_container(ctx(), &req)
            .await
            .with_context(|| format!("removing {id}"))?;
        Ok(())
    }
}

/// For the health check while waiting for the guest: fail fast, retry.
fn short_ctx() -> context::Context {
    deadline(Duration::from_secs(3))
}
