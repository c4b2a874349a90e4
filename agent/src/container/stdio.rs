//! A process's stdio as the agent holds it: pipes, or a terminal's master.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Mutex;

use crate::helper::StdioFds;

/// The end-of-file character a terminal's line discipline turns into EOF.
const VEOF_CHAR: u8 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("creating stdio: {0}")]
    Setup(#[source] std::io::Error),
    #[error("stdin is closed")]
    StdinClosed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Which output stream.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub enum Stdio {
    Pipes {
        stdin: Mutex<Option<pipe::Sender>>,
        stdout: Mutex<pipe::Receiver>,
        stderr: Mutex<pipe::Receiver>,
    },
    /// stdout and stderr both arrive on the master; stderr reads as EOF.
    Terminal {
        master: AsyncFd<OwnedFd>,
        read_lock: Mutex<()>,
        write_lock: Mutex<bool>,
    },
}

impl Stdio {
    /// Three pipes: the container's ends for the helper, ours for the agent.
    pub fn pipes() -> Result<(StdioFds, Stdio), StdioError> {
        let pair = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::Setup(e.into()));
        let (in_r, in_w) = pair()?;
        let (out_r, out_w) = pair()?;
        let (err_r, err_w) = pair()?;
        let stdio = Stdio::Pipes {
            stdin: Mutex::new(Some(
                pipe::Sender::from_owned_fd(in_w).map_err(StdioError::Setup)?,
            )),
            stdout: Mutex::new(pipe::Receiver::from_owned_fd(out_r).map_err(StdioError::Setup)?),
            stderr: Mutex::new(pipe::Receiver::from_owned_fd(err_r).map_err(StdioError::Setup)?),
        };
        Ok((
            StdioFds {
                fds: [Some(in_r), Some(out_w), Some(err_w)],
            },
            stdio,
        ))
    }

    /// Wraps a terminal's master (received from the console socket).
    pub fn terminal(master: OwnedFd) -> Result<Stdio, StdioError> {
        let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|e| StdioError::Setup(e.into()))?;
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| StdioError::Setup(e.into()))?;
        Ok(Stdio::Terminal {
            // SAFETY: the OwnedFd moves into the AsyncFd, which owns it (and
            // so keeps it open, unchanged) until the AsyncFd is dropped.
            master: unsafe { AsyncFd::register(master) }
                .map_err(|e| StdioError::Setup(std::io::Error::other(e.to_string())))?,
            read_lock: Mutex::new(()),
            write_lock: Mutex::new(true),
        })
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Stdio::Terminal { .. })
    }

    /// Reads up to `max` bytes; an empty result means end of stream.
    pub async fn read(&self, stream: Stream, max: usize) -> Result<Vec<u8>, StdioError> {
        let mut buf = vec![0u8; max];
        let n = match (self, stream) {
            (Stdio::Pipes { stdout, .. }, Stream::Stdout) => {
                stdout.lock().await.read(&mut buf).await?
            }
            (Stdio::Pipes { stderr, .. }, Stream::Stderr) => {
                stderr.lock().await.read(&mut buf).await?
            }
            (Stdio::Terminal { .. }, Stream::Stderr) => 0,
            (
                Stdio::Terminal {
                    master, read_lock, ..
                },
                Stream::Stdout,
            ) => {
                let _serialized = read_lock.lock().await;
                loop {
                    let mut ready = master.readable().await?;
                    match ready.try_io(|fd| {
                        nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(Into::into)
                    }) {
                        Ok(Ok(n)) => break n,
                        // The slave side is closed once every process holding it exited.
                        Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => break 0,
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_would_block) => continue,
                    }
                }
            }
        };
        buf.truncate(n);
        Ok(buf)
    }

    /// Writes all of `data` to stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        match self {
            Stdio::Pipes { stdin, .. } => {
                let mut stdin = stdin.lock().await;
                let sender = stdin.as_mut().ok_or(StdioError::StdinClosed)?;
                sender.write_all(data).await?;
                Ok(data.len())
            }
            Stdio::Terminal {
                master, write_lock, ..
            } => {
                let open = write_lock.lock().await;
                if !*open {
                    return Err(StdioError::StdinClosed);
                }
                write_all_fd(master, data).await?;
                Ok(data.len())
            }
        }
    }

    /// Closes stdin: the pipe's write end, or an EOF character on a terminal.
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        match self {
            Stdio::Pipes { stdin, .. } => {
                stdin.lock().await.take();
                Ok(())
            }
            Stdio::Terminal {
                master, write_lock, ..
            } => {
                let mut open = write_lock.lock().await;
                if *open {
                    write_all_fd(master, &[VEOF_CHAR]).await?;
                    *open = false;
                }
                Ok(())
            }
        }
    }

    /// Sets the terminal's window size; None when the process has no terminal.
    pub fn resize(&self, rows: u16, columns: u16) -> Option<Result<(), StdioError>> {
        let Stdio::Terminal { master, .. } = self else {
            return None;
        };
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points
        // to a live, initialised struct; the fd is a terminal master we own.
        let rc = unsafe { libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
        Some(if rc < 0 {
            Err(std::io::Error::last_os_error().into())
        } else {
            Ok(())
        })
    }
}

async fn write_all_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut ready = fd.writable().await?;
        match ready
            .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
