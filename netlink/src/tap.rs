//! Multi-queue taps.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::configure::check_ifname;
use crate::NetlinkError;

/// Creates tap `name` with `queues` queues (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
/// IFF_MULTI_QUEUE`) in the calling thread's network namespace, and returns one descriptor
/// per queue. The tap is not persistent: it goes when the last descriptor closes, with its
/// qdiscs and filters. An existing interface of that name is an error (`IFF_TUN_EXCL`).
pub fn create_tap(name: &str, queues: usize) -> Result<Vec<OwnedFd>, NetlinkError> {
    check_ifname(name)?;
    let err = |what: &'static str| {
        let name = name.to_string();
        move |source| NetlinkError::Tap { name, what, source }
    };
    let path = CString::new("/dev/net/tun").expect("no NUL in a constant");
    let mut fds = Vec::with_capacity(queues.max(1));
    for queue in 0..queues.max(1) {
        // SAFETY: `path` is a valid C string; open has no other memory effects.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(err("opening /dev/net/tun")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by open and nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        let mut flags =
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
        if queue == 0 {
            flags |= libc::IFF_TUN_EXCL;
        }
        // The IFF_ flags are 16 bits: IFF_TUN_EXCL (0x8000) is the short's sign bit, as the
        // kernel reads it.
        #[allow(clippy::cast_possible_truncation)]
        let flags = flags as libc::c_short;
        ifr.ifr_ifru.ifru_flags = flags;
        // SAFETY: TUNSETIFF reads and writes the ifreq, valid for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(err("TUNSETIFF")(io::Error::last_os_error()));
        }
        fds.push(fd);
    }
    Ok(fds)
}
