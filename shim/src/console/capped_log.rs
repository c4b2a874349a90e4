//! A log file with a size cap: when the next byte would pass the cap, the
//! file becomes `<name>.1` (replacing the one before) and a new, empty file
//! starts. Both are 0600.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where a log's previous part goes at rotation: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// A log of at most `cap` bytes plus its previous part.
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: File,
    len: u64,
}

impl CappedLog {
    /// Creates (or truncates) the log at `path`; `cap` is at least 1 byte.
    pub fn create(path: &Path, cap: u64) -> io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            cap: cap.max(1),
            file: crate::private_fs::create_file(path)?,
            len: 0,
        })
    }

    /// Appends `bytes`, rotating whenever the file is full. A line may be
    /// split between the two files: readers carry it across (see `oom`).
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.len >= self.cap {
                self.rotate()?;
            }
            let room = usize::try_from(self.cap - self.len).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.file.write_all(now)?;
            self.len += now.len() as u64;
            bytes = rest;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = crate::private_fs::create_file(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_the_cap_and_keeps_one_previous_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = CappedLog::create(&path, 10).unwrap();
        log.write(b"0123456").unwrap();
        log.write(b"789abc").unwrap();
        assert_eq!(std::fs::read(rotated_path(&path)).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        log.write(&[b'x'; 25]).unwrap();
        assert_eq!(std::fs::read(rotated_path(&path)).unwrap(), [b'x'; 10]);
        assert_eq!(std::fs::read(&path).unwrap(), [b'x'; 8]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "console.log and console.log.1 only"
        );
        for p in [path.clone(), rotated_path(&path)] {
            assert_eq!(crate::private_fs::mode_of(&p).unwrap(), 0o600);
        }
    }
}
