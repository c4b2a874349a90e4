//! The agent's readiness announcement: the line `READY <port>` it writes to the host's vsock
//! port 1023 once it serves, which both rigs wait for before they connect.

use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pulse_protocols::{parse_ready_line, DEFAULT_READY_PORT, DEFAULT_VSOCK_PORT};

/// Where the guest's connections to the host's ready port arrive: `<vsock_uds>_1023`.
pub fn ready_path(vsock_uds: &Path) -> PathBuf {
    pulse_vmm::devices::vsock::unix::forward_path(vsock_uds, DEFAULT_READY_PORT)
}

/// A non-blocking listener on [`ready_path`].
pub struct ReadyListener(UnixListener);

impl ReadyListener {
    pub fn bind(vsock_uds: &Path) -> Result<Self> {
        let listener = UnixListener::bind(ready_path(vsock_uds))
            .context("binding the agent's readiness socket")?;
        listener.set_nonblocking(true)?;
        Ok(ReadyListener(listener))
    }

    /// Whether the agent has announced itself, on the default port (any other line is an
    /// error). Its line follows the connection at once, but a loaded emulator may take a
    /// while: it is read up to `deadline`.
    pub fn announced(&self, deadline: Instant) -> Result<bool> {
        let stream = match self.0.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e).context("accepting the agent's announcement"),
        };
        stream.set_nonblocking(false)?;
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_read_timeout(Some(left.max(Duration::from_secs(1))))?;
        let mut line = String::new();
        let _ = BufReader::new(stream).read_line(&mut line);
        if parse_ready_line(&line) != Some(DEFAULT_VSOCK_PORT) {
            bail!("the agent announced {line:?}, not READY {DEFAULT_VSOCK_PORT}");
        }
        Ok(true)
    }
}
