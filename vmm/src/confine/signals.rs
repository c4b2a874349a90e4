//! Keeping the embedder's signals off VMM threads.
//!
//! A signal sent to the process goes to any thread that does not block it, and its handler
//! runs there: on a VMM thread it would run the embedder's code (tokio's SIGCHLD handler, say)
//! under that thread's seccomp filter. So each VMM thread blocks every signal except those the
//! kernel raises for what the thread itself does (faults, SIGSYS from its filter, SIGABRT from
//! `abort`) and, on vCPUs, the kick signal that makes KVM_RUN return. Process signals then go
//! to the embedder's threads. (glibc keeps its two internal signals unblockable; see
//! `docs/confinement.md` on credential changes.)

use std::io;

use super::ThreadKind;

/// Signals left unblocked on every VMM thread: the synchronous ones.
const SYNCHRONOUS: [libc::c_int; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
];

/// Blocks, in the calling thread, every signal a thread of `kind` does not take.
pub fn block_others(kind: ThreadKind) -> io::Result<()> {
    // SAFETY: the set is initialised by sigfillset before use; pthread_sigmask changes the
    // calling thread's mask only and gets valid pointers (a null old set).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for signal in SYNCHRONOUS {
            libc::sigdelset(&mut set, signal);
        }
        if kind == ThreadKind::Vcpu {
            libc::sigdelset(&mut set, crate::vcpu::kick_signal());
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(signal: libc::c_int) -> bool {
        // SAFETY: reads the calling thread's mask into a local set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            libc::sigismember(&set, signal) == 1
        }
    }

    #[test]
    fn a_vcpu_takes_only_its_kick_and_faults() {
        std::thread::spawn(|| {
            block_others(ThreadKind::Vcpu).unwrap();
            for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
                assert!(blocked(s), "{s}");
            }
            assert!(!blocked(crate::vcpu::kick_signal()));
            assert!(!blocked(libc::SIGSEGV) && !blocked(libc::SIGSYS));
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            block_others(ThreadKind::Block).unwrap();
            assert!(blocked(crate::vcpu::kick_signal()));
            assert!(!blocked(libc::SIGABRT));
        })
        .join()
        .unwrap();
        assert!(
            !blocked(libc::SIGCHLD),
            "the test's own thread is untouched"
        );
    }
}
