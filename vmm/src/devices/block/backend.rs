//! The raw-file backend of virtio-blk: positioned reads and writes (so queues on different
//! threads never share a file offset), flush, hole punching and zeroing.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;

/// Backend errors.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Opening the file failed.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An I/O call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> BackendError {
    move |source| BackendError::Io { op, source }
}

/// A byte offset or length as the kernel's signed `off_t`; past `i64::MAX`, `EINVAL` (no file
/// is that large, so the kernel would refuse it too).
fn off_t(value: u64, op: &'static str) -> Result<i64, BackendError> {
    i64::try_from(value).map_err(|_| BackendError::Io {
        op,
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// A disk image file.
#[derive(Debug)]
pub struct Backend {
    file: File,
    size: u64,
    read_only: bool,
}

impl Backend {
    /// Opens `path`, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BackendError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let size = file.metadata().map_err(io("stat"))?.len();
        Ok(Self {
            file,
            size,
            read_only,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.file.read_exact_at(buf, offset).map_err(io("pread"))
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BackendError> {
        self.file.write_all_at(buf, offset).map_err(io("pwrite"))
    }

    /// Makes written data durable.
    pub fn flush(&self) -> Result<(), BackendError> {
        self.file.sync_data().map_err(io("fdatasync"))
    }

    /// Deallocates a range; it reads back as zeroes.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if len == 0 {
            return Ok(());
        }
        fallocate(
            self.file.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off_t(offset, "fallocate(PUNCH_HOLE)")?,
            off_t(len, "fallocate(PUNCH_HOLE)")?,
        )
        .map_err(|e| BackendError::Io {
            op: "fallocate(PUNCH_HOLE)",
            source: e.into(),
        })
    }

    /// Writes zeroes over a range, keeping it allocated.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if len == 0 {
            return Ok(());
        }
        match fallocate(
            self.file.as_raw_fd(),
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off_t(offset, "fallocate(ZERO_RANGE)")?,
            off_t(len, "fallocate(ZERO_RANGE)")?,
        ) {
            Ok(()) => Ok(()),
            // Not every filesystem zeroes ranges: write the zeroes instead.
            Err(_) => {
                let zeroes = vec![0u8; (len.min(1 << 20)) as usize];
                let mut done = 0;
                while done < len {
                    let n = usize::try_from(len - done)
                        .map_or(zeroes.len(), |left| left.min(zeroes.len()));
                    self.write_at(&zeroes[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }

    /// A second handle on the same file, for another queue's worker.
    pub fn try_clone(&self) -> Result<Self, BackendError> {
        Ok(Self {
            file: self.file.try_clone().map_err(io("dup"))?,
            size: self.size,
            read_only: self.read_only,
        })
    }
}
