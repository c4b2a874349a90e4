//! Exec and attach through containerd's streaming server, as `kubectl exec` reaches it through
//! the API server: WebSocket with the `v4.channel.k8s.io` subprotocol. Each binary frame starts
//! with its channel (0 stdin, 1 stdout, 2 stderr, 3 the final status as a JSON `metav1.Status`,
//! 4 terminal resize). The server listens in containerd's network namespace, so the connection
//! is made from a thread that has joined it (a socket stays in the namespace it was made in).
//! SPDY, the other protocol the server speaks, has no maintained Rust client.

use std::fs::File;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;

/// What a session received.
#[derive(Debug, Default)]
pub struct Received {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The status (channel 3) once the process ended.
    pub status: Option<serde_json::Value>,
    /// The server closed the connection.
    pub closed: bool,
}

impl Received {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).to_string()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).to_string()
    }

    /// The exit code the status reports: 0 on `Success`, the `ExitCode` cause otherwise.
    pub fn exit_code(&self) -> Option<i64> {
        let status = self.status.as_ref()?;
        if status["status"] == "Success" {
            return Some(0);
        }
        status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok())
    }
}

pub struct Session {
    ws: WebSocket<TcpStream>,
    pub received: Received,
}

impl Session {
    /// Opens the URL the CRI returned (`http://127.0.0.1:PORT/exec/TOKEN`) from inside
    /// `netns`.
    pub fn open(netns: &File, url: &str) -> anyhow::Result<Session> {
        let parsed: tungstenite::http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("streaming URL {url}: {e}"))?;
        let host = parsed
            .host()
            .ok_or_else(|| anyhow::anyhow!("streaming URL {url} has no host"))?
            .to_string();
        let port = parsed.port_u16().unwrap_or(80);
        let tcp = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| anyhow::anyhow!("joining containerd's network namespace: {e}"))?;
                TcpStream::connect((host.as_str(), port))
                    .map_err(|e| anyhow::anyhow!("connecting to the streaming server {url}: {e}"))
            })
            .join()
            .expect("connecting thread")
        })?;
        tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| anyhow::anyhow!("{ws_url}: {e}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        let (ws, response) = tungstenite::client::client(request, tcp)
            .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        anyhow::ensure!(
            protocol == "v4.channel.k8s.io",
            "the streaming server chose the subprotocol {protocol:?}"
        );
        Ok(Session {
            ws,
            received: Received::default(),
        })
    }

    pub fn send_stdin(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![STDIN];
        frame.extend_from_slice(data);
        self.ws
            .send(Message::Binary(frame.into()))
            .map_err(|e| anyhow::anyhow!("sending stdin: {e}"))
    }

    /// Reads until `done` holds for what was received, the server closes, or `limit` passes.
    pub fn read_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&Received) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !done(&self.received) {
            if self.received.closed {
                anyhow::bail!(
                    "the server closed the stream first: stdout {:?}, stderr {:?}, status {:?}",
                    self.received.stdout(),
                    self.received.stderr(),
                    self.received.status
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "nothing more within {limit:?}: stdout {:?}, stderr {:?}, status {:?}",
                    self.received.stdout(),
                    self.received.stderr(),
                    self.received.status
                );
            }
            match self.ws.read() {
                Ok(Message::Binary(data)) => self.take(&data),
                Ok(Message::Text(text)) => self.take(text.as_bytes()),
                Ok(Message::Close(_)) => self.received.closed = true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.received.closed = true
                }
                Err(e) => anyhow::bail!("reading the stream: {e}"),
            }
        }
        Ok(())
    }

    /// Reads until the server ends the session (it sends the status, then closes).
    pub fn wait_end(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.read_until(limit, |r| r.closed || r.status.is_some())?;
        // The close follows the status.
        let _ = self.read_until(Duration::from_secs(2), |r| r.closed);
        Ok(())
    }

    fn take(&mut self, frame: &[u8]) {
        let Some((&channel, data)) = frame.split_first() else {
            return;
        };
        match channel {
            STDOUT => self.received.stdout.extend_from_slice(data),
            STDERR => self.received.stderr.extend_from_slice(data),
            ERROR if !data.is_empty() => {
                self.received.status =
                    Some(serde_json::from_slice(data).unwrap_or_else(
                        |_| serde_json::json!({"raw": String::from_utf8_lossy(data)}),
                    ))
            }
            _ => {}
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.read_until(Duration::from_secs(2), |r| r.closed);
    }
}
