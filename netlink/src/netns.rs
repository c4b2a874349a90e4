//! Running code inside a network namespace, on a thread of its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::NetlinkError;

/// Runs `f` on a thread of its own that has entered the network namespace of `path` (a
/// `/run/netns/...` or `/proc/PID/ns/net` file); the caller's threads stay where they are.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
    let netns = File::open(path).map_err(|source| NetlinkError::Netns {
        path: path.display().to_string(),
        source,
    })?;
    on_own_thread(move || {
        // SAFETY: setns takes a descriptor we own and a flag; it changes only this thread's
        // network namespace (a thread of its own that ends after `f`).
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Netns {
                path: path.display().to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(f())
    })
}

/// Runs `f` on a thread of its own in a new, empty network namespace (tests).
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
    on_own_thread(move || {
        // SAFETY: unshare takes a flag; it moves only this thread, which ends after `f`.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Netns {
                path: "(new)".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(f())
    })
}

fn on_own_thread<T: Send>(
    f: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}
