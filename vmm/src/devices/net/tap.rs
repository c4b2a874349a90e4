//! The host side of virtio-net: a Linux tap device opened through `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`, one file descriptor per queue pair.
//!
//! - By name: the tap is created if it does not exist. A tap Pulse created is not persistent,
//!   so the kernel removes it when Pulse closes its last queue (drop of [`Tap`]); a tap that
//!   existed before (persistent, or held by another process) is only detached from, never
//!   deleted.
//! - By inherited file descriptor (one queue): the descriptor is duplicated, the caller keeps
//!   its own; it must have been opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
//!
//! Every frame carries a 12-byte `virtio_net_hdr_v1` (`TUNSETVNETHDRSZ`), so guest checksum and
//! segmentation offloads pass through the tap untouched; `TUNSETOFFLOAD` tells the kernel which
//! offloaded frames the guest accepts. Queue pairs the guest does not use are detached from the
//! tap (`TUNSETQUEUE`), so the kernel steers no frames to them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// Longest interface name (IFNAMSIZ less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Size of the virtio-net header on every frame (`virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("tap name '{name}' is invalid: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` cannot be opened.
    #[error("tap {name}: cannot open {TUN_PATH}: {source}{hint}")]
    OpenTun {
        /// The tap.
        name: String,
        /// Why.
        source: io::Error,
        /// What usually causes it.
        hint: &'static str,
    },
    /// The kernel refused to create or attach queue `queue`.
    #[error("tap {name}: cannot open queue {queue}: {source}{hint}")]
    Attach {
        /// The tap.
        name: String,
        /// The queue pair.
        queue: usize,
        /// Why.
        source: io::Error,
        /// What usually causes it.
        hint: &'static str,
    },
    /// An inherited file descriptor is not a usable tap.
    #[error("tap fd {fd}: {reason}")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        reason: String,
    },
    /// Another ioctl failed.
    #[error("tap {name}: {op} failed: {source}")]
    Ioctl {
        /// The tap.
        name: String,
        /// The operation.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Checks that `name` can name a network interface (the kernel's `dev_valid_name`, plus its
/// rule for `%d` templates).
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let bad = |reason| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace() || b > 0x7e)
    {
        return bad("contains '/', ':', whitespace, a NUL or a non-ASCII byte");
    }
    match name.find('%') {
        Some(i) if !name[i..].starts_with("%d") || name[i + 2..].contains('%') => {
            bad("'%' is only allowed once, as the template '%d'")
        }
        _ => Ok(()),
    }
}

/// The index of interface `name`, if it exists (in this network namespace).
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

pub(super) fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a C struct of integers, arrays and a union of such; all zeroes is a
    // valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(MAX_NAME_LEN)) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    ifr
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn hint_for(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (needs CAP_NET_ADMIN, or a persistent tap owned by this user)"
        }
        Some(libc::EBUSY) => " (the tap is single-queue and already in use)",
        Some(libc::EINVAL) => {
            " (an existing tap with other flags: it must be a tap created with multi_queue and vnet_hdr)"
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => " (no tun driver: modprobe tun)",
        _ => "",
    }
}

/// A socket ioctl's number as `ioctl` takes it: libc types `SIOC*` `c_ulong`, and `ioctl`'s
/// request `c_ulong` with glibc but `c_int` with musl (every `SIOC*` fits).
#[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
const fn socket_request(op: libc::c_ulong) -> libc::Ioctl {
    op as libc::Ioctl
}

/// How many of `iov` one readv/writev takes: at most UIO_MAXIOV (1024).
fn iov_count(iov: &[libc::iovec]) -> libc::c_int {
    libc::c_int::try_from(iov.len())
        .unwrap_or(libc::UIO_MAXIOV)
        .min(libc::UIO_MAXIOV)
}

/// IFF_* flags (`c_int`s in libc) as the ifreq's flags field, a C `short` the kernel reads as
/// unsigned: IFF_TUN_EXCL is 0x8000. Every IFF_* flag lies in the low 16 bits.
fn ifr_flags(flags: libc::c_int) -> libc::c_short {
    let bits = u16::try_from(flags & 0xffff).unwrap_or_default();
    libc::c_short::from_ne_bytes(bits.to_ne_bytes())
}

/// An ioctl on a tap queue that passes an `ifreq`.
pub(super) fn ioctl_ifreq(fd: RawFd, op: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `ifr` is a valid, writable ifreq for the duration of the call, which is what
    // every TUN ioctl taking an ifreq reads and writes.
    let r = unsafe { libc::ioctl(fd, op, ifr as *mut libc::ifreq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One queue of a tap: the file descriptor one worker reads and writes frames on.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
}

impl TapQueue {
    /// Wraps a descriptor that behaves like a tap queue (a tap, or in tests a datagram socket).
    pub(crate) fn from_owned(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Reads one frame (with its virtio-net header) into `iov`; the frame is truncated to the
    /// buffers' total size.
    ///
    /// # Safety
    ///
    /// Every element of `iov` must describe memory that is valid for writes of its length for
    /// the duration of the call.
    pub(crate) unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = iov_count(iov);
        // SAFETY: the caller guarantees the buffers; `iov` itself is a valid array of `count`
        // iovecs.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), count) };
        // Negative: the call failed.
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one frame (with its virtio-net header) gathered from `iov`.
    ///
    /// # Safety
    ///
    /// Every element of `iov` must describe memory that is valid for reads of its length for
    /// the duration of the call.
    pub(crate) unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = iov_count(iov);
        // SAFETY: the caller guarantees the buffers; `iov` itself is a valid array of `count`
        // iovecs.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), count) };
        // Negative: the call failed.
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// How the tap came to Pulse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapOrigin {
    /// Pulse created it; the kernel removes it when its queues are closed.
    Created,
    /// It existed already (persistent, or held by someone else); it is left in place.
    Existing,
    /// An inherited file descriptor.
    Inherited,
    /// Stand-in descriptors (unit tests, fuzz targets): no tap ioctls.
    #[cfg(any(test, feature = "fuzzing"))]
    Fake,
}

/// A tap device with one queue per virtio-net queue pair.
#[derive(Debug)]
pub struct Tap {
    name: String,
    origin: TapOrigin,
    queues: Vec<Arc<TapQueue>>,
    /// Which queues are attached (receive frames from the kernel).
    attached: Mutex<Vec<bool>>,
}

fn open_tun(name: &str) -> Result<OwnedFd, TapError> {
    let path = CString::new(TUN_PATH).expect("no NUL in a constant");
    // SAFETY: `path` is a valid NUL-terminated string; open has no other memory effects.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let source = io::Error::last_os_error();
        let hint = hint_for(&source);
        return Err(TapError::OpenTun {
            name: name.to_string(),
            source,
            hint,
        });
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

impl Tap {
    /// Opens (creating it if absent) tap `name` with `queues` queues.
    pub fn open(name: &str, queues: usize) -> Result<Self, TapError> {
        validate_name(name)?;
        let queues = queues.max(1);
        let existed = !name.contains('%') && if_index(name).is_some();
        let mut fds = Vec::with_capacity(queues);
        let mut actual = name.to_string();
        let mut origin = if existed {
            TapOrigin::Existing
        } else {
            TapOrigin::Created
        };
        for queue in 0..queues {
            let fd = open_tun(name)?;
            let mut flags = TAP_FLAGS;
            if queue == 0 && origin == TapOrigin::Created {
                // Create it, or fail if it appeared since the check: then it is not ours.
                flags |= libc::IFF_TUN_EXCL;
            }
            let mut ifr = ifreq_for(&actual);
            ifr.ifr_ifru.ifru_flags = ifr_flags(flags);
            let mut result = ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr);
            if queue == 0
                && origin == TapOrigin::Created
                && matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
            {
                origin = TapOrigin::Existing;
                ifr = ifreq_for(&actual);
                ifr.ifr_ifru.ifru_flags = ifr_flags(TAP_FLAGS);
                result = ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr);
            }
            if let Err(source) = result {
                let hint = hint_for(&source);
                return Err(TapError::Attach {
                    name: actual,
                    queue,
                    source,
                    hint,
                });
            }
            if queue == 0 {
                // A `%d` template becomes the name the kernel picked.
                actual = ifreq_name(&ifr);
            }
            fds.push(fd);
        }
        let tap = Self::from_fds(actual, origin, fds);
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Uses an inherited tap file descriptor (one queue). The descriptor is duplicated: the
    /// caller keeps (and closes) its own. It is switched to non-blocking mode, which the
    /// caller's copy shares.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        let (owned, name) = Self::inherit(fd, false)?;
        let tap = Self::from_fds(name, TapOrigin::Inherited, vec![owned]);
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Uses inherited descriptors of one multi-queue tap, one per queue (the embedder
    /// created the tap, for instance in another network namespace). Each is duplicated,
    /// the caller keeps its own; all must be queues of the same tap, opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, and with `IFF_MULTI_QUEUE` when more than one.
    pub fn from_inherited_fds(fds: &[RawFd]) -> Result<Self, TapError> {
        let Some(first) = fds.first() else {
            return Err(TapError::BadFd {
                fd: -1,
                reason: "no descriptors".into(),
            });
        };
        let mut owned = Vec::with_capacity(fds.len());
        let mut name = String::new();
        for (i, fd) in fds.iter().enumerate() {
            let (dup, this) = Self::inherit(*fd, fds.len() > 1)?;
            if i == 0 {
                name = this;
            } else if this != name {
                return Err(TapError::BadFd {
                    fd: *fd,
                    reason: format!("a queue of {this}, where fd {first} is one of {name}"),
                });
            }
            owned.push(dup);
        }
        let tap = Self::from_fds(name, TapOrigin::Inherited, owned);
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Duplicates and checks one inherited tap descriptor; returns it with the tap's name.
    fn inherit(fd: RawFd, multi_queue: bool) -> Result<(OwnedFd, String), TapError> {
        let bad = |reason: String| TapError::BadFd { fd, reason };
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; an invalid descriptor gives EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(bad(format!(
                "cannot duplicate it: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: `dup` is a fresh descriptor that nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let mut ifr = ifreq_for("");
        ioctl_ifreq(owned.as_raw_fd(), libc::TUNGETIFF, &mut ifr)
            .map_err(|e| bad(format!("not an attached tun/tap descriptor: {e}")))?;
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
        let name = ifreq_name(&ifr);
        if flags & libc::IFF_TAP == 0 {
            return Err(bad(format!("{name} is a tun device, not a tap")));
        }
        if flags & libc::IFF_VNET_HDR == 0 || flags & libc::IFF_NO_PI == 0 {
            return Err(bad(format!(
                "{name} was opened without IFF_VNET_HDR and IFF_NO_PI"
            )));
        }
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
        let set = unsafe {
            let fl = libc::fcntl(owned.as_raw_fd(), libc::F_GETFL);
            fl >= 0 && libc::fcntl(owned.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
        };
        if multi_queue && flags & libc::IFF_MULTI_QUEUE == 0 {
            return Err(bad(format!(
                "{name} was opened without IFF_MULTI_QUEUE, and more than one queue was given"
            )));
        }
        if !set {
            return Err(bad(format!(
                "cannot make it non-blocking: {}",
                io::Error::last_os_error()
            )));
        }
        Ok((owned, name))
    }

    fn from_fds(name: String, origin: TapOrigin, fds: Vec<OwnedFd>) -> Self {
        let attached = Mutex::new(vec![true; fds.len()]);
        Self {
            name,
            origin,
            queues: fds
                .into_iter()
                .map(|fd| Arc::new(TapQueue::from_owned(fd)))
                .collect(),
            attached,
        }
    }

    /// A tap over stand-in descriptors, for tests of the device model without a kernel tap.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn fake(name: &str, fds: Vec<OwnedFd>) -> Self {
        Self::from_fds(name.to_string(), TapOrigin::Fake, fds)
    }

    /// A one-queue fake tap over one end of a socket pair, and the other end: the peer reads
    /// what the device writes to the tap and writes what the device reads (SOCK_SEQPACKET
    /// keeps each frame whole).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn fake_pair(name: &str) -> (Self, OwnedFd) {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into the array, valid for the call.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (Self::fake(name, vec![ours]), peer)
    }

    fn is_real(&self) -> bool {
        #[cfg(any(test, feature = "fuzzing"))]
        if self.origin == TapOrigin::Fake {
            return false;
        }
        true
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether Pulse created it (and the kernel will remove it when Pulse is done).
    pub fn origin(&self) -> TapOrigin {
        self.origin
    }

    /// Queue `index`.
    pub fn queue(&self, index: usize) -> Option<&Arc<TapQueue>> {
        self.queues.get(index)
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn ioctl_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> TapError + '_ {
        move |source| TapError::Ioctl {
            name: self.name.clone(),
            op,
            source,
        }
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        if !self.is_real() {
            return Ok(());
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // 12 bytes
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let r = unsafe {
            libc::ioctl(
                self.queues[0].as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &len as *const libc::c_int,
            )
        };
        if r < 0 {
            return Err(self.ioctl_err("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Tells the kernel which offloaded frames (TUN_F_* bits) it may hand to the guest.
    pub fn set_offload(&self, tun_flags: libc::c_uint) -> Result<(), TapError> {
        if !self.is_real() {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.queues[0].as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_flags),
            )
        };
        if r < 0 {
            return Err(self.ioctl_err("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Attaches queues `0..active` and detaches the others, so that the kernel only steers
    /// frames to the queue pairs the guest uses. Queue 0 always stays attached.
    pub fn set_active_queues(&self, active: usize) -> Result<(), TapError> {
        let active = active.clamp(1, self.queues.len());
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        for (i, queue) in self.queues.iter().enumerate() {
            let want = i < active;
            if attached[i] == want {
                continue;
            }
            if self.is_real() {
                let mut ifr = ifreq_for("");
                let flag = if want {
                    libc::IFF_ATTACH_QUEUE
                } else {
                    libc::IFF_DETACH_QUEUE
                };
                ifr.ifr_ifru.ifru_flags = ifr_flags(flag);
                ioctl_ifreq(queue.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr)
                    .map_err(self.ioctl_err("TUNSETQUEUE"))?;
            }
            attached[i] = want;
        }
        Ok(())
    }

    /// How many queues are attached now.
    pub fn active_queues(&self) -> usize {
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        attached.iter().filter(|a| **a).count()
    }

    fn with_ctl_socket<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(RawFd) -> io::Result<T>,
    ) -> Result<T, TapError> {
        // SAFETY: socket() takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(self.ioctl_err(op)(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        f(sock.as_raw_fd()).map_err(self.ioctl_err(op))
    }

    /// Brings the link up if it is down (SIOCSIFFLAGS needs CAP_NET_ADMIN; nothing is asked of
    /// the kernel when the link is up already).
    pub fn set_link_up(&self) -> Result<(), TapError> {
        if !self.is_real() {
            return Ok(());
        }
        self.with_ctl_socket("SIOCSIFFLAGS (link up)", |sock| {
            let mut ifr = ifreq_for(&self.name);
            ioctl_ifreq(sock, socket_request(libc::SIOCGIFFLAGS), &mut ifr)?;
            // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
            let flags = unsafe { ifr.ifr_ifru.ifru_flags };
            if flags & ifr_flags(libc::IFF_UP) == 0 {
                ifr.ifr_ifru.ifru_flags = flags | ifr_flags(libc::IFF_UP);
                ioctl_ifreq(sock, socket_request(libc::SIOCSIFFLAGS), &mut ifr)?;
            }
            Ok(())
        })
    }

    /// The link's MTU.
    pub fn mtu(&self) -> Result<u32, TapError> {
        self.with_ctl_socket("SIOCGIFMTU", |sock| {
            let mut ifr = ifreq_for(&self.name);
            ioctl_ifreq(sock, socket_request(libc::SIOCGIFMTU), &mut ifr)?;
            // SAFETY: SIOCGIFMTU filled in the mtu member of the union.
            let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
            u32::try_from(mtu)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative MTU"))
        })
    }

    /// Sets the link's MTU if it differs.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), TapError> {
        if !self.is_real() || self.mtu()? == mtu {
            return Ok(());
        }
        self.with_ctl_socket("SIOCSIFMTU", |sock| {
            let mut ifr = ifreq_for(&self.name);
            // Past i32::MAX the kernel would refuse it as well.
            ifr.ifr_ifru.ifru_mtu = libc::c_int::try_from(mtu)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            ioctl_ifreq(sock, socket_request(libc::SIOCSIFMTU), &mut ifr)
        })
    }
}
