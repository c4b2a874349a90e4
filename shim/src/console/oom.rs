//! The guest kernel's OOM reports on the console, read incrementally: the
//! scanner remembers which file (inode) it read and how far, reads only the
//! bytes added since, finishes a rotated file from `console.log.1` before it
//! starts the new one, starts over on a truncation, and carries a line split
//! across reads (or across the rotation) to the next read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::rotated_path;

/// Bytes read at a time.
const CHUNK: usize = 16 * 1024;
/// Longer lines are no kernel OOM report: they are skipped, not buffered.
const MAX_LINE: usize = 4096;

/// The container a kernel OOM report line is about: the last component of
/// `task_memcg=` (the agent names container cgroups after the container).
pub fn oom_container(line: &str) -> Option<String> {
    if !line.contains("oom-kill:") {
        return None;
    }
    let memcg = line
        .split(',')
        .find_map(|field| field.trim().strip_prefix("task_memcg="))?;
    let id = memcg.trim_end_matches('/').rsplit('/').next()?;
    (!id.is_empty()).then(|| id.to_string())
}

/// Cuts a byte stream into lines, keeping the unfinished one (up to
/// [`MAX_LINE`] bytes) for the next piece.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// The current line passed MAX_LINE: drop it up to its newline.
    overlong: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; calls `line` with each line completed by them.
    pub fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if !self.overlong && self.partial.len() + end <= MAX_LINE {
                self.partial.extend_from_slice(&rest[..end]);
                line(&self.partial);
            }
            self.partial.clear();
            self.overlong = false;
            rest = &rest[end + 1..];
        }
        if self.overlong || self.partial.len() + rest.len() > MAX_LINE {
            self.partial.clear();
            self.overlong = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// Forgets the unfinished line.
    pub fn clear(&mut self) {
        self.partial.clear();
        self.overlong = false;
    }
}

#[derive(Debug, Default)]
struct Position {
    /// The inode of the file being read.
    inode: Option<u64>,
    /// Bytes of it already read.
    offset: u64,
    lines: LineSplitter,
}

/// Reads the guest console from where it last stopped and returns the
/// containers the kernel OOM-killed in since then. Shared by the background
/// watcher and the exit path (which looks once more before it reports an
/// exit, so that the OOM event comes first).
#[derive(Debug)]
pub struct OomScanner {
    path: PathBuf,
    position: Mutex<Position>,
}

impl OomScanner {
    /// A scanner of the console at `path` (rotated to `<path>.1`), from its beginning.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            position: Mutex::new(Position::default()),
        }
    }

    /// Container ids of OOM kills reported since the last scan.
    pub fn scan(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut pos = self.position.lock().unwrap_or_else(|p| p.into_inner());
        // Open first, then look at what was opened: a rotation in between is seen next time.
        let Ok(file) = File::open(&self.path) else {
            return found;
        };
        let Ok(meta) = file.metadata() else {
            return found;
        };
        if pos.inode != Some(meta.ino()) {
            if let Some(old) = pos.inode {
                // Rotated: the rest of the file being read is console.log.1 now.
                if let Ok(previous) = File::open(rotated_path(&self.path)) {
                    if previous.metadata().is_ok_and(|m| m.ino() == old) {
                        let from = pos.offset;
                        let _ = read_lines(previous, from, &mut pos.lines, &mut found);
                    }
                }
            }
            pos.inode = Some(meta.ino());
            pos.offset = 0;
        } else if meta.len() < pos.offset {
            // Truncated in place: start over; the unfinished line is gone.
            pos.offset = 0;
            pos.lines.clear();
        }
        let from = pos.offset;
        match read_lines(file, from, &mut pos.lines, &mut found) {
            Ok(to) => pos.offset = to,
            Err(e) => tracing::debug!("reading {}: {e}", self.path.display()),
        }
        found
    }

    /// The console file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads `file` from `from` to its end through `lines`, collecting OOM
/// reports; returns the offset reached.
fn read_lines(
    mut file: File,
    from: u64,
    lines: &mut LineSplitter,
    found: &mut Vec<String>,
) -> io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut offset = from;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(offset);
        }
        offset += n as u64;
        lines.feed(&buf[..n], |line| {
            if let Some(id) = oom_container(&String::from_utf8_lossy(line)) {
                tracing::info!(container = %id, "guest kernel OOM kill");
                found.push(id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::CappedLog;
    use super::*;

    fn kill(id: &str) -> String {
        format!("[ 1.0] oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/ns/{id},task_memcg=/ns/{id},task=dd,pid=9,uid=0\n")
    }

    #[test]
    fn oom_lines_name_the_container() {
        let line = "[    5.1] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pulse/c1,task_memcg=/pulse/c1,task=sh,pid=80,uid=0";
        assert_eq!(oom_container(line).as_deref(), Some("c1"));
        assert_eq!(
            oom_container("Memory cgroup out of memory: Killed process 80"),
            None
        );
    }

    #[test]
    fn the_oom_scanner_reads_each_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let scanner = OomScanner::new(p.clone());
        assert!(scanner.scan().is_empty(), "no console yet");
        std::fs::write(&p, format!("boot\n{}[ 1.1] oom-k", kill("a"))).unwrap();
        assert_eq!(scanner.scan(), ["a"]);
        assert!(scanner.scan().is_empty());
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(&kill("b")["[ 1.0] oom-k".len()..]);
        std::fs::write(&p, text).unwrap();
        assert_eq!(scanner.scan(), ["b"], "a line split across two reads");
    }

    #[test]
    fn the_scanner_follows_the_log_across_rotations_and_reads_only_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let cap = 300;
        let mut log = CappedLog::create(&p, cap).unwrap();
        let scanner = OomScanner::new(p.clone());
        let noise = "x".repeat(60) + "\n";

        log.write(format!("{noise}{}", kill("a")).as_bytes())
            .unwrap();
        assert_eq!(scanner.scan(), ["a"]);
        // A report split by the rotation: its start ends console.log.1.
        let b = kill("b");
        log.write(noise.repeat(2).as_bytes()).unwrap();
        log.write(b.as_bytes()).unwrap();
        assert!(std::fs::metadata(rotated_path(&p)).is_ok(), "rotated");
        log.write(format!("{}{noise}", kill("c")).as_bytes())
            .unwrap();
        assert_eq!(scanner.scan(), ["b", "c"], "rest of .1, then the new file");
        assert!(scanner.scan().is_empty(), "each report once");

        // Only new bytes are read: the offset is the file's length.
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(scanner.position.lock().unwrap().offset, len);

        // Truncation in place starts over.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        std::fs::write(&p, kill("d")).unwrap();
        assert_eq!(scanner.scan(), ["d"]);
    }

    #[test]
    fn overlong_lines_are_skipped_without_buffering_them() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.feed(&vec![b'y'; MAX_LINE * 3], |l| lines.push(l.to_vec()));
        assert!(splitter.partial.is_empty() && splitter.overlong);
        splitter.feed(b"yyy\nshort\npart", |l| lines.push(l.to_vec()));
        splitter.feed(b"ial\n", |l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"short".to_vec(), b"partial".to_vec()]);
    }
}
