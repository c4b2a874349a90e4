//! Dropping every capability of the calling thread.
//!
//! Linux keeps capabilities per thread (each task has its own credentials), and `capset(2)`
//! and `prctl(2)` change those of the caller only: a VMM thread that drops its capabilities
//! leaves the shim's other threads as they were. What a thread creates inherits its sets, so
//! threads started by a VMM thread have none either.
//!
//! The order matters: the bounding set is emptied first, because `PR_CAPBSET_DROP` needs
//! CAP_SETPCAP in the effective set, which the last step clears; then the ambient set; then
//! effective, permitted and inheritable with one `capset`. A thread that lacks CAP_SETPCAP
//! (a VMM run by an unprivileged user) cannot shrink its bounding set; that set only limits
//! what an `execve` could gain, and a confined thread can neither `execve` nor gain anything
//! through it (`no_new_privs` is set with the seccomp filter), so it is left as it is.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, two 32-bit words each.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// CAP_SETPCAP, the capability `PR_CAPBSET_DROP` requires.
const CAP_SETPCAP: u32 = 8;
/// Capability numbers are below 64 (two words of 32 bits).
const MAX_CAPS: u32 = 64;

/// Why the capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `capget` failed.
    #[error("capget: {0}")]
    Get(io::Error),
    /// `capset` failed.
    #[error("capset: {0}")]
    Set(io::Error),
    /// `prctl(PR_CAPBSET_DROP)` failed.
    #[error("prctl(PR_CAPBSET_DROP, {cap}): {source}")]
    BoundingDrop {
        /// The capability.
        cap: u32,
        /// Why.
        source: io::Error,
    },
    /// `prctl(PR_CAP_AMBIENT_CLEAR_ALL)` failed.
    #[error("prctl(PR_CAP_AMBIENT_CLEAR_ALL): {0}")]
    AmbientClear(io::Error),
    /// Some capability was still there after the drop.
    #[error("capabilities left after the drop: {0:?}")]
    Left(CapSets),
}

/// The capability sets of one thread, as 64-bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    /// 0: the calling thread.
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capget or capset (`nr`) for the calling thread with version 3's two words of `data`.
fn cap_syscall(nr: libc::c_long, data: &mut [CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capget and capset read the header and write or read two `CapData` words
    // (version 3), both valid for the call; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(nr, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's effective, permitted and inheritable sets.
pub fn current() -> Result<CapSets, CapsError> {
    let mut data = [CapData::default(); 2];
    cap_syscall(libc::SYS_capget, &mut data).map_err(CapsError::Get)?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Whether `cap` is in the calling thread's bounding set; `None` past the last capability
/// this kernel knows.
fn in_bounding_set(cap: u32) -> Option<bool> {
    // SAFETY: PR_CAPBSET_READ takes an integer and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
    match rc {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// The calling thread's bounding set as a mask.
pub fn bounding_set() -> u64 {
    (0..MAX_CAPS)
        .map_while(|cap| in_bounding_set(cap).map(|present| (cap, present)))
        .filter(|(_, present)| *present)
        .fold(0, |mask, (cap, _)| mask | (1u64 << cap))
}

/// Drops every capability of the calling thread: bounding (when it holds CAP_SETPCAP, see the
/// module's notes), ambient, inheritable, permitted and effective. Other threads keep theirs.
pub fn drop_all() -> Result<(), CapsError> {
    let before = current()?;
    if before.effective & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..MAX_CAPS {
            match in_bounding_set(cap) {
                None => break,
                Some(false) => {}
                Some(true) => {
                    // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory; it
                    // changes the calling thread's bounding set only.
                    let rc = unsafe {
                        libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                    };
                    if rc != 0 {
                        return Err(CapsError::BoundingDrop {
                            cap,
                            source: io::Error::last_os_error(),
                        });
                    }
                }
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT takes integers and touches no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel before 4.3, which has no ambient set.
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(CapsError::AmbientClear(e));
        }
    }
    // All three sets empty.
    cap_syscall(libc::SYS_capset, &mut [CapData::default(); 2]).map_err(CapsError::Set)?;
    let after = current()?;
    if after != CapSets::default() {
        return Err(CapsError::Left(after));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::tests::status_caps;

    #[test]
    fn a_thread_that_drops_keeps_nothing_and_the_others_keep_theirs() {
        let own_before = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let caps = std::thread::spawn(|| {
            drop_all().unwrap();
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        })
        .join()
        .unwrap();
        let caps = status_caps(&caps);
        for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(caps[key], 0, "{key} of the thread that dropped: {caps:?}");
        }
        let own_after = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_eq!(
            status_caps(&own_before),
            status_caps(&own_after),
            "the test's own thread keeps its capabilities"
        );
        if status_caps(&own_before)["CapEff"] & (1 << CAP_SETPCAP) != 0 {
            assert_eq!(caps["CapBnd"], 0, "bounding set emptied: {caps:?}");
        }
    }

    #[test]
    fn dropping_twice_is_fine() {
        std::thread::spawn(|| {
            drop_all().unwrap();
            drop_all().unwrap();
            assert_eq!(current().unwrap(), CapSets::default());
        })
        .join()
        .unwrap();
    }
}
