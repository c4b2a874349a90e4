//! Where the console's output goes and its input comes from.
//!
//! | sink | output (transmitq0) | input (receiveq0) |
//! |---|---|---|
//! | `file:PATH` | the file, created or truncated | none |
//! | `stdio` | this process's stdout | stdin, if it can be polled (a terminal or a pipe; not `/dev/null` or a regular file) |
//! | `unix:PATH` | the connected client | the connected client |
//! | `none` | discarded (counted) | none |
//!
//! `unix:PATH`: Pulse listens on PATH (a stale socket file there is replaced; a path someone
//! listens on is refused) and serves one client at a time; a new connection replaces the
//! current one. Output written while no client is connected, or faster than the client reads,
//! is kept up to [`BACKLOG_BYTES`] (the oldest bytes are dropped, and counted) and sent to the
//! next client, so a client that connects late still sees the recent boot messages. The
//! socket file is removed with the device. Writes never block the guest.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Output kept for a socket client that is absent or slow.
pub const BACKLOG_BYTES: usize = 64 * 1024;

/// What a read of the input found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRead {
    /// This many bytes.
    Data(usize),
    /// Nothing available now.
    Empty,
    /// The input is gone (end of file, the client hung up) and has been closed.
    Closed,
}

/// Where the output goes.
pub enum Output {
    /// A file.
    File(File),
    /// This process's stdout.
    Stdout,
    /// The socket client (or the backlog).
    Socket,
    /// Nowhere.
    None,
}

/// The console's host side: output, input, and for a socket sink the listener and client.
pub struct Sink {
    /// Output.
    pub output: Output,
    /// Input that is not a socket client (stdin, or in tests a pipe).
    pub input: Option<File>,
    /// The listening socket (`unix:`).
    pub listener: Option<UnixListener>,
    /// Its path, removed on drop.
    pub socket_path: Option<PathBuf>,
    /// The connected client.
    pub client: Option<UnixStream>,
    /// Output not yet sent to a client.
    pub backlog: VecDeque<u8>,
    /// Changes whenever the input descriptor does (a client comes or goes).
    pub generation: u64,
}

impl Sink {
    fn with_output(output: Output) -> Self {
        Self {
            output,
            input: None,
            listener: None,
            socket_path: None,
            client: None,
            backlog: VecDeque::new(),
            generation: 0,
        }
    }

    /// Output to a file (created or truncated).
    pub fn file(path: &Path) -> io::Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::with_output(Output::File(f)))
    }

    /// Output to stdout, input from stdin when it can be polled. Stdin is reopened (through
    /// /proc/self/fd/0) in non-blocking mode, so the process's own stdin keeps its flags.
    pub fn stdio() -> Self {
        let mut sink = Self::with_output(Output::Stdout);
        sink.input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/proc/self/fd/0")
            .ok();
        sink
    }

    /// Output discarded, no input.
    pub fn none() -> Self {
        Self::with_output(Output::None)
    }

    /// Listens on a unix socket.
    pub fn unix(path: &Path) -> io::Result<Self> {
        let listener = bind(path)?;
        listener.set_nonblocking(true)?;
        let mut sink = Self::with_output(Output::Socket);
        sink.listener = Some(listener);
        sink.socket_path = Some(path.to_path_buf());
        Ok(sink)
    }

    /// Output to `output`, input from `input` (a non-blocking file, e.g. a pipe).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn with_input(output: Output, input: File) -> Self {
        let mut sink = Self::with_output(output);
        sink.input = Some(input);
        sink
    }

    /// The descriptor input comes from now, if any.
    pub fn input_fd(&self) -> Option<RawFd> {
        match (&self.client, &self.input) {
            (Some(c), _) => Some(c.as_raw_fd()),
            (None, Some(i)) => Some(i.as_raw_fd()),
            (None, None) => None,
        }
    }

    /// Accepts pending connections; the newest becomes the client. Returns how many.
    pub fn accept(&mut self) -> u64 {
        let Some(listener) = &self.listener else {
            return 0;
        };
        let mut accepted = 0;
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.client = Some(stream);
                self.generation += 1;
                accepted += 1;
            }
        }
        accepted
    }

    /// Writes guest output; returns the bytes lost (backlog overflow, write errors).
    pub fn write(&mut self, data: &[u8]) -> u64 {
        match &mut self.output {
            Output::File(f) => {
                if f.write_all(data).is_err() {
                    return data.len() as u64;
                }
                0
            }
            Output::Stdout => {
                let mut out = io::stdout().lock();
                if out.write_all(data).and_then(|()| out.flush()).is_err() {
                    return data.len() as u64;
                }
                0
            }
            Output::None => data.len() as u64,
            Output::Socket => {
                self.backlog.extend(data);
                let mut lost = 0;
                if self.backlog.len() > BACKLOG_BYTES {
                    let excess = self.backlog.len() - BACKLOG_BYTES;
                    self.backlog.drain(..excess);
                    lost = excess as u64;
                }
                self.flush();
                lost
            }
        }
    }

    /// Sends as much of the backlog to the client as it takes without blocking. A client that
    /// is gone is dropped.
    pub fn flush(&mut self) {
        let Some(client) = &self.client else {
            return;
        };
        while !self.backlog.is_empty() {
            let (front, _) = self.backlog.as_slices();
            match nix::sys::socket::send(
                client.as_raw_fd(),
                front,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    self.client = None;
                    self.generation += 1;
                    return;
                }
            }
        }
    }

    /// Whether output waits for the client to read.
    pub fn wants_write(&self) -> bool {
        self.client.is_some() && !self.backlog.is_empty()
    }

    /// Reads input into `buf` without blocking.
    pub fn read(&mut self, buf: &mut [u8]) -> InputRead {
        let result = match (&mut self.client, &mut self.input) {
            (Some(c), _) => c.read(buf),
            (None, Some(i)) => i.read(buf),
            (None, None) => return InputRead::Empty,
        };
        match result {
            Ok(0) => {
                self.close_input();
                InputRead::Closed
            }
            Ok(n) => InputRead::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => InputRead::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => InputRead::Empty,
            Err(_) => {
                self.close_input();
                InputRead::Closed
            }
        }
    }

    fn close_input(&mut self) {
        if self.client.take().is_none() {
            self.input = None;
        }
        self.generation += 1;
    }
}

/// Binds a listening socket at `path`, replacing a stale socket file nobody listens on.
fn bind(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false);
            if !is_socket {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
