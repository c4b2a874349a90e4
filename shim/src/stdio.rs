//! A process's stdio: containerd's FIFOs on the host, the agent's
//! ReadStdout/ReadStderr/WriteStdin/CloseStdin in the guest, and a pump task
//! per stream in between.
//!
//! FIFOs are opened without blocking. Output FIFOs are opened read-write (as
//! containerd's own shims do), so opening never fails for want of a reader
//! and a client that comes and goes does not break the pump. The stdin FIFO
//! is opened read-only and non-blocking: on Linux it reports neither data nor
//! hang-up until a writer has come, so an early open does not read as EOF.
//! Like containerd's runc shim, the shim also holds a write end of the stdin
//! FIFO until CloseIO: a client that detaches (`kubectl attach`, a `ctr`
//! that exits) does not end the container's stdin; CloseIO does, once every
//! client's writer is gone too.

use std::path::Path;
use std::time::Duration;

use pulse_protocols::containers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::agent::Agent;

/// Bytes asked for per ReadStdout/ReadStderr.
const READ_CHUNK: u32 = 64 * 1024;
/// Bytes sent per WriteStdin.
const WRITE_CHUNK: usize = 32 * 1024;

/// containerd's stdio paths of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO, or empty.
    pub stdin: String,
    /// stdout FIFO, or empty.
    pub stdout: String,
    /// stderr FIFO, or empty (always empty with a terminal).
    pub stderr: String,
    /// A terminal: one output stream.
    pub terminal: bool,
}

/// Which output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// stdout (or the terminal).
    Stdout,
    /// stderr.
    Stderr,
}

/// Where a FIFO path points: containerd passes plain paths, sometimes with a
/// `fifo://` or `file://` scheme.
pub fn fifo_path(uri: &str) -> &str {
    uri.strip_prefix("fifo://")
        .or_else(|| uri.strip_prefix("file://"))
        .unwrap_or(uri)
}

/// Opens an output FIFO (or a plain file, for log files) for writing without blocking.
pub fn open_output(path: &str) -> std::io::Result<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> {
    let path = fifo_path(path);
    let meta = std::fs::metadata(path);
    let is_fifo = meta
        .as_ref()
        .map(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_fifo()
        })
        .unwrap_or(false);
    if is_fifo {
        let sender = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)?;
        Ok(Box::new(sender))
    } else {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }
}

/// Opens the stdin FIFO for reading without blocking.
pub fn open_stdin(path: &str) -> std::io::Result<pipe::Receiver> {
    pipe::OpenOptions::new().open_receiver(fifo_path(path))
}

/// The shim's own write end of a stdin FIFO (opened once the read end is): while it is open
/// the reader sees no EOF. Dropping it is CloseIO's half of ending stdin.
pub fn hold_stdin(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo_path(path))
}

/// A process's stdin pump and the shim's hold on its FIFO.
pub struct StdinPump {
    /// Copies the FIFO to the guest, then closes the process's stdin there.
    pub task: JoinHandle<()>,
    /// Dropped by CloseIO.
    pub hold: Option<std::fs::File>,
}

/// Copies one output stream of a process from the agent to `path` until the
/// agent reports EOF (every writer in the guest is gone and all was read).
/// With an empty path the output is still read, and dropped, so the process
/// never blocks on a full pipe.
pub fn spawn_output(
    agent: Agent,
    container: String,
    exec: String,
    which: Output,
    path: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sink = if path.is_empty() {
            None
        } else {
            match open_output(&path) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(%container, %exec, ?which, "opening {path}: {e}");
                    None
                }
            }
        };
        let client = agent.containers();
        loop {
            let req = containers::ReadOutputRequest {
                container_id: container.clone(),
                exec_id: exec.clone(),
                max_bytes: READ_CHUNK,
                ..Default::default()
            };
            let read = async {
                match which {
                    Output::Stdout => client.read_stdout(agent.waiting_ctx(), &req).await,
                    Output::Stderr => client.read_stderr(agent.waiting_ctx(), &req).await,
                }
            };
            // A read waits without a deadline: a VM that stopped would keep it for good.
            let resp = tokio::select! {
                biased;
                resp = read => resp,
                why = agent.until_vm_stopped() => {
                    tracing::debug!(%container, %exec, ?which, "output ends: the VM stopped: {why}");
                    break;
                }
            };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%container, %exec, ?which, "output ends: {e}");
                    break;
                }
            };
            if resp.eof {
                break;
            }
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.write_all(&resp.data).await {
                    tracing::debug!(%container, %exec, ?which, "output reader gone: {e}");
                    sink = None;
                }
            }
        }
        if let Some(mut s) = sink {
            let _ = s.flush().await;
        }
    })
}

/// Copies the stdin FIFO to the process until its writers (the client's and the shim's
/// hold) are all closed, then closes the process's stdin.
pub fn spawn_stdin(
    agent: Agent,
    container: String,
    exec: String,
    path: String,
) -> std::io::Result<StdinPump> {
    let mut fifo = open_stdin(&path)?;
    let hold = hold_stdin(&path)?;
    let task = tokio::spawn(async move {
        let client = agent.containers();
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            let n = match fifo.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(%container, %exec, "stdin read: {e}");
                    break;
                }
            };
            let req = containers::WriteStdinRequest {
                container_id: container.clone(),
                exec_id: exec.clone(),
                data: buf[..n].to_vec(),
                ..Default::default()
            };
            if let Err(e) = client.write_stdin(agent.ctx(), &req).await {
                tracing::debug!(%container, %exec, "stdin write: {e}");
                break;
            }
        }
        close_stdin(&agent, &container, &exec).await;
    });
    Ok(StdinPump {
        task,
        hold: Some(hold),
    })
}

/// Closes a process's stdin in the guest (errors are only logged: the process
/// may be gone).
pub async fn close_stdin(agent: &Agent, container: &str, exec: &str) {
    let req = containers::CloseStdinRequest {
        container_id: container.to_string(),
        exec_id: exec.to_string(),
        ..Default::default()
    };
    if let Err(e) = agent.containers().close_stdin(agent.ctx(), &req).await {
        tracing::debug!(%container, %exec, "close stdin: {e}");
    }
}

/// The pump tasks of one process.
#[derive(Default)]
pub struct Pumps {
    /// stdout/stderr.
    pub outputs: Vec<JoinHandle<()>>,
    /// stdin.
    pub stdin: Option<StdinPump>,
}

impl Pumps {
    /// Starts the pumps for `paths`.
    pub fn start(agent: &Agent, container: &str, exec: &str, paths: &StdioPaths) -> Pumps {
        let mut pumps = Pumps::default();
        // A terminal's output is one stream, its stdout.
        let mut outputs = vec![(Output::Stdout, &paths.stdout)];
        if !paths.terminal {
            outputs.push((Output::Stderr, &paths.stderr));
        }
        for (output, path) in outputs {
            let pump = spawn_output(
                agent.clone(),
                container.into(),
                exec.into(),
                output,
                path.clone(),
            );
            pumps.outputs.push(pump);
        }
        if !paths.stdin.is_empty() {
            match spawn_stdin(
                agent.clone(),
                container.into(),
                exec.into(),
                paths.stdin.clone(),
            ) {
                Ok(h) => pumps.stdin = Some(h),
                Err(e) => tracing::warn!(%container, %exec, "opening stdin {}: {e}", paths.stdin),
            }
        }
        pumps
    }

    /// Waits up to `limit` for the outputs to reach EOF, then stops what is left.
    pub async fn drain(&mut self, limit: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
        if tokio::time::timeout(limit, futures_join(outputs))
            .await
            .is_err()
        {
            tracing::debug!("output not drained within {limit:?}");
            for a in aborts {
                a.abort();
            }
        }
    }

    /// Stops everything now.
    pub fn abort(&mut self) {
        for h in self.outputs.drain(..) {
            h.abort();
        }
        if let Some(p) = self.stdin.take() {
            p.task.abort();
        }
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        self.abort();
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Whether `path` is a FIFO.
pub fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn schemes_are_stripped() {
        assert_eq!(fifo_path("fifo:///a/b"), "/a/b");
        assert_eq!(fifo_path("/a/b"), "/a/b");
        assert_eq!(fifo_path("file:///l"), "/l");
    }

    #[tokio::test]
    async fn stdin_fifo_is_not_eof_before_its_writer_came() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        mkfifo(&path);
        assert!(is_fifo(&path));
        let mut rx = open_stdin(path.to_str().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(150), rx.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "no writer yet: the read must wait, got {early:?}"
        );
        let writer = std::thread::spawn({
            let path = path.clone();
            move || std::fs::write(path, b"hello").unwrap()
        });
        let mut got = Vec::new();
        loop {
            let n = rx.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.join().unwrap();
        assert_eq!(got, b"hello", "data, then EOF once the writer closed");
    }

    #[tokio::test]
    async fn the_shims_hold_keeps_stdin_open_after_the_client_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        mkfifo(&path);
        let p = path.to_str().unwrap();
        let mut rx = open_stdin(p).unwrap();
        let hold = hold_stdin(p).unwrap();
        // A client writes and goes away.
        std::fs::write(&path, b"first").unwrap();
        let mut buf = [0u8; 16];
        let n = rx.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
        let after = tokio::time::timeout(Duration::from_millis(150), rx.read(&mut buf)).await;
        assert!(after.is_err(), "no EOF while the shim holds: {after:?}");
        // A second client (a new attach) still reaches the process.
        std::fs::write(&path, b"again").unwrap();
        let n = rx.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again");
        // CloseIO drops the hold: EOF.
        drop(hold);
        assert_eq!(rx.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn output_fifo_opens_without_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        mkfifo(&path);
        let mut w = open_output(path.to_str().unwrap()).unwrap();
        w.write_all(b"x").await.unwrap();
        let file = dir.path().join("log");
        let mut w = open_output(file.to_str().unwrap()).unwrap();
        w.write_all(b"line\n").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"line\n");
    }
}
