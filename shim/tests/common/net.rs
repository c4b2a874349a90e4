//! Networking helpers of the end-to-end suites: servers and clients in a network namespace of
//! the test's (the host side of a CNI bridge).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A TCP server in network namespace `netns` (the host side of a CNI bridge), on every
/// address: each connection gets `reply(what it sent first)`.
pub struct HostServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostServer {
    pub fn start(netns: PathBuf, reply: fn(&str) -> String) -> HostServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&netns).unwrap();
            // SAFETY: setns on this thread only (a thread of the test's own).
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            // All addresses: the bridge (and its address) comes with the first pod.
            let listener = TcpListener::bind(("0.0.0.0", 0)).unwrap();
            listener.set_nonblocking(true).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(10)))
                            .unwrap();
                        let mut buf = [0u8; 2048];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let got = String::from_utf8_lossy(&buf[..n]).to_string();
                        let _ = conn.write_all(reply(&got).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HostServer {
            port: rx.recv().unwrap(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn http_reply(_req: &str) -> String {
    let body = "hello from the host side of the bridge\n";
    format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn echo_reply(req: &str) -> String {
    format!("echo: {req}")
}

/// An HTTP GET from network namespace `netns` to `ip:port`; the whole answer.
pub fn host_get(netns: &Path, ip: &str, port: u16) -> Result<String, String> {
    let addr = format!("{ip}:{port}");
    pulse_netlink::in_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}

/// The devices of `kind` in the host view of a management socket's `/report`.
pub fn host_devices<'r>(report: &'r serde_json::Value, kind: &str) -> Vec<&'r serde_json::Value> {
    let devices = report["host"]["devices"].as_array();
    devices
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// `GET path` on a pod's management socket `socket`: (status line, body).
pub fn mgmt_get(socket: &Path, path: &str) -> (String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: pulse\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
