//! An AF_PACKET socket on a tap, for tests and benchmarks: the host's side of the guest's
//! frames (what the device wrote to the tap), and a way to send frames to the guest.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::tap;

/// A raw socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// A socket on `ifname` that sees every frame of it.
    pub fn bind(ifname: &str) -> Self {
        let all = u16::try_from(libc::ETH_P_ALL).expect("ETH_P_ALL is 16 bits");
        Self::with_protocol(ifname, all.to_be())
    }

    /// A socket on `ifname` that only sends: protocol 0 receives nothing, so a benchmark
    /// does not pay for copies of its own frames.
    pub fn sender(ifname: &str) -> Self {
        Self::with_protocol(ifname, 0)
    }

    /// `protocol` in network byte order, as AF_PACKET takes it.
    fn with_protocol(ifname: &str, protocol: u16) -> Self {
        let index = tap::if_index(ifname).expect("interface exists");
        // SAFETY: socket() takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain integers; zeroes are valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET is 16 bits");
        sll.sll_protocol = protocol;
        sll.sll_ifindex = i32::try_from(index).expect("an interface index is an int");
        // SAFETY: `sll` is a valid sockaddr_ll of the length given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                sockaddr_ll_len(),
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        Self { fd }
    }

    /// Sends one whole frame out of the interface (to the guest, on a tap).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Frames arriving from the guest (not the ones sent here) until `done` says enough, or
    /// `timeout` runs out.
    pub fn collect(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Vec<u8>]) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let deadline = Instant::now() + timeout;
        while !done(&frames) && Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain integers; zeroes are valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            if let Some(frame) = recv_frame(self.fd.as_fd(), Some(&mut from)) {
                if from.sll_pkttype != libc::PACKET_OUTGOING {
                    frames.push(frame);
                }
            }
        }
        frames
    }
}

/// One frame (of at most 70000 bytes) from `fd` without waiting, its sender's address in
/// `from` if asked; None when there is none, or on an error.
pub fn recv_frame(fd: BorrowedFd<'_>, from: Option<&mut libc::sockaddr_ll>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    let mut len = sockaddr_ll_len();
    let (addr, addr_len): (*mut libc::sockaddr, *mut libc::socklen_t) = match from {
        Some(from) => ((from as *mut libc::sockaddr_ll).cast(), &mut len),
        None => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    // SAFETY: `buf` is valid for writes of its length; `addr` and `addr_len` are both null or
    // point to a sockaddr_ll and its length, which live across the call.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            addr,
            addr_len,
        )
    };
    let n = usize::try_from(n).ok().filter(|n| *n > 0)?;
    buf.truncate(n);
    Some(buf)
}

fn sockaddr_ll_len() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("20 bytes")
}
