//! The connection to the guest agent: hybrid vsock (the VMM's unix socket,
//! `CONNECT <port>\n`, answer `OK <host port>\n`), then ttrpc on the stream.
//!
//! The shim sends no CONNECT before the agent said it serves: the agent
//! connects to host port [`pulse_protocols::DEFAULT_READY_PORT`] (the unix
//! socket [`ReadyListener`] binds before the VM boots) and writes `READY
//! <port>`. A CONNECT that reaches vhost-device-vsock (the qemu backend)
//! while the guest driver is still setting the device up stops that backend
//! for good. After the announcement [`connect`] still retries until its
//! deadline, and stops early when the VM itself is gone.
//!
//! The connection knows nothing of the VMM: it gets the hybrid-vsock socket's
//! path and a callback that says whether (and why) the VM stopped. Once connected,
//! the sandbox tells it when the VM stopped ([`Agent::vm_stopped`]): a VM that died
//! under a call (a guest kernel panic) closes no socket, and without that word a
//! request would wait out its deadline and a process wait would never end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_protocols::{
    containers_ttrpc::ContainersClient, devices, devices_ttrpc::DevicesClient, health,
    health_ttrpc::HealthClient, network_ttrpc::NetworkClient, sandbox_ttrpc::SandboxClient,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::net::UnixListener;
use tokio::sync::watch;
use ttrpc::context::{self, Context};
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

/// The longest readiness line accepted.
const MAX_REPLY: usize = 64;
/// How long a CONNECT may wait for its OK before the attempt starts over.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often a wait looks whether the VM still runs.
const VM_CHECK: Duration = Duration::from_millis(100);

use pulse_protocols::deadline;

/// `d` in whole milliseconds, for logs (cut at u64::MAX).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The host end of the agent's readiness announcement.
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Binds `path`, 0600 before it listens (a stale file from an earlier VM is replaced).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            listener: crate::private_fs::bind_tokio_listener(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until one carries a readiness line and returns the
    /// port it names. A connection that says something else is dropped. Not
    /// cancel-safe: a caller that drops it after the accept loses the line.
    async fn next_announcement(&self) -> std::io::Result<u32> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            // Up to the newline or EOF; the caller's deadline bounds the wait.
            let mut line = Vec::new();
            let read = tokio::io::BufReader::new(stream)
                .take(MAX_REPLY as u64)
                .read_until(b'\n', &mut line)
                .await;
            let text = String::from_utf8_lossy(&line);
            match (&read, pulse_protocols::parse_ready_line(&text)) {
                (Ok(_), Some(port)) => return Ok(port),
                _ => tracing::warn!(
                    ?read,
                    line = %text,
                    "ignoring a connection to {} that is no readiness line",
                    self.path.display()
                ),
            }
        }
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for the agent's announcement, asking `vm_exited` every [`VM_CHECK`]
/// whether the VM stopped. Consumes the listener: its socket goes once the agent spoke.
async fn wait_ready(
    vm_exited: &mut impl FnMut() -> Option<String>,
    ready: ReadyListener,
    port: u32,
    deadline: Duration,
) -> Result<(), ConnectError> {
    let started = Instant::now();
    // One future across the checks: dropping it between its accept and the
    // line would lose the only announcement.
    let announcement = ready.next_announcement();
    tokio::pin!(announcement);
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(ConnectError::NotReady {
                socket: ready.path().display().to_string(),
                port: pulse_protocols::DEFAULT_READY_PORT,
                after: deadline,
            });
        }
        tokio::select! {
            announced = &mut announcement => {
                return match announced {
                    Ok(announced) if announced == port => {
                        tracing::info!(
                            ms = millis(started.elapsed()),
                            "guest agent announced itself"
                        );
                        Ok(())
                    }
                    Ok(announced) => Err(ConnectError::WrongPort {
                        announced,
                        expected: port,
                    }),
                    Err(source) => Err(ConnectError::Accept {
                        socket: ready.path().display().to_string(),
                        source,
                    }),
                };
            }
            _ = tokio::time::sleep(left.min(VM_CHECK)) => {}
        }
        if let Some(reason) = vm_exited() {
            return Err(ConnectError::VmExited(reason));
        }
    }
}

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The agent never said it serves.
    #[error("the guest agent did not announce itself on {socket} (host vsock port {port}) within {after:?}: it did not start, or the guest has no working vsock")]
    NotReady {
        /// The readiness socket.
        socket: String,
        /// The host port it stands for.
        port: u32,
        /// The deadline.
        after: Duration,
    },
    /// The agent listens on another port than the shim's configuration says.
    #[error("the guest agent serves on vsock port {announced}, but agent.port is {expected}")]
    WrongPort {
        /// What the agent said.
        announced: u32,
        /// `agent.port`.
        expected: u32,
    },
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
    /// The readiness socket failed.
    #[error("accepting on {socket}: {source}")]
    Accept {
        /// The readiness socket.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A connected agent.
#[derive(Clone)]
pub struct Agent {
    client: Client,
    timeout: Duration,
    /// Why the VM stopped, once it has (shared by every clone).
    vm_stop: Arc<watch::Sender<Option<String>>>,
}

impl Agent {
    /// Wraps a ttrpc client; `timeout` bounds each non-blocking request.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            vm_stop: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Says that the VM stopped, and why: the calls waiting on the guest end with it, and
    /// so do later ones. The first reason given stays.
    pub fn vm_stopped(&self, why: String) {
        self.vm_stop.send_if_modified(|stop| {
            let first = stop.is_none();
            if first {
                *stop = Some(why);
            }
            first
        });
    }

    /// Resolves with the reason once [`Self::vm_stopped`] was said; a call races it.
    pub async fn until_vm_stopped(&self) -> String {
        let mut stop = self.vm_stop.subscribe();
        let why = match stop.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            // The sender lives in `self`: it cannot be gone while this runs.
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// A context with the request deadline.
    pub fn ctx(&self) -> Context {
        deadline(self.timeout)
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

    /// `Network`.
    pub fn network(&self) -> NetworkClient {
        NetworkClient::new(self.client.clone())
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

/// One attempt: the CONNECT/OK handshake within [`HANDSHAKE_TIMEOUT`], then a
/// health check within `health_timeout`. Once OK came the agent listens, so a slow
/// answer (a loaded TCG guest) is waited for instead of starting over.
async fn attempt(
    socket: &Path,
    port: u32,
    health_timeout: Duration,
    request_timeout: Duration,
) -> Result<Agent, String> {
    let stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, pulse_hvsock::connect_async(socket, port))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "CONNECT {port} sent, no OK within {HANDSHAKE_TIMEOUT:?}"
                ))
            }
        };
    let agent = Agent::new(Client::new(Socket::from(stream)), request_timeout);
    let health = agent
        .health()
        .check(deadline(health_timeout), &health::CheckRequest::new())
        .await
        .map_err(|e| format!("connected, but the health check failed: {e}"))?;
    if health.state.enum_value_or_default() != health::ServingState::SERVING_STATE_SERVING {
        return Err(format!("agent state {:?}", health.state));
    }
    Ok(agent)
}

/// Connects to the agent behind the hybrid-vsock `socket` once it announced itself on
/// `ready`, retrying until `deadline` (counted from the call) passes; stops early once
/// `vm_exited` names why the VM stopped.
pub async fn connect(
    socket: &Path,
    ready: ReadyListener,
    mut vm_exited: impl FnMut() -> Option<String>,
    port: u32,
    deadline: Duration,
    request_timeout: Duration,
) -> Result<Agent, ConnectError> {
    let started = Instant::now();
    wait_ready(&mut vm_exited, ready, port, deadline).await?;
    let mut last;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // The health check may not outlast the deadline (but gets a fair try).
        let left = deadline.saturating_sub(started.elapsed());
        let health_timeout = request_timeout.min(left.max(HANDSHAKE_TIMEOUT));
        match attempt(socket, port, health_timeout, request_timeout).await {
            Ok(agent) => {
                tracing::info!(
                    attempts,
                    ms = millis(started.elapsed()),
                    "guest agent connected"
                );
                return Ok(agent);
            }
            Err(e) => last = e,
        }
        if let Some(reason) = vm_exited() {
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
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    #[tokio::test]
    async fn the_ready_listener_takes_only_a_readiness_line_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock_1023");
        std::fs::write(&path, b"stale").unwrap();
        let ready = ReadyListener::bind(&path).unwrap();
        let client = path.clone();
        let guest = tokio::spawn(async move {
            for line in [&b"hello\n"[..], b"READY 1024\n"] {
                let mut s = UnixStream::connect(&client).await.unwrap();
                s.write_all(line).await.unwrap();
            }
        });
        assert_eq!(ready.next_announcement().await.unwrap(), 1024);
        guest.await.unwrap();
        drop(ready);
        assert!(!path.exists(), "the socket goes with the listener");
    }

    /// A VM that never stops.
    fn running() -> impl FnMut() -> Option<String> {
        || None
    }

    /// A VM that stops once `after` has passed.
    fn dying(after: Duration) -> impl FnMut() -> Option<String> {
        let started = Instant::now();
        move || (started.elapsed() >= after).then(|| "the fake VM ended".to_string())
    }

    /// Connects to `path` and writes `line` only after `delay`.
    fn slow_guest(
        path: PathBuf,
        delay: Duration,
        line: &'static [u8],
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.unwrap();
            tokio::time::sleep(delay).await;
            s.write_all(line).await.unwrap();
        })
    }

    #[tokio::test]
    async fn a_line_that_comes_after_several_vm_checks_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock_1023");
        let ready = ReadyListener::bind(&path).unwrap();
        // Connected at once, the line only after three VM checks.
        let guest = slow_guest(path.clone(), VM_CHECK * 3 + VM_CHECK / 2, b"READY 1024\n");
        wait_ready(&mut running(), ready, 1024, Duration::from_secs(10))
            .await
            .unwrap();
        guest.await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_wrong_port_a_silent_guest_and_a_dead_vm_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock_1023");

        let ready = ReadyListener::bind(&path).unwrap();
        let guest = slow_guest(path.clone(), Duration::ZERO, b"READY 2000\n");
        let err = wait_ready(&mut running(), ready, 1024, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConnectError::WrongPort {
                    announced: 2000,
                    expected: 1024
                }
            ),
            "{err}"
        );
        let _ = guest.await;

        let ready = ReadyListener::bind(&path).unwrap();
        let err = wait_ready(&mut running(), ready, 1024, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not announce itself"), "{err}");
        assert!(err.to_string().contains("vm.vsock_1023"), "{err}");

        let ready = ReadyListener::bind(&path).unwrap();
        let err = wait_ready(
            &mut dying(Duration::from_millis(150)),
            ready,
            1024,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ConnectError::VmExited(_)), "{err}");
    }
}
