//! What a backend fails with: one variant per cause. Like the crate's other errors, each
//! text is complete on its own (it names the cause too), and the cause, where there is
//! one, is also the error's `source` for code that walks the chain.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use pulse_vmm::devices::block::backend::BackendError;

use super::qmp::QmpError;
use crate::cgroup::CgroupError;

/// What a backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A helper program is missing or failed to start.
    #[error("{}: {source} ({hint})", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the backend needs it for and where it comes from.
        hint: &'static str,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The VM's processes or threads cannot join the pod's cgroup.
    #[error("the pod's cgroup: {0}")]
    Cgroup(#[source] CgroupError),
    /// The embedded VMM refused the VM.
    #[error("the VM failed to start: {0}")]
    Start(#[source] pulse_vmm::VmError),
    /// The thread that ran the embedded VMM's blocking start or stop failed.
    #[error("{what}: {source}")]
    Thread {
        /// `the VM failed to start`, `stopping the VM`.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A helper process exited while the VM was starting.
    #[error("the VM failed to start: {helper} exited ({status}): {log_tail}")]
    HelperExited {
        /// The helper.
        helper: &'static str,
        /// How it ended.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The VM stopped while the backend waited for one of its helpers.
    #[error("the VM failed to start: {waiting_for} exited: {reason}")]
    StoppedWhileWaiting {
        /// The helper waited for.
        waiting_for: &'static str,
        /// Why the VM stopped.
        reason: String,
    },
    /// The VM stopped while the backend waited for QMP.
    #[error("the VM failed to start: waiting for QEMU's QMP socket {}: {reason}", socket.display())]
    StoppedBeforeQmp {
        /// The QMP socket.
        socket: PathBuf,
        /// Why the VM stopped.
        reason: String,
    },
    /// A helper did not create its socket in time.
    #[error("the VM failed to start: {helper} did not create {} within {after:?}", socket.display())]
    NoSocket {
        /// The helper.
        helper: &'static str,
        /// The socket it should have created.
        socket: PathBuf,
        /// How long the backend waited.
        after: Duration,
    },
    /// QEMU's QMP socket never accepted a connection.
    #[error(
        "the VM failed to start: QEMU's QMP socket {} accepted no connection within {after:?} (last: {source})",
        socket.display()
    )]
    QmpUnreachable {
        /// The QMP socket.
        socket: PathBuf,
        /// How long the backend tried.
        after: Duration,
        /// What the last attempt got.
        #[source]
        source: std::io::Error,
    },
    /// The pod needs more virtio-mmio transports than QEMU's microvm has.
    #[error("QEMU's microvm has {max} virtio-mmio transports; this pod needs {needed}: {devices}")]
    TooManyTransports {
        /// The machine's transports.
        max: usize,
        /// The pod's devices.
        needed: usize,
        /// Which devices, with the settings that ask for them.
        devices: String,
    },
    /// The VM is not running (not started yet, or stopped).
    #[error("{vmm} is not running")]
    NotRunning {
        /// `the VM`, `qemu`.
        vmm: &'static str,
    },
    /// The VM has no such block slot.
    #[error("the VM has no block slot {0}")]
    NoSlot(usize),
    /// The VMM could not re-read a slot's image.
    #[error("block slot {slot}: {source}")]
    Reload {
        /// The slot.
        slot: usize,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The VMM sees another capacity than the image the shim wrote.
    #[error("block slot {slot}: the VMM sees {vmm} bytes, the image has {image}")]
    CapacityMismatch {
        /// The slot.
        slot: usize,
        /// What the VMM read.
        vmm: u64,
        /// What the shim wrote.
        image: u64,
    },
    /// A QMP exchange with QEMU failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl HypervisorError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| HypervisorError::Io { context, source }
    }
}
