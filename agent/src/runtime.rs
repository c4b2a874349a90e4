//! libcontainer calls that clone processes; they run only in the helper
//! (see [`crate::helper`]).

use std::fmt::Write as _;
use std::io;
use std::sync::{Arc, Mutex};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use tracing_subscriber::fmt::MakeWriter;

use crate::exec_seccomp::ExecSeccomp;
use crate::helper::{inherited_stdio, HelperRequest, HelperResponse};
use crate::workload::OrderedEnvExecutor;

/// Performs one create or exec request; called in the helper process.
pub fn execute(request: HelperRequest) -> HelperResponse {
    let log = ErrorLog::install();
    let result = match request {
        HelperRequest::Create {
            id,
            bundle,
            state_root,
            console_socket,
            stdio,
        } => with_stdio(new_builder(id, None), stdio, console_socket)
            .with_root_path(state_root)
            .and_then(|b| {
                b.validate_id()?
                    .as_init(bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    .as_sibling(true)
                    .build()
            })
            .and_then(|container| {
                container
                    .pid()
                    .map(|p| p.as_raw())
                    .ok_or_else(|| libcontainer::error::LibcontainerError::Other("no pid".into()))
            }),
        HelperRequest::Exec {
            id,
            state_root,
            process_json,
            console_socket,
            stdio,
            seccomp,
        } => with_stdio(new_builder(id, seccomp), stdio, console_socket)
            .with_root_path(state_root)
            .and_then(|b| {
                b.as_tenant()
                    .with_process(Some(process_json))
                    .with_detach(true)
                    .as_sibling(true)
                    .build()
            })
            .map(|pid| pid.as_raw()),
    };
    match result {
        Ok(pid) => HelperResponse::Started { pid },
        Err(err) => HelperResponse::Failed {
            message: describe(&err, &log.take()),
        },
    }
}

/// A builder whose processes get the spec's environment in the spec's order (and an exec'd
/// one the container's seccomp profile).
fn new_builder(id: String, seccomp: Option<Box<ExecSeccomp>>) -> ContainerBuilder {
    ContainerBuilder::new(id, SyscallType::default()).with_executor(OrderedEnvExecutor {
        seccomp: seccomp.map(|s| *s),
    })
}

fn with_stdio(
    builder: ContainerBuilder,
    present: [bool; 3],
    console_socket: Option<std::path::PathBuf>,
) -> ContainerBuilder {
    let [stdin, stdout, stderr] = inherited_stdio(present);
    let mut builder = builder.with_console_socket(console_socket);
    if let Some(fd) = stdin {
        builder = builder.with_stdin(fd);
    }
    if let Some(fd) = stdout {
        builder = builder.with_stdout(fd);
    }
    if let Some(fd) = stderr {
        builder = builder.with_stderr(fd);
    }
    builder
}

/// The error, its causes, and what libcontainer logged at error level (its
/// errors are often terse while its logs name the cause).
fn describe(err: &dyn std::error::Error, logged: &str) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            let _ = write!(message, ": {text}");
        }
        source = cause.source();
    }
    for line in logged.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // The logs often repeat the cause with other prefixes: add a line
        // only if its ending is news.
        if !message.contains(last_chars(line, 32)) {
            let _ = write!(message, "; {line}");
        }
    }
    message
}

fn last_chars(text: &str, n: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create container")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn describe_keeps_the_cause_once() {
        let err = Outer(std::io::Error::other("executable 'x' not found in $PATH"));
        let logged = "failed to wait: executable 'x' not found in $PATH\nrootfs is read-only\n";
        assert_eq!(
            describe(&err, logged),
            "failed to create container: executable 'x' not found in $PATH; rootfs is read-only"
        );
        assert_eq!(last_chars("héllo", 3), "llo");
        assert_eq!(last_chars("ab", 5), "ab");
    }
}

/// Collects libcontainer's error-level log lines in memory.
#[derive(Clone, Default)]
struct ErrorLog(Arc<Mutex<Vec<u8>>>);

impl ErrorLog {
    fn install() -> Self {
        let log = ErrorLog::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_writer(log.clone())
            .finish();
        // The helper installs it once, before any other subscriber.
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    }

    fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for ErrorLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the first 16 KiB; the cause is logged first.
        let room = (16 * 1024usize).saturating_sub(log.len());
        log.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ErrorLog {
    type Writer = ErrorLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
