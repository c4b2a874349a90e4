//! Confinement of the VMM's threads. Every thread the VMM starts (vCPUs, the event loop, each
//! device worker) blocks the signals it does not take ([`signals`]), drops all its
//! capabilities ([`caps`]) and then installs the seccomp filter of its kind ([`seccomp`])
//! before it runs any of its own code, so that a guest that takes over a thread through a
//! device bug gets only the system calls that thread needs. All of it applies to the calling
//! thread alone: the shim that embeds the VMM keeps its own threads (tokio's among them) as
//! they are.
//!
//! Threads start through [`spawn`], which confines the new thread and reports a failure to
//! confine it as an error naming its kind (the thread then never runs its body). A thread
//! inherits the seccomp filters of the thread that creates it, so a thread under a filter (a
//! vCPU activating a device) does not create threads itself: it asks the [`spawner`], a thread
//! started unconfined by [`prepare`] whose filter is the union of every kind's.
//!
//! `docs/confinement.md` lists each kind's system calls and the reasons.

pub mod caps;
pub mod seccomp;
pub mod signals;
pub mod spawner;

use std::cell::Cell;
use std::fmt;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The kinds of thread the VMM runs; each has its own seccomp filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// Runs one vCPU (KVM_RUN) and the devices' register accesses, device activation and
    /// reset among them.
    Vcpu,
    /// The event loop (serial input, the stop request).
    EventLoop,
    /// A virtio-blk queue worker.
    Block,
    /// A virtio-net queue-pair worker (the first one also serves the control queue).
    Net,
    /// The virtio-vsock worker (the muxer of every connection).
    Vsock,
    /// The vsock listener that refuses host connections while the guest driver is not ready.
    VsockListener,
    /// The virtio-console worker.
    Console,
    /// The virtio-fs interrupt relay: a vhost-user backend's call eventfds to the legacy line
    /// (with MSI they are the queues' irqfds and nothing passes through the VMM).
    Fs,
    /// Starts threads on behalf of threads that run under a filter (see [`spawner`]).
    Spawner,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 9] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::VsockListener,
        ThreadKind::Console,
        ThreadKind::Fs,
        ThreadKind::Spawner,
    ];

    /// The name used in errors, logs and `docs/confinement.md`.
    pub const fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Block => "block",
            ThreadKind::Net => "net",
            ThreadKind::Vsock => "vsock",
            ThreadKind::VsockListener => "vsock-listener",
            ThreadKind::Console => "console",
            ThreadKind::Fs => "fs",
            ThreadKind::Spawner => "spawner",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the VMM's threads are confined. Capabilities are always dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Install the seccomp filters (on by default; off only to debug the VMM, e.g. under a
    /// debugger or with `RUST_BACKTRACE`, which the filters would refuse).
    pub seccomp: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self { seccomp: true }
    }
}

/// Why a VMM thread could not be started confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The signals it does not take could not be blocked.
    #[error("{kind} thread {name:?}: cannot block signals: {source}")]
    Signals {
        /// The thread's kind.
        kind: ThreadKind,
        /// The thread's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The capabilities could not be dropped.
    #[error("{kind} thread {name:?}: cannot drop its capabilities: {source}")]
    Capabilities {
        /// The thread's kind.
        kind: ThreadKind,
        /// The thread's name.
        name: String,
        /// Why.
        source: caps::CapsError,
    },
    /// The seccomp filter could not be built or installed.
    #[error("{kind} thread {name:?}: cannot install its seccomp filter: {source}")]
    Seccomp {
        /// The thread's kind.
        kind: ThreadKind,
        /// The thread's name.
        name: String,
        /// Why.
        source: seccomp::SeccompError,
    },
    /// The thread could not be created.
    #[error("cannot start the {kind} thread {name:?}: {source}")]
    Spawn {
        /// The thread's kind.
        kind: ThreadKind,
        /// The thread's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A thread under a filter must start threads through the spawner, which is not running.
    #[error(
        "cannot start the {kind} thread {name:?}: this thread runs under a seccomp filter and \
         the spawner is not running (confine::prepare was not called)"
    )]
    NoSpawner {
        /// The thread's kind.
        kind: ThreadKind,
        /// The thread's name.
        name: String,
    },
    /// The seccomp filters could not be compiled.
    #[error("the seccomp filter of {kind} threads cannot be built: {source}")]
    Compile {
        /// The kind.
        kind: ThreadKind,
        /// Why.
        source: seccomp::SeccompError,
    },
}

/// What a confined thread knows about itself.
#[derive(Clone, Copy, Debug)]
struct Confined {
    kind: ThreadKind,
    policy: Policy,
}

thread_local! {
    /// Set once the thread is confined.
    static CURRENT: Cell<Option<Confined>> = const { Cell::new(None) };
    /// The policy threads started from this (non-VMM) thread get, while a [`PolicyScope`]
    /// lives.
    static SCOPE: Cell<Option<Policy>> = const { Cell::new(None) };
}

/// The kind of the calling thread, if it is a confined VMM thread.
pub fn current_kind() -> Option<ThreadKind> {
    CURRENT.with(|c| c.get()).map(|c| c.kind)
}

/// Whether the calling thread runs under a seccomp filter that it installed through this
/// module (threads it creates would inherit it).
pub fn under_filter() -> bool {
    CURRENT.with(|c| c.get()).is_some_and(|c| c.policy.seccomp)
}

/// The policy of threads started from the calling thread: a VMM thread's own, the one of a
/// [`PolicyScope`] on this thread, or the default (filters on).
pub fn policy_for_new_threads() -> Policy {
    CURRENT
        .with(|c| c.get())
        .map(|c| c.policy)
        .or_else(|| SCOPE.with(|s| s.get()))
        .unwrap_or_default()
}

/// Sets the policy of the threads the calling thread starts, until dropped (the VM sets its
/// configuration's policy while it starts).
pub struct PolicyScope {
    previous: Option<Policy>,
}

impl PolicyScope {
    /// Threads started from this thread get `policy` until the scope is dropped.
    pub fn enter(policy: Policy) -> Self {
        let previous = SCOPE.with(|s| s.replace(Some(policy)));
        Self { previous }
    }
}

impl Drop for PolicyScope {
    fn drop(&mut self) {
        SCOPE.with(|s| s.set(self.previous));
    }
}

/// Makes sure everything confined threads need exists, from a thread that is not under a
/// filter: the filters are compiled (a filter that cannot be built fails here, not in some
/// thread later), the SIGSYS reporter is installed, and with `policy.seccomp` the spawner runs
/// until the returned lease (and every other) is dropped.
pub fn prepare(policy: Policy) -> Result<Option<spawner::Lease>, ConfineError> {
    if !policy.seccomp {
        return Ok(None);
    }
    seccomp::compile_all()?;
    seccomp::install_reporter();
    spawner::lease().map(Some)
}

/// Confines the calling thread as a `kind` thread under `policy`: blocks the signals it does
/// not take, drops every capability, then installs the kind's seccomp filter when
/// `policy.seccomp`.
pub fn confine_current_thread(kind: ThreadKind, policy: Policy) -> Result<(), ConfineError> {
    let name = || std::thread::current().name().unwrap_or("").to_string();
    signals::block_others(kind).map_err(|source| ConfineError::Signals {
        kind,
        name: name(),
        source,
    })?;
    caps::drop_all().map_err(|source| ConfineError::Capabilities {
        kind,
        name: name(),
        source,
    })?;
    if policy.seccomp {
        // The name is taken before the filter: afterwards the thread may not allocate much.
        let thread_name = name();
        seccomp::apply(kind, &thread_name).map_err(|source| ConfineError::Seccomp {
            kind,
            name: thread_name,
            source,
        })?;
    }
    CURRENT.with(|c| c.set(Some(Confined { kind, policy })));
    Ok(())
}

/// The payload a thread that could not be confined ends with (silently: the error goes to
/// whoever started it).
struct NotConfined;

/// Threads started by [`spawn`] that have not ended: the VMM's own, counted without a file
/// (a confined vCPU may not open /proc/self/task).
static LIVE_THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The VMM threads alive now (every vCPU, worker, event loop and listener of every VM).
pub fn live_threads() -> u64 {
    LIVE_THREADS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts its thread out when the thread's body returns or unwinds.
struct LiveThread;

impl Drop for LiveThread {
    fn drop(&mut self) {
        LIVE_THREADS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Starts the `kind` thread `name` running `body`, confined under the policy of the calling
/// thread ([`policy_for_new_threads`]). Returns once the new thread is confined; if it could
/// not be, the thread ends without running `body` and the error says why.
pub fn spawn<F, T>(kind: ThreadKind, name: String, body: F) -> Result<JoinHandle<T>, ConfineError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let policy = policy_for_new_threads();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), ConfineError>>(1);
    let main = move || {
        LIVE_THREADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _live = LiveThread;
        let confined = confine_current_thread(kind, policy);
        let ok = confined.is_ok();
        let _ = ready_tx.send(confined);
        if !ok {
            // Unwinding without the panic hook: nothing is printed, `body` is dropped unrun.
            std::panic::resume_unwind(Box::new(NotConfined));
        }
        body()
    };
    let builder = std::thread::Builder::new().name(name.clone());
    let spawned = if under_filter() {
        spawner::spawn(builder, main).ok_or_else(|| ConfineError::NoSpawner {
            kind,
            name: name.clone(),
        })?
    } else {
        builder.spawn(main)
    };
    let handle = spawned.map_err(|source| ConfineError::Spawn {
        kind,
        name: name.clone(),
        source,
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(ConfineError::Spawn {
                kind,
                name,
                source: std::io::Error::other("the thread ended before it was confined"),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
