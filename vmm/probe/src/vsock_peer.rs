//! The host side of the probe's vsock workload: many host processes' worth of hybrid-vsock
//! connections to the guest's echo server, a listener for the guest's own connection, and a
//! transport reset once both are done.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use pulse_vmm::devices::vsock::unix::forward_path;
use pulse_vmm::devices::vsock::VsockHandle;

/// What the guest sends on its own connection (the probe's constant)...
pub const GUEST_HELLO: &[u8] = b"hello from pulse-probe\n";
/// ...and what the host's listener answers.
pub const HOST_REPLY: &[u8] = b"hello from pulse-vmm\n";

/// How long the whole exchange may take, and one CONNECT handshake.
const DEADLINE: Duration = Duration::from_secs(60);
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// What the peer does.
#[derive(Clone, Debug)]
pub struct PeerPlan {
    /// The VMM's hybrid-vsock socket.
    pub uds: PathBuf,
    /// Guest port of the echo server.
    pub guest_port: u32,
    /// Host connections, each sending `bytes` and expecting them back.
    pub conns: u32,
    /// Bytes per connection.
    pub bytes: u32,
    /// Host port the guest connects to (`<uds>_<port>`).
    pub listen_port: u32,
    /// Transport resets to raise once everything else is done.
    pub resets: u32,
}

/// What the peer saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerReport {
    /// Connections whose CONNECT got `OK`.
    pub connected: u32,
    /// Connections that got back exactly what they sent.
    pub echoed: u32,
    /// Connections that got back something else (or too little).
    pub mismatched: u32,
    /// `ERR` answers before the guest driver was ready (retried).
    pub retries: u64,
    /// The guest's own connection arrived with its hello and got the reply.
    pub guest_connected: bool,
    /// Transport resets raised.
    pub resets: u32,
    /// Milliseconds from start to the last echo.
    pub ms: f64,
    /// What went wrong, one line each (first few).
    pub errors: Vec<String>,
}

impl PeerReport {
    /// Every connection echoed, the guest's connection answered.
    pub fn ok(&self, plan: &PeerPlan) -> bool {
        self.echoed == plan.conns && self.mismatched == 0 && self.guest_connected
    }
}

/// The peer, bound before the VM starts (so the guest's connection finds its listener).
pub struct VsockPeer {
    plan: PeerPlan,
    listener: UnixListener,
    listener_path: PathBuf,
}

/// The running peer.
pub struct RunningPeer {
    plan: PeerPlan,
    coordinator: JoinHandle<PeerReport>,
}

/// Byte `i` of connection `c`'s stream: differs between connections and across 4 KiB
/// boundaries, so a misplaced or swapped chunk is seen. A hash: the truncations are meant.
#[allow(clippy::cast_possible_truncation)]
fn pattern(c: u32, i: usize) -> u8 {
    (i as u32)
        .wrapping_mul(131)
        .wrapping_add(c.wrapping_mul(7919))
        .wrapping_add((i >> 12) as u32) as u8
}

impl VsockPeer {
    /// Binds the listener for the guest's connection.
    pub fn bind(plan: PeerPlan) -> std::io::Result<Self> {
        let listener_path = forward_path(&plan.uds, plan.listen_port);
        let _ = std::fs::remove_file(&listener_path);
        let listener = UnixListener::bind(&listener_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            plan,
            listener,
            listener_path,
        })
    }

    /// Starts the connections; `vsock` raises the transport resets at the end.
    pub fn start(self, vsock: Option<VsockHandle>) -> RunningPeer {
        let plan = self.plan.clone();
        let coordinator = std::thread::spawn(move || self.run(vsock));
        RunningPeer { plan, coordinator }
    }

    fn run(self, vsock: Option<VsockHandle>) -> PeerReport {
        let started = Instant::now();
        let deadline = started + DEADLINE;
        let report = Arc::new(Mutex::new(PeerReport::default()));
        let listener = {
            let report = report.clone();
            let listener = self.listener;
            std::thread::spawn(move || serve_guest(listener, deadline, &report))
        };
        let conns: Vec<_> = (0..self.plan.conns)
            .map(|c| {
                let plan = self.plan.clone();
                let report = report.clone();
                std::thread::spawn(move || echo_connection(&plan, c, deadline, &report))
            })
            .collect();
        for t in conns {
            let _ = t.join();
        }
        let _ = listener.join();
        let mut r = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Some(vsock) = vsock {
            for _ in 0..self.plan.resets {
                match vsock.transport_reset() {
                    Ok(()) => r.resets += 1,
                    Err(e) => r.errors.push(format!("transport reset: {e}")),
                }
            }
        }
        let _ = std::fs::remove_file(&self.listener_path);
        r
    }
}

impl RunningPeer {
    /// Waits for the peer to finish.
    pub fn finish(self) -> (PeerPlan, PeerReport) {
        let report = self.coordinator.join().unwrap_or_else(|_| PeerReport {
            errors: vec!["vsock peer panicked".into()],
            ..PeerReport::default()
        });
        (self.plan, report)
    }
}

fn note(report: &Mutex<PeerReport>, f: impl FnOnce(&mut PeerReport)) {
    f(&mut report.lock().unwrap_or_else(|p| p.into_inner()));
}

fn error(report: &Mutex<PeerReport>, e: String) {
    note(report, |r| {
        if r.errors.len() < 8 {
            r.errors.push(e);
        }
    });
}

/// Connects and sends `CONNECT`, retrying while the guest driver is not ready.
fn connect(
    plan: &PeerPlan,
    deadline: Instant,
    report: &Mutex<PeerReport>,
) -> Result<UnixStream, String> {
    loop {
        // Before the guest driver is ready the VMM answers `ERR ...` and closes at once,
        // possibly before the CONNECT line is written: any failure short of `OK` is retried.
        match try_connect(plan) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no connection before the deadline: {e}"))
            }
            Err(_) => {
                note(report, |r| r.retries += 1);
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// One CONNECT attempt.
fn try_connect(plan: &PeerPlan) -> Result<UnixStream, String> {
    pulse_hvsock::connect(&plan.uds, plan.guest_port, Some(LINE_TIMEOUT)).map_err(|e| e.to_string())
}

/// One echo connection: send `bytes` (then shut down writing), read everything back.
fn echo_connection(plan: &PeerPlan, c: u32, deadline: Instant, report: &Mutex<PeerReport>) {
    let mut s = match connect(plan, deadline, report) {
        Ok(s) => s,
        Err(e) => return error(report, format!("connection {c}: {e}")),
    };
    note(report, |r| r.connected += 1);
    let total = plan.bytes as usize;
    let data: Vec<u8> = (0..total).map(|i| pattern(c, i)).collect();
    let writer = match s.try_clone() {
        Ok(mut w) => std::thread::spawn(move || {
            let r = w.write_all(&data);
            let _ = w.shutdown(std::net::Shutdown::Write);
            r
        }),
        Err(e) => return error(report, format!("connection {c}: clone: {e}")),
    };
    let _ = s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())));
    let mut back = Vec::with_capacity(total);
    let read = s.read_to_end(&mut back);
    let wrote = writer.join();
    let intact = back.len() == total && back.iter().enumerate().all(|(i, b)| *b == pattern(c, i));
    if intact {
        note(report, |r| r.echoed += 1);
        return;
    }
    note(report, |r| r.mismatched += 1);
    error(
        report,
        format!(
            "connection {c}: got {} of {total} bytes back{} (read: {:?}, write: {:?})",
            back.len(),
            if back.len() == total {
                ", different"
            } else {
                ""
            },
            read.err(),
            wrote.ok().and_then(Result::err)
        ),
    );
}

/// Accepts the guest's connection, checks its hello and answers; then waits for the guest
/// to close.
fn serve_guest(listener: UnixListener, deadline: Instant, report: &Mutex<PeerReport>) {
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return error(
                        report,
                        "the guest never connected to the host listener".into(),
                    );
                }
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(e) => return error(report, format!("host listener: {e}")),
        }
    };
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(LINE_TIMEOUT));
    let mut hello = vec![0u8; GUEST_HELLO.len()];
    if let Err(e) = s.read_exact(&mut hello) {
        return error(report, format!("guest connection: no hello: {e}"));
    }
    if hello != GUEST_HELLO {
        return error(
            report,
            format!(
                "guest connection: unexpected {:?}",
                String::from_utf8_lossy(&hello)
            ),
        );
    }
    if let Err(e) = s.write_all(HOST_REPLY) {
        return error(report, format!("guest connection: reply: {e}"));
    }
    // The guest shuts the connection down once it has the reply.
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => note(report, |r| r.guest_connected = true),
        Ok(_) => error(
            report,
            format!("guest connection: {} unexpected bytes", rest.len()),
        ),
        Err(e) => error(report, format!("guest connection: no shutdown: {e}")),
    }
}
