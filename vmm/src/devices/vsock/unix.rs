//! The host side of hybrid vsock: the `CONNECT <port>\n` line a host process sends on the VMM's
//! unix socket, and the listener itself.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Longest CONNECT line accepted ("CONNECT 4294967295\n" is 19 bytes).
pub const MAX_LINE: usize = 32;

/// Why a CONNECT line was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Not `CONNECT <port>`.
    #[error("malformed request, expected 'CONNECT <port>'")]
    Malformed,
    /// No newline within [`MAX_LINE`] bytes.
    #[error("request line too long")]
    TooLong,
}

/// Parses a complete line (without its newline).
pub fn parse_connect(line: &[u8]) -> Result<u32, ConnectError> {
    let text = std::str::from_utf8(line).map_err(|_| ConnectError::Malformed)?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or(ConnectError::Malformed)?;
    port.trim().parse().map_err(|_| ConnectError::Malformed)
}

/// A host connection that has not finished its CONNECT line yet.
#[derive(Debug)]
pub struct PendingConnect {
    /// The stream.
    pub stream: UnixStream,
    buf: Vec<u8>,
    /// When it must have finished.
    pub deadline: Instant,
}

/// Progress of a pending CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum LineStatus {
    /// More bytes needed.
    Incomplete,
    /// The requested guest port.
    Port(u32),
    /// Refused.
    Refused(ConnectError),
    /// The host process went away.
    Closed,
}

impl PendingConnect {
    /// Wraps a freshly accepted stream.
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            deadline,
        }
    }

    /// Reads what is available, one byte at a time so that data after the newline stays in
    /// the socket for the guest.
    pub fn read_line(&mut self) -> LineStatus {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return LineStatus::Closed,
                Ok(_) if byte[0] == b'\n' => {
                    return match parse_connect(&self.buf) {
                        Ok(port) => LineStatus::Port(port),
                        Err(e) => LineStatus::Refused(e),
                    }
                }
                Ok(_) => {
                    self.buf.push(byte[0]);
                    if self.buf.len() > MAX_LINE {
                        return LineStatus::Refused(ConnectError::TooLong);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineStatus::Incomplete,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return LineStatus::Closed,
            }
        }
    }
}

/// Binds the hybrid-vsock socket at `path`, replacing a stale socket file nobody listens on.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        Err(e) => Err(e),
    }
}

/// Connects to the unix socket at `path` without blocking. A listener whose backlog is full
/// (one that does not accept) gives `WouldBlock` at once instead of holding the caller until
/// it accepts; the stream returned is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(UnixStream::from(fd))
}

/// The socket a guest connection to host port `port` is forwarded to: `<uds_path>_<port>`.
pub fn forward_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// A listener at `path` that never accepts and whose backlog is full: a blocking connect to
/// it waits until someone accepts (for tests). Keep the returned value alive.
#[cfg(test)]
pub(crate) fn listener_with_full_backlog(path: &Path) -> (UnixListener, Vec<UnixStream>) {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = nix::sys::socket::UnixAddr::new(path).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let mut fillers = Vec::new();
    while let Ok(s) = connect_nonblocking(path) {
        fillers.push(s);
        assert!(fillers.len() < 64, "the backlog never fills");
    }
    (UnixListener::from(fd), fillers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert_eq!(parse_connect(b"connect 1"), Err(ConnectError::Malformed));
        assert_eq!(parse_connect(b"CONNECT x"), Err(ConnectError::Malformed));
        assert_eq!(
            parse_connect(b"CONNECT 99999999999"),
            Err(ConnectError::Malformed)
        );
        assert_eq!(parse_connect(b"\xff"), Err(ConnectError::Malformed));
    }

    #[test]
    fn lines_arrive_in_pieces_and_data_after_them_stays() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingConnect::new(a, Instant::now());
        b.write_all(b"CONN").unwrap();
        assert_eq!(p.read_line(), LineStatus::Incomplete);
        b.write_all(b"ECT 7\nhello").unwrap();
        assert_eq!(p.read_line(), LineStatus::Port(7));
        let mut rest = [0u8; 5];
        p.stream.set_nonblocking(false).unwrap();
        p.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn overlong_lines_and_hangups() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingConnect::new(a, Instant::now());
        b.write_all(&[b'A'; 40]).unwrap();
        assert_eq!(p.read_line(), LineStatus::Refused(ConnectError::TooLong));
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert_eq!(
            PendingConnect::new(a, Instant::now()).read_line(),
            LineStatus::Closed
        );
    }

    #[test]
    fn a_connect_to_a_listener_that_never_accepts_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let _listener = listener_with_full_backlog(&path);
        let err = connect_nonblocking(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let live = dir.path().join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        assert!(connect_nonblocking(&live).is_ok());
        assert!(connect_nonblocking(&dir.path().join("none.sock")).is_err());
    }

    #[test]
    fn stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        drop(bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file");
        let live = bind(&path).unwrap();
        assert!(bind(&path).is_err(), "a live listener is not stolen");
        drop(live);
        assert_eq!(forward_path(&path, 52), dir.path().join("v.sock_52"));
    }
}
