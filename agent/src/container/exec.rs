//! Processes in a running container: exec, signals, exits, stdio and the terminal's size.

use std::sync::Arc;

use libcontainer::signal::Signal;

use crate::helper::HelperRequest;
use crate::reaper::ExitStatus;

use super::{
    check_exec_cwd, check_id, runtime_err, spec, ContainerError, Manager, Phase, Result,
    StdioError, Stream, MAX_READ_BYTES, MAX_WRITE_BYTES,
};

impl Manager {
    pub async fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<u32> {
        check_id("exec", exec_id).map_err(ContainerError::InvalidArgument)?;
        let container = self.get(id).await?;
        let process = spec::parse_process(process_json)?;
        let _op = container.ops.lock().await;
        if container.init.exit_status().is_some() || *container.phase.lock().await != Phase::Running
        {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        if container.execs.lock().await.contains_key(exec_id) {
            return Err(ContainerError::AlreadyExists(format!(
                "exec {exec_id:?} already exists in container {id:?}"
            )));
        }
        check_exec_cwd(container.init.pid, exec_id, &process)?;
        // libcontainer's exec leaves the container's seccomp profile out: the executor loads it.
        let profile = oci_spec::runtime::Spec::load(container.bundle.join("config.json"))
            .map_err(|e| ContainerError::Runtime(format!("reading the container's spec: {e}")))?
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        let (process, seccomp) = match profile {
            Some(profile) => {
                let (process, seccomp) = crate::exec_seccomp::prepare(process, profile);
                (process, Some(seccomp))
            }
            None => (process, None),
        };
        let terminal = process.terminal().unwrap_or(false);
        let process_file = container.bundle.join(format!("exec-{exec_id}.json"));
        let body = serde_json::to_vec(&process)
            .map_err(|e| ContainerError::Runtime(format!("encoding the process: {e}")))?;
        std::fs::write(&process_file, body)
            .map_err(|e| ContainerError::Runtime(format!("writing the process: {e}")))?;
        let state_root = self.state_root();
        let result = self
            .spawn_process(terminal, |console_socket, stdio| HelperRequest::Exec {
                id: id.to_string(),
                state_root,
                process_json: process_file.clone(),
                console_socket,
                stdio,
                seccomp: seccomp.clone().map(Box::new),
            })
            .await;
        let _ = std::fs::remove_file(&process_file);
        let process = result?;
        let pid = process.pid.cast_unsigned();
        container
            .execs
            .lock()
            .await
            .insert(exec_id.to_string(), Arc::new(process));
        Ok(pid)
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ContainerError::InvalidArgument(format!("{signal} is not a signal")))?;
        if all {
            if !exec_id.is_empty() {
                return Err(ContainerError::InvalidArgument(
                    "`all` applies to the container, not to an exec".into(),
                ));
            }
            self.get(id).await?;
            let cid = id.to_string();
            return self
                .blocking(move |root| {
                    let signal = Signal::try_from(sig)
                        .map_err(|e| ContainerError::InvalidArgument(e.to_string()))?;
                    Self::youki(root, &cid)?
                        .kill(signal, true)
                        .map_err(runtime_err("signalling the container"))
                })
                .await;
        }
        let process = self.process(id, exec_id).await?;
        process
            .signal(sig)
            .map_err(|e| ContainerError::Runtime(format!("sending signal {sig}: {e}")))
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<(ExitStatus, u32)> {
        let process = self.process(id, exec_id).await?;
        Ok((process.wait().await, process.pid.cast_unsigned()))
    }

    pub async fn read(&self, id: &str, exec_id: &str, stream: Stream, max: u32) -> Result<Vec<u8>> {
        if max == 0 || max > MAX_READ_BYTES {
            return Err(ContainerError::InvalidArgument(format!(
                "max_bytes must be between 1 and {MAX_READ_BYTES}, not {max}"
            )));
        }
        let process = self.process(id, exec_id).await?;
        process
            .stdio
            .read(stream, max as usize)
            .await
            .map_err(|e| ContainerError::Runtime(format!("reading output: {e}")))
    }

    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        if data.len() > MAX_WRITE_BYTES {
            return Err(ContainerError::InvalidArgument(format!(
                "at most {MAX_WRITE_BYTES} bytes per write, not {}",
                data.len()
            )));
        }
        let process = self.process(id, exec_id).await?;
        process.stdio.write_stdin(data).await.map_err(|e| match e {
            StdioError::StdinClosed => {
                ContainerError::FailedPrecondition(format!("stdin of {id:?}/{exec_id:?} is closed"))
            }
            e => ContainerError::Runtime(format!("writing stdin: {e}")),
        })
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let process = self.process(id, exec_id).await?;
        process
            .stdio
            .close_stdin()
            .await
            .map_err(|e| ContainerError::Runtime(format!("closing stdin: {e}")))
    }

    pub async fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(ContainerError::InvalidArgument(format!(
                "terminal size {rows}x{columns} is out of range"
            )));
        };
        let process = self.process(id, exec_id).await?;
        match process.stdio.resize(rows, columns) {
            None => Err(ContainerError::FailedPrecondition(format!(
                "{id:?}/{exec_id:?} has no terminal"
            ))),
            Some(r) => r.map_err(|e| ContainerError::Runtime(format!("resizing: {e}"))),
        }
    }
}
