//! The host side of the probe's net workload, on the tap the VMM created: a raw packet
//! socket bound to the tap sees the frames the guest sends on every tx queue, and sends the
//! guest UDP frames of many flows, so that the tap's flow hash spreads them over all its
//! queues, until the device has delivered enough on every rx queue.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use pulse_vmm::vm::NetHandle;

/// The probe's frames: this EtherType, then `PPROBE`, the pair (u16 BE), the sequence.
const PROBE_ETHERTYPE: u16 = 0x88b5;
const PROBE_MARK: &[u8] = b"PPROBE";
/// The harness's frames carry this at the start of their UDP payload.
const HOST_MARK: &[u8] = b"PHOST ";
const DEADLINE: Duration = Duration::from_secs(30);
/// Frames sent between looks at the device's counters.
const BURST: u32 = 8;

/// What the net peer saw and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetPeerReport {
    /// The tap.
    pub tap: String,
    /// Probe frames that arrived on the tap, per queue pair the guest sent them on.
    pub from_guest: Vec<u32>,
    /// Frames the harness sent into the tap.
    pub sent: u32,
    /// Frames the device delivered to the guest, per rx queue (its counters).
    pub delivered: Vec<u64>,
    /// What went wrong.
    pub errors: Vec<String>,
}

impl NetPeerReport {
    /// Every pair's frames arrived, and every rx queue delivered at least `rx` frames.
    pub fn ok(&self, frames: u32, rx: u32) -> bool {
        self.errors.is_empty()
            && self.from_guest.iter().all(|n| *n >= frames)
            && self.delivered.iter().all(|n| *n >= u64::from(rx))
    }
}

/// The running peer.
pub struct NetPeer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<NetPeerReport>,
}

/// ETH_P_ALL and AF_PACKET (3 and 17) as the 16-bit fields of a `sockaddr_ll`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const AF_PACKET: libc::sa_family_t = libc::AF_PACKET as libc::sa_family_t;

/// The size of `T` as a socket call's length argument: the structs passed are a few dozen
/// bytes.
#[allow(clippy::cast_possible_truncation)]
const fn socklen<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

/// A raw packet socket bound to interface `ifindex`.
fn packet_socket(ifindex: u32) -> std::io::Result<OwnedFd> {
    let ifindex = i32::try_from(ifindex).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface index {ifindex} out of range"),
        )
    })?;
    let proto = ETH_P_ALL.to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            socklen::<libc::sockaddr_ll>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast::<libc::c_void>(),
            socklen::<libc::timeval>(),
        )
    };
    Ok(fd)
}

/// An IPv4/UDP frame to `dst` from flow number `flow`, payload `PHOST <flow>`.
fn host_frame(dst: [u8; 6], flow: u32) -> Vec<u8> {
    let mut payload = HOST_MARK.to_vec();
    payload.extend_from_slice(format!("{flow:08}").as_bytes());
    let udp_len = u16::try_from(8 + payload.len()).expect("a host frame is under 64 bytes");
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + usize::from(ip_len));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = u16::try_from((folded & 0xffff) + (folded >> 16)).expect("folded twice");
    let checksum = !folded;
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    f.extend_from_slice(&ip);
    // Many source ports: many flows, spread over the tap's queues by their hash.
    let sport = 10_000 + u16::try_from(flow % 50_000).expect("below 50000");
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

/// The probe pair number of a frame from the guest, if it is one.
fn probe_pair(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 26
        && frame[12..14] == PROBE_ETHERTYPE.to_be_bytes()
        && &frame[14..20] == PROBE_MARK)
        .then(|| u16::from_be_bytes([frame[20], frame[21]]))
}

impl NetPeer {
    /// Starts on the tap of `net` (the VM is running): the guest must send `frames` on each
    /// of its `pairs` and receive `rx` on each rx queue.
    pub fn start(net: NetHandle, pairs: u16, rx: u32) -> NetPeer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || run(net, pairs, rx, &thread_stop));
        NetPeer { stop, thread }
    }

    /// Stops (the VM has stopped) and reports.
    pub fn finish(self) -> NetPeerReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_else(|_| NetPeerReport {
            errors: vec!["net peer panicked".into()],
            ..NetPeerReport::default()
        })
    }
}

fn run(net: NetHandle, pairs: u16, rx: u32, stop: &AtomicBool) -> NetPeerReport {
    let mut report = NetPeerReport {
        tap: net.tap.clone(),
        from_guest: vec![0; usize::from(pairs)],
        delivered: vec![0; usize::from(pairs)],
        ..NetPeerReport::default()
    };
    // Fewer stray frames for the guest: no IPv6 autoconfiguration on the probe's tap.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", net.tap),
        "1",
    );
    let ifindex = CString::new(net.tap.clone())
        // SAFETY: a valid NUL-terminated name.
        .map(|name| unsafe { libc::if_nametoindex(name.as_ptr()) })
        .unwrap_or(0);
    if ifindex == 0 {
        report
            .errors
            .push(format!("tap {} has no interface index", net.tap));
        return report;
    }
    let sock = match packet_socket(ifindex) {
        Ok(s) => s,
        Err(e) => {
            report
                .errors
                .push(format!("packet socket on {}: {e}", net.tap));
            return report;
        }
    };
    let delivered = |report: &mut NetPeerReport| {
        for (p, d) in report.delivered.iter_mut().enumerate() {
            *d = net
                .counters
                .get(2 * p)
                .map_or(0, |c| c.frames.load(Ordering::Relaxed));
        }
    };
    let deadline = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 65536];
    let mut flow = 0u32;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // SAFETY: `buf` is writable for its length; the socket is ours.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            if let Some(p) = probe_pair(&buf[..n.unsigned_abs()]) {
                if let Some(c) = report.from_guest.get_mut(usize::from(p)) {
                    *c += 1;
                }
            }
            continue;
        }
        delivered(&mut report);
        if report.delivered.iter().any(|d| *d < u64::from(rx)) {
            for _ in 0..BURST {
                let frame = host_frame(net.mac, flow);
                flow += 1;
                // SAFETY: `frame` is readable for its length; the socket is bound to the tap.
                let sent = unsafe {
                    libc::send(
                        sock.as_raw_fd(),
                        frame.as_ptr().cast::<libc::c_void>(),
                        frame.len(),
                        0,
                    )
                };
                if sent > 0 {
                    report.sent += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    delivered(&mut report);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let f = host_frame([2, 0, 0, 0, 0, 9], 7);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&f[12..14], &[8, 0]);
        assert_eq!(f[14], 0x45);
        assert_eq!(f[23], 17);
        assert_eq!(&f[42..48], HOST_MARK);
        // The IPv4 header checksum verifies to zero.
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
        let mut g = vec![0u8; 60];
        g[12..14].copy_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
        g[14..20].copy_from_slice(PROBE_MARK);
        g[20..22].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(probe_pair(&g), Some(3));
        assert_eq!(probe_pair(&f), None);
    }
}
