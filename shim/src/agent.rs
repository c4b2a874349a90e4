//! The connection to the guest agent: hybrid vsock (the VMM's unix socket,
//! `CONNECT <port>\n`, answer `OK <host port>\n`), then ttrpc on the stream.
//!
//! A CONNECT before the guest's agent listens is normal while the guest
//! boots (the VMM closes the connection or refuses it): [`connect`] retries
//! until its deadline and also stops early when the VM itself is gone.

use std::path::Path;
use std::time::{Duration, Instant};

use pulse_protocols::{
    containers_ttrpc::ContainersClient, devices, devices_ttrpc::DevicesClient, health,
    health_ttrpc::HealthClient, sandbox_ttrpc::SandboxClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::context::{self, Context};
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

use crate::hypervisor::Hypervisor;

/// The longest handshake answer accepted.
const MAX_REPLY: usize = 64;
/// One CONNECT attempt, handshake and health check included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The deadline passed.
    #[error("the guest agent did not answer on {socket} (vsock port {port}) within {after:?}; last error: {last}")]
    Timeout {
        /// The hybrid-vsock socket.
        socket: String,
        /// The guest port.
        port: u32,
        /// The deadline.
        after: Duration,
        /// What the last attempt saw.
        last: String,
    },
    /// The VM stopped while the shim waited for it.
    #[error("the VM stopped before its agent answered: {0}")]
    VmExited(String),
    /// The backend has no agent socket.
    #[error("{0}")]
    NoSocket(String),
}

/// One CONNECT/OK exchange; returns the stream positioned after the answer.
pub async fn handshake(path: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(path).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Byte by byte: what follows the newline belongs to ttrpc.
    let mut reply = Vec::new();
    loop {
        let byte = stream.read_u8().await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                "the VMM closed the connection (guest not listening yet)",
            )
        })?;
        if byte == b'\n' {
            break;
        }
        reply.push(byte);
        if reply.len() > MAX_REPLY {
            return Err(std::io::Error::other("handshake answer too long"));
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    if !reply.starts_with("OK ") {
        return Err(std::io::Error::other(format!(
            "CONNECT {port} refused: {reply:?}"
        )));
    }
    Ok(stream)
}

/// A connected agent.
#[derive(Clone)]
pub struct Agent {
    client: Client,
    timeout: Duration,
}

impl Agent {
    /// Wraps a ttrpc client; `timeout` bounds each non-blocking request.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// A context with the request deadline.
    pub fn ctx(&self) -> Context {
        context::with_timeout(self.timeout.as_nanos() as i64)
    }

    /// A context without a deadline, for requests that wait (process exits, output).
    pub fn waiting_ctx(&self) -> Context {
        context::Context::default()
    }

    /// `Containers`.
    pub fn containers(&self) -> ContainersClient {
        ContainersClient::new(self.client.clone())
    }

    /// `Sandbox`.
    pub fn sandbox(&self) -> SandboxClient {
        SandboxClient::new(self.client.clone())
    }

    /// `Devices`.
    pub fn devices(&self) -> DevicesClient {
        DevicesClient::new(self.client.clone())
    }

    /// `Health`.
    pub fn health(&self) -> HealthClient {
        HealthClient::new(self.client.clone())
    }

    /// The guest's device report.
    pub async fn device_report(&self) -> Result<devices::DeviceReport, ttrpc::Error> {
        self.devices()
            .get_device_report(self.ctx(), &devices::DeviceReportRequest::new())
            .await
    }
}

async fn attempt(socket: &Path, port: u32, timeout: Duration) -> Result<Agent, String> {
    let stream = handshake(socket, port).await.map_err(|e| e.to_string())?;
    let agent = Agent::new(Client::new(Socket::from(stream)), timeout);
    let health = agent
        .health()
        .check(
            context::with_timeout(ATTEMPT_TIMEOUT.as_nanos() as i64),
            &health::CheckRequest::new(),
        )
        .await
        .map_err(|e| format!("health check: {e}"))?;
    if health.state.enum_value_or_default() != health::ServingState::SERVING_STATE_SERVING {
        return Err(format!("agent state {:?}", health.state));
    }
    Ok(agent)
}

/// Connects to the agent of `vm`, retrying until `deadline` passes.
pub async fn connect(
    vm: &mut dyn Hypervisor,
    port: u32,
    deadline: Duration,
    request_timeout: Duration,
) -> Result<Agent, ConnectError> {
    let socket = vm
        .agent_socket()
        .map_err(|e| ConnectError::NoSocket(e.to_string()))?;
    let started = Instant::now();
    let mut last;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(&socket, port, request_timeout)).await {
            Ok(Ok(agent)) => {
                tracing::info!(
                    attempts,
                    ms = started.elapsed().as_millis() as u64,
                    "guest agent connected"
                );
                return Ok(agent);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        }
        if let Some(reason) = vm.exited() {
            return Err(ConnectError::VmExited(reason));
        }
        if started.elapsed() >= deadline {
            return Err(ConnectError::Timeout {
                socket: socket.display().to_string(),
                port,
                after: deadline,
                last,
            });
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn handshake_accepts_ok_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for answer in [&b"OK 1073741824\nrest"[..], b"", b"NO\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 13];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"CONNECT 1024\n");
                s.write_all(answer).await.unwrap();
            }
        });
        let mut stream = handshake(&path, 1024).await.unwrap();
        let mut rest = [0u8; 4];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"rest", "bytes after the answer stay in the stream");
        let closed = handshake(&path, 1024).await.unwrap_err();
        assert!(
            closed.to_string().contains("guest not listening"),
            "{closed}"
        );
        let refused = handshake(&path, 1024).await.unwrap_err();
        assert!(refused.to_string().contains("refused"), "{refused}");
        server.await.unwrap();
    }
}
