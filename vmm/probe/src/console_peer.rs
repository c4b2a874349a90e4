//! The host side of the probe's console workload: a client on the console's unix socket that
//! sends the guest one line and expects the guest's hello and the line echoed back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the probe writes on hvc0 first, and the line the host sends it.
pub const GUEST_HELLO: &str = "pulse-probe: hello on hvc0\n";
/// The line the host sends; the guest answers `echo: ` and the line.
pub const HOST_LINE: &str = "ping from pulse-vmm\n";
const DEADLINE: Duration = Duration::from_secs(30);

/// What the console peer saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsolePeerReport {
    /// Everything the guest wrote on the console.
    pub output: String,
    /// The hello and the echo both arrived.
    pub ok: bool,
    /// What went wrong.
    pub errors: Vec<String>,
}

/// The running peer.
pub struct ConsolePeer {
    thread: JoinHandle<ConsolePeerReport>,
}

impl ConsolePeer {
    /// Connects to the console socket at `path` (the VM is running) and talks to the guest.
    pub fn start(path: PathBuf) -> ConsolePeer {
        ConsolePeer {
            thread: std::thread::spawn(move || run(path)),
        }
    }

    /// Waits for the exchange to end.
    pub fn finish(self) -> ConsolePeerReport {
        self.thread.join().unwrap_or_else(|_| ConsolePeerReport {
            errors: vec!["console peer panicked".into()],
            ..ConsolePeerReport::default()
        })
    }
}

fn run(path: PathBuf) -> ConsolePeerReport {
    let mut report = ConsolePeerReport::default();
    let deadline = Instant::now() + DEADLINE;
    let echo = format!("echo: {HOST_LINE}");
    let mut s = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                report.errors.push(format!("console socket: {e}"));
                return report;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    if let Err(e) = s.write_all(HOST_LINE.as_bytes()) {
        report.errors.push(format!("console input: {e}"));
        return report;
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                report.errors.push(format!("console output: {e}"));
                break;
            }
        }
        let text = String::from_utf8_lossy(&out);
        if text.contains(GUEST_HELLO) && text.contains(&echo) {
            report.ok = true;
            break;
        }
    }
    report.output = String::from_utf8_lossy(&out).into_owned();
    if !report.ok && report.errors.is_empty() {
        report.errors.push(format!(
            "console output lacks the hello or the echo: {:?}",
            report.output
        ));
    }
    report
}
