//! QEMU's machine protocol (QMP) on its unix socket: JSON lines, one command
//! at a time. QEMU creates the socket before it listens on it, so the first
//! connection is retried until the agent deadline (see [`connect_until`]).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::HypervisorError;

/// Pause between connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What a QMP exchange can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The first message was no greeting.
    #[error("not a QMP greeting: {0}")]
    NotGreeting(Value),
    /// QEMU hung up.
    #[error("QMP connection closed")]
    Closed,
    /// A line that is no JSON.
    #[error("bad QMP message {line:?}: {source}")]
    BadMessage {
        /// The line.
        line: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// QEMU answered a command with an error.
    #[error("QMP {command}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's description.
        desc: String,
    },
    /// Reading or writing the socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> QmpError {
    let context = context.into();
    move |source| QmpError::Io { context, source }
}

/// Connects to QMP at `path`, retrying while the socket is missing or refuses
/// connections, until `deadline` passes or `exited` (asked between attempts)
/// says QEMU is gone. The error names the socket and what was last seen.
pub async fn connect_until(
    path: &Path,
    deadline: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<Qmp, HypervisorError> {
    let started = Instant::now();
    loop {
        let last = match UnixStream::connect(path).await {
            Ok(stream) => return Ok(Qmp::negotiate(stream).await?),
            Err(e) => e,
        };
        if let Some(reason) = exited() {
            return Err(HypervisorError::StoppedBeforeQmp {
                socket: path.to_path_buf(),
                reason,
            });
        }
        if started.elapsed() >= deadline {
            return Err(HypervisorError::QmpUnreachable {
                socket: path.to_path_buf(),
                after: deadline,
                source: last,
            });
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// A QMP connection: JSON lines, one command at a time.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    /// Reads the greeting on a connected stream and leaves capability negotiation.
    async fn negotiate(stream: UnixStream) -> Result<Qmp, QmpError> {
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::NotGreeting(greeting));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(io("reading from QMP"))?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|source| QmpError::BadMessage { line, source })
    }

    /// Runs one command; returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .await
            .map_err(io(format!("sending QMP {command}")))?;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                tracing::debug!(%message, "QMP event");
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(QmpError::Refused {
                    command: command.into(),
                    desc: error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("failed")
                        .into(),
                });
            }
            return Ok(message.get("return").cloned().unwrap_or(Value::Null));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn qmp_client_negotiates_and_skips_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let mut qemu = Peer::accept(&listener).await;
            qemu.say(r#"{"QMP": {"version": {}, "capabilities": []}}"#)
                .await;
            assert!(qemu.heard().await.contains("qmp_capabilities"));
            qemu.say(r#"{"return": {}}"#).await;
            let resize: Value = serde_json::from_str(&qemu.heard().await).unwrap();
            assert_eq!(resize["arguments"]["size"], 4096);
            qemu.say("{\"event\": \"X\"}\n{\"return\": {}}").await;
            assert!(qemu.heard().await.contains("nope"));
            qemu.say(r#"{"error": {"class": "GenericError", "desc": "no such"}}"#)
                .await;
        });
        let mut qmp = connect_until(&path, Duration::from_secs(5), || None)
            .await
            .unwrap();
        qmp.execute("block_resize", json!({"device": "slot0", "size": 4096}))
            .await
            .unwrap();
        let err = qmp.execute("nope", json!({})).await.unwrap_err();
        assert!(err.to_string().contains("no such"), "{err}");
        server.await.unwrap();
    }

    /// QEMU's side of one QMP connection, a line at a time.
    struct Peer {
        lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
        write: tokio::net::unix::OwnedWriteHalf,
    }

    impl Peer {
        async fn accept(listener: &tokio::net::UnixListener) -> Self {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, write) = stream.into_split();
            let lines = BufReader::new(read).lines();
            Self { lines, write }
        }

        /// Sends `text` and its newline.
        async fn say(&mut self, text: &str) {
            self.write
                .write_all(format!("{text}\n").as_bytes())
                .await
                .unwrap();
        }

        /// The client's next line.
        async fn heard(&mut self) -> String {
            self.lines.next_line().await.unwrap().unwrap()
        }
    }

    /// Serves one QMP client on `listener`: the greeting and the capabilities answer.
    async fn serve_greeting(listener: tokio::net::UnixListener) {
        let mut qemu = Peer::accept(&listener).await;
        qemu.say(r#"{"QMP": {}}"#).await;
        assert!(qemu.heard().await.contains("qmp_capabilities"));
        qemu.say(r#"{"return": {}}"#).await;
    }

    #[tokio::test]
    async fn a_socket_that_listens_late_is_waited_for() {
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let late = path.clone();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // As QEMU: the socket file exists before it listens (connect: ECONNREFUSED).
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            socket::bind(fd.as_raw_fd(), &UnixAddr::new(&late).unwrap()).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            socket::listen(&fd, Backlog::new(8).unwrap()).unwrap();
            let std_listener = std::os::unix::net::UnixListener::from(fd);
            std_listener.set_nonblocking(true).unwrap();
            serve_greeting(tokio::net::UnixListener::from_std(std_listener).unwrap()).await;
        });
        let started = Instant::now();
        connect_until(&path, Duration::from_secs(10), || None)
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_error_names_the_socket_and_the_deadline_or_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let err = connect_until(&path, Duration::from_millis(200), || None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("qmp.sock")
                && err.contains("within 200ms")
                && err.contains("No such file"),
            "{err}"
        );
        let err = connect_until(&path, Duration::from_secs(10), || {
            Some("qemu exited (exit status: 1)".into())
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("qmp.sock") && err.contains("qemu exited"),
            "{err}"
        );
    }
}
