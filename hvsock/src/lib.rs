//! The client side of the hybrid vsock, as Firecracker defines it and Pulse's VMM and
//! vhost-device-vsock serve it: connect to the VM's unix socket, send `CONNECT <port>\n`, read
//! `OK <host port>\n`; from then on the stream is the guest listener's. Anything else
//! (`ERR ...`, or the socket closed) is a refusal: nothing listens on that guest port yet.
//!
//! The answer is read byte by byte, because what follows its newline already belongs to the
//! guest's protocol (ttrpc, for the agent). Used by the shim, `pulse-ctl`, the probe's host
//! peer and the tests and benches; the VMM's own server side is `pulse_vmm::devices::vsock`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest answer line accepted ("OK 4294967295" is 13 bytes).
pub const MAX_REPLY: usize = 64;

/// Why a handshake did not give a stream.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The VM's socket could not be reached.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The VMM closed the connection without an answer.
    #[error("CONNECT {port}: the VMM closed the connection without an answer (nothing listens on the guest port yet)")]
    Closed {
        /// The guest port.
        port: u32,
    },
    /// The VMM answered something other than `OK <port>`.
    #[error("CONNECT {port} refused: {reply:?}")]
    Refused {
        /// The guest port.
        port: u32,
        /// The answer, without its newline.
        reply: String,
    },
    /// The answer went on past [`MAX_REPLY`] bytes.
    #[error("CONNECT {port}: answer longer than {MAX_REPLY} bytes")]
    TooLong {
        /// The guest port.
        port: u32,
    },
    /// No answer within the time allowed.
    #[error("CONNECT {port}: no answer within {after:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The time allowed.
        after: Duration,
    },
    /// Reading or writing the socket failed.
    #[error("CONNECT {port}: {source}")]
    Io {
        /// The guest port.
        port: u32,
        /// Why.
        source: io::Error,
    },
}

impl HandshakeError {
    /// Whether trying again later may succeed (the guest's listener is not up yet), as opposed
    /// to a socket that is not there or an answer no VMM gives.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Closed { .. } | Self::Refused { .. } | Self::Timeout { .. } | Self::Io { .. }
        ) || matches!(self, Self::Connect { source, .. }
            if source.kind() == io::ErrorKind::ConnectionRefused)
    }
}

/// The request line for guest port `port`.
pub fn request(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Checks an answer line (without its newline): the host port of `OK <host port>`.
pub fn check_reply(port: u32, reply: &[u8]) -> Result<u32, HandshakeError> {
    let text = String::from_utf8_lossy(reply);
    text.strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| HandshakeError::Refused {
            port,
            reply: text.into_owned(),
        })
}

/// Adds one answer byte to `line`; `Some` once the line is complete (its newline read).
fn push_reply_byte(port: u32, line: &mut Vec<u8>, byte: u8) -> Option<Result<u32, HandshakeError>> {
    if byte == b'\n' {
        return Some(check_reply(port, line));
    }
    line.push(byte);
    (line.len() > MAX_REPLY).then_some(Err(HandshakeError::TooLong { port }))
}

/// Reads the answer line from `stream` (blocking) and checks it: the host port.
pub fn read_reply(port: u32, stream: &mut impl Read) -> Result<u32, HandshakeError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) if line.is_empty() => return Err(HandshakeError::Closed { port }),
            Ok(0) => {
                return Err(HandshakeError::Refused {
                    port,
                    reply: String::from_utf8_lossy(&line).into_owned(),
                })
            }
            Ok(_) => {
                if let Some(done) = push_reply_byte(port, &mut line, byte[0]) {
                    return done;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HandshakeError::Timeout {
                    port,
                    after: Duration::ZERO,
                })
            }
            Err(source) => return Err(HandshakeError::Io { port, source }),
        }
    }
}

/// One handshake on a blocking socket; `timeout` bounds the wait for the answer (`None`: no
/// limit) and is cleared again on the returned stream. A VMM that refuses may close before the
/// request is written: its answer, when there is one, is what counts.
pub fn connect(
    path: &Path,
    port: u32,
    timeout: Option<Duration>,
) -> Result<UnixStream, HandshakeError> {
    let mut stream = UnixStream::connect(path).map_err(|source| HandshakeError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io_err = |source| HandshakeError::Io { port, source };
    stream.set_read_timeout(timeout).map_err(io_err)?;
    let written = stream.write_all(request(port).as_bytes());
    let reply = read_reply(port, &mut stream).map_err(|e| match e {
        HandshakeError::Timeout { port, .. } => HandshakeError::Timeout {
            port,
            after: timeout.unwrap_or_default(),
        },
        other => other,
    });
    match (written, reply) {
        (_, Ok(_)) => {
            stream.set_read_timeout(None).map_err(io_err)?;
            Ok(stream)
        }
        (Err(source), Err(HandshakeError::Closed { .. })) => {
            Err(HandshakeError::Io { port, source })
        }
        (_, Err(e)) => Err(e),
    }
}

/// One handshake on tokio's socket (bound it with `tokio::time::timeout`).
#[cfg(feature = "tokio")]
pub async fn connect_async(
    path: &Path,
    port: u32,
) -> Result<tokio::net::UnixStream, HandshakeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| HandshakeError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let written = stream.write_all(request(port).as_bytes()).await;
    let mut line = Vec::new();
    let reply = loop {
        match stream.read_u8().await {
            Ok(byte) => {
                if let Some(done) = push_reply_byte(port, &mut line, byte) {
                    break done;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && line.is_empty() => {
                break Err(HandshakeError::Closed { port })
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Err(HandshakeError::Refused {
                    port,
                    reply: String::from_utf8_lossy(&line).into_owned(),
                })
            }
            Err(source) => break Err(HandshakeError::Io { port, source }),
        }
    };
    match (written, reply) {
        (_, Ok(_)) => Ok(stream),
        (Err(source), Err(HandshakeError::Closed { .. })) => {
            Err(HandshakeError::Io { port, source })
        }
        (_, Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A VMM stand-in: answers each connection's request line with `answer` (None: closes),
    /// then writes `after`.
    fn vmm(answer: Option<&'static str>, after: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 1024");
                if let Some(answer) = answer {
                    s.write_all(answer.as_bytes()).unwrap();
                    let _ = s.write_all(after);
                }
            }
        });
        (dir, path)
    }

    #[test]
    fn ok_gives_the_stream_positioned_after_the_answer() {
        let (_dir, path) = vmm(Some("OK 1073741824\n"), b"ttrpc bytes");
        let mut s = connect(&path, 1024, Some(Duration::from_secs(5))).unwrap();
        let mut rest = [0u8; 11];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"ttrpc bytes");
    }

    #[test]
    fn refusals_and_odd_answers_are_named() {
        let (_d1, refused) = vmm(Some("ERR no listener\n"), b"");
        let err = connect(&refused, 1024, None).unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "CONNECT 1024 refused: \"ERR no listener\"");
        let (_d2, closed) = vmm(None, b"");
        let err = connect(&closed, 1024, None).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Closed { port: 1024 }),
            "{err}"
        );
        let (_d3, long) = vmm(
            Some("OK 12345678901234567890123456789012345678901234567890123456789012345\n"),
            b"",
        );
        let err = connect(&long, 1024, None).unwrap_err();
        assert!(matches!(err, HandshakeError::TooLong { .. }), "{err}");
        let err = connect(Path::new("/nonexistent/v.sock"), 1024, None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/v.sock"), "{err}");
        assert!(!err.is_retryable());
        assert!(check_reply(1, b"OK x").is_err());
        assert_eq!(check_reply(1, b"OK 7").unwrap(), 7);
    }

    #[test]
    fn a_silent_vmm_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = connect(&path, 1024, Some(Duration::from_millis(50))).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Timeout { port: 1024, after } if after == Duration::from_millis(50)),
            "{err}"
        );
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn the_async_handshake_says_the_same() {
        let (_d1, ok) = vmm(Some("OK 5\n"), b"x");
        let mut s = connect_async(&ok, 1024).await.unwrap();
        use tokio::io::AsyncReadExt;
        assert_eq!(s.read_u8().await.unwrap(), b'x');
        let (_d2, refused) = vmm(Some("ERR nope\n"), b"");
        let err = connect_async(&refused, 1024).await.unwrap_err();
        assert_eq!(err.to_string(), "CONNECT 1024 refused: \"ERR nope\"");
        let (_d3, closed) = vmm(None, b"");
        let err = connect_async(&closed, 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Closed { .. }), "{err}");
    }
}
