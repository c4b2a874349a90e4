//! Telling the host the agent serves: once the API listens, connect to a
//! vsock port on the host (CID 2) and write [`pulse_protocols::ready_line`].
//!
//! The host waits for this before its first hybrid-vsock `CONNECT` (see the
//! protocol crate for why). That this connection completes at all shows the
//! guest's vsock device runs in both directions.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// The host's CID.
pub const HOST_CID: u32 = 2;
/// Tries before giving up (the host may still be binding its socket).
const ATTEMPTS: u32 = 5;
/// Pause between tries.
const PAUSE: Duration = Duration::from_millis(200);

/// Announces once: connects to `cid:port` and writes the line for `listen_port`.
pub fn announce_once(cid: u32, port: u32, listen_port: u32) -> std::io::Result<()> {
    let fd: OwnedFd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(cid, port),
    )?;
    let mut stream = std::fs::File::from(fd);
    stream.write_all(pulse_protocols::ready_line(listen_port).as_bytes())
}

/// Announces to the host, retrying a few times; a failure is logged, not
/// fatal (an agent started by hand has nobody waiting).
pub fn announce(port: u32, listen_port: u32) {
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        match announce_once(HOST_CID, port, listen_port) {
            Ok(()) => {
                tracing::info!(port, attempt, "told the host the agent serves");
                return;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(PAUSE);
    }
    if let Some(e) = last {
        tracing::warn!(
            "could not tell the host the agent serves (vsock {HOST_CID}:{port}): {e}; \
             the host will not connect"
        );
    }
}
