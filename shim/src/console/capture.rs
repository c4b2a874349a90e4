//! A pipe whose write end goes to the VMM (the embedded VMM opens it by its
//! `/proc/self/fd` path, QEMU gets it as its stdout) and whose read end a
//! shim thread copies into a [`CappedLog`]. The thread ends when every write
//! end is closed: when the VM is gone.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use super::CappedLog;

/// Bytes moved per read.
const CHUNK: usize = 16 * 1024;

/// The running copy of one console into its log.
pub struct ConsoleCapture {
    // In a Mutex only to make the capture Sync (a backend is shared); never contended.
    done: Mutex<mpsc::Receiver<()>>,
}

impl ConsoleCapture {
    /// Creates the log at `path` (capped at `cap` bytes) and the pipe; returns
    /// the capture and the pipe's write end, for the VMM.
    pub fn start(path: &Path, cap: u64) -> io::Result<(ConsoleCapture, OwnedFd)> {
        let mut log = CappedLog::create(path, cap)?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (tx, done) = mpsc::channel();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                copy(File::from(read), &mut log, &name);
                let _ = tx.send(());
            })?;
        Ok((
            ConsoleCapture {
                done: Mutex::new(done),
            },
            write,
        ))
    }

    /// Waits up to `limit` for the copy to reach the end of the pipe (the VM
    /// must be gone); returns whether it did.
    pub fn finish(self, limit: Duration) -> bool {
        let done = self.done.into_inner().unwrap_or_else(|p| p.into_inner());
        done.recv_timeout(limit).is_ok()
    }
}

/// How long each copy of a stopped VM's logs gets to drain its pipe.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// Waits for each of `captures` (the VM gone) to reach the end of its pipe, up to
/// [`FINISH_WAIT`] each, so that the logs are complete; warns of one that did not.
pub fn finish_all(captures: &mut Vec<ConsoleCapture>) {
    for capture in captures.drain(..) {
        if !capture.finish(FINISH_WAIT) {
            tracing::warn!("a log copy did not finish within {FINISH_WAIT:?}");
        }
    }
}

/// The path through which this process opens `fd` anew (for a VMM that takes
/// a file name).
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn copy(mut pipe: File, log: &mut CappedLog, name: &str) {
    let mut buf = vec![0u8; CHUNK];
    let mut failed = false;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading the guest console for {name}: {e}");
                return;
            }
        };
        // On a write error the pipe is still drained, so the VMM never blocks on it.
        if let Err(e) = log.write(&buf[..n]) {
            if !failed {
                tracing::warn!("writing {name}: {e}; guest console output is dropped");
                failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn what_the_vmm_writes_lands_in_the_capped_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (capture, write_end) = ConsoleCapture::start(&path, 1000).unwrap();
        // As the embedded VMM does: open the path it was given, write, close.
        let mut vmm = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(fd_path(&write_end))
            .unwrap();
        drop(write_end);
        for i in 0..300 {
            writeln!(vmm, "line {i:04}").unwrap();
        }
        drop(vmm);
        assert!(
            capture.finish(Duration::from_secs(10)),
            "EOF once the VMM closed it"
        );
        let now = std::fs::read_to_string(&path).unwrap();
        let before = std::fs::read_to_string(super::super::rotated_path(&path)).unwrap();
        assert!(now.len() <= 1000 && before.len() == 1000);
        assert!(now.ends_with("line 0299\n"), "{now}");
    }
}
