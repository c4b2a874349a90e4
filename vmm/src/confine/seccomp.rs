//! The seccomp filter of each VMM thread kind, built with `seccompiler`'s Rust API, compiled
//! once per process, and installed by each thread on itself.
//!
//! The lists are data ([`Allow`] entries in groups), so that the filters, the union the spawner
//! gets, the SIGSYS report and the tests all read the same source. A system call outside the
//! list (or an `ioctl`, `socket`, `prctl`... whose checked argument is not one of the allowed
//! values) raises SIGSYS (`SECCOMP_RET_TRAP`); the handler writes one line naming the thread,
//! its kind, the call and its first arguments, and ends the process with status
//! [`EXIT_STATUS`]. `docs/confinement.md` gives the reasons for this choice and for each entry.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Once, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{ConfineError, ThreadKind};

/// The exit status of a process whose VMM thread made a forbidden system call: 128 + SIGSYS,
/// what a shell shows for a process killed by SIGSYS.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `seccompiler` refused the rules.
    #[error("the filter does not compile: {0}")]
    Compile(String),
    /// The kernel refused the filter (`prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(2)`).
    #[error("{0}")]
    Install(#[source] seccompiler::Error),
    /// Another kind's filter could not be compiled, so none is used.
    #[error("the {0} filter cannot be compiled")]
    OtherKind(ThreadKind),
}

/// When an allowed system call is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Whatever its arguments.
    Always,
    /// When argument `arg` (its low 32 bits) is one of `values`.
    ArgIn {
        /// Argument index (0-5).
        arg: u8,
        /// The allowed values.
        values: &'static [u64],
    },
    /// When argument `arg` (its low 32 bits) has none of the bits of `mask` set.
    ArgClear {
        /// Argument index (0-5).
        arg: u8,
        /// The bits that must be clear.
        mask: u64,
    },
}

/// One entry of an allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow {
    /// System call number (x86_64).
    pub nr: i64,
    /// Its name.
    pub name: &'static str,
    /// Under which arguments.
    pub when: When,
}

macro_rules! sys {
    ($nr:ident) => {
        sys!($nr, when When::Always)
    };
    ($nr:ident, arg $arg:literal in $values:expr) => {
        sys!($nr, when When::ArgIn { arg: $arg, values: $values })
    };
    ($nr:ident, arg $arg:literal clear $mask:expr) => {
        sys!($nr, when When::ArgClear { arg: $arg, mask: $mask })
    };
    ($nr:ident, when $when:expr) => {
        Allow {
            nr: libc::$nr,
            name: strip_sys(stringify!($nr)),
            when: $when,
        }
    };
}

const fn strip_sys(ident: &'static str) -> &'static str {
    match ident.as_bytes() {
        [b'S', b'Y', b'S', b'_', rest @ ..] => match std::str::from_utf8(rest) {
            Ok(name) => name,
            Err(_) => ident,
        },
        _ => ident,
    }
}

/// `_IOC` as the kernel's `asm-generic/ioctl.h` builds it.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const KVMIO: u64 = 0xae;

/// `KVM_RUN`: enter the guest.
pub const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
/// `KVM_IRQFD`: attach or detach an interrupt eventfd (MSI vectors, masking, reset).
pub const KVM_IRQFD: u64 = ioc(
    IOC_WRITE,
    KVMIO,
    0x76,
    std::mem::size_of::<kvm_bindings::kvm_irqfd>(),
);
/// `KVM_SET_GSI_ROUTING`: rewrite the routing table (MSI vectors the guest programs).
pub const KVM_SET_GSI_ROUTING: u64 = ioc(
    IOC_WRITE,
    KVMIO,
    0x6a,
    std::mem::size_of::<kvm_bindings::kvm_irq_routing>(),
);
/// `TUNSETOFFLOAD`: the offloads the guest negotiated.
pub const TUNSETOFFLOAD: u64 = request(libc::TUNSETOFFLOAD);
/// `TUNSETQUEUE`: attach or detach a tap queue (the guest's queue-pair count).
pub const TUNSETQUEUE: u64 = request(libc::TUNSETQUEUE);
/// `FIONBIO`: what `set_nonblocking` uses on sockets.
pub const FIONBIO: u64 = request(libc::FIONBIO);

/// An ioctl request number as the filters compare it (its low 32 bits: [`condition`] compares `Dword`s):
/// libc types these `c_ulong` with glibc and `c_int` with musl.
#[allow(clippy::unnecessary_cast)]
const fn request(op: libc::Ioctl) -> u64 {
    op as u64
}

/// What every thread needs: Rust's standard library, glibc and the allocator on a running
/// thread, the clock, logging (`write`), closing what it drops, ending, aborting.
pub const RUNTIME: &[Allow] = &[
    // Locks, condition variables, channels, joins.
    sys!(SYS_futex),
    // The allocator (glibc's per-thread arenas grow with mprotect; big blocks are mapped and
    // remapped); never executable memory.
    sys!(SYS_mmap, arg 2 clear libc::PROT_EXEC as u64),
    sys!(SYS_mprotect, arg 2 clear libc::PROT_EXEC as u64),
    sys!(SYS_munmap),
    sys!(SYS_mremap),
    sys!(SYS_madvise),
    sys!(SYS_brk),
    // Thread exit: std's stack-overflow handler goes, glibc blocks signals and frees the stack.
    sys!(SYS_sigaltstack),
    sys!(SYS_rt_sigprocmask),
    sys!(SYS_exit),
    // Returning from a signal handler (the vCPU kick), and resuming a call it interrupted.
    sys!(SYS_rt_sigreturn),
    sys!(SYS_restart_syscall),
    // HashMap keys, once per thread.
    sys!(SYS_getrandom),
    // What the vDSO does not answer (a clock source it cannot read).
    sys!(SYS_clock_gettime),
    // Logs, eventfd writes (interrupts, wake-ups, stop requests), guest output.
    sys!(SYS_write),
    sys!(SYS_close),
    // Debug builds check that a descriptor is open before closing it (std's IO-safety check).
    sys!(SYS_fcntl, arg 1 in &[libc::F_GETFD as u64]),
    // The SIGSYS report's exit; abort() (a double panic) signals its own process.
    sys!(SYS_exit_group),
    sys!(SYS_getpid),
    ABORT_KILL,
    // std's panic message names the thread's id.
    sys!(SYS_gettid),
    // std's channels back off with a yield when contended (found by the mmio_transport fuzz
    // target: a block worker ended the process in SyncWaker).
    sys!(SYS_sched_yield),
];

/// abort()'s signal to its own thread.
#[cfg(not(target_env = "musl"))]
const ABORT_KILL: Allow = sys!(SYS_tgkill, arg 2 in &[libc::SIGABRT as u64]);
/// musl's abort() raises with tkill.
#[cfg(target_env = "musl")]
const ABORT_KILL: Allow = sys!(SYS_tkill, arg 1 in &[libc::SIGABRT as u64]);

/// fcntl's commands of a descriptor clone.
#[cfg(not(target_env = "musl"))]
const DUP_CLOEXEC: &[u64] = &[libc::F_DUPFD_CLOEXEC as u64];
/// musl's F_DUPFD_CLOEXEC sets FD_CLOEXEC once more with F_SETFD (for kernels without it).
#[cfg(target_env = "musl")]
const DUP_CLOEXEC: &[u64] = &[libc::F_DUPFD_CLOEXEC as u64, libc::F_SETFD as u64];

/// Waiting on an epoll set.
#[cfg(not(target_env = "musl"))]
const EPOLL_WAIT: Allow = sys!(SYS_epoll_wait);
/// musl's epoll_wait is epoll_pwait (with no signal mask).
#[cfg(target_env = "musl")]
const EPOLL_WAIT: Allow = sys!(SYS_epoll_pwait);

/// A worker's loop: waiting on its epoll set, changing it, reading its eventfds.
const WORKER_LOOP: &[Allow] = &[EPOLL_WAIT, sys!(SYS_epoll_ctl), sys!(SYS_read)];

/// A vCPU: KVM_RUN, and what the guest's register writes make the devices do on this thread:
/// MSI routes and irqfds, tap offloads and queues at activation, eventfds, epoll sets and
/// descriptor clones for the workers it hands to the spawner, reset (reading doorbells), the
/// KVM statistics a phase mark reads; the vhost-user messages of a virtio-fs device's
/// activation and reset (with the descriptors they pass).
const VCPU: &[Allow] = &[
    sys!(
        SYS_ioctl,
        arg 1 in &[KVM_RUN, KVM_IRQFD, KVM_SET_GSI_ROUTING, TUNSETOFFLOAD, TUNSETQUEUE]
    ),
    sys!(SYS_read),
    sys!(SYS_pread64),
    sys!(SYS_eventfd2),
    sys!(SYS_epoll_create1),
    sys!(SYS_fcntl, arg 1 in DUP_CLOEXEC),
    sys!(SYS_sendmsg),
    sys!(SYS_recvmsg),
];

const EVENT_LOOP: &[Allow] = WORKER_LOOP;

/// Positioned reads and writes, flush, discard and write-zeroes on the image.
const BLOCK: &[Allow] = &[
    sys!(SYS_pread64),
    sys!(SYS_pwrite64),
    sys!(SYS_fdatasync),
    sys!(SYS_fallocate),
];

/// Frames from and to the tap; the control queue's offload and queue-pair changes.
const NET: &[Allow] = &[
    sys!(SYS_readv),
    sys!(SYS_writev),
    sys!(SYS_ioctl, arg 1 in &[TUNSETOFFLOAD, TUNSETQUEUE]),
];

/// Host connections on the hybrid-vsock socket, and connects to `<uds>_<port>`.
const VSOCK: &[Allow] = &[
    sys!(SYS_accept4),
    sys!(SYS_socket, arg 0 in &[libc::AF_UNIX as u64]),
    sys!(SYS_connect),
    sys!(SYS_recvfrom),
    sys!(SYS_sendto),
    sys!(SYS_shutdown),
    sys!(SYS_ioctl, arg 1 in &[FIONBIO]),
    // The muxer clones its stop eventfd.
    sys!(SYS_fcntl, arg 1 in DUP_CLOEXEC),
];

/// Accepting on the hybrid-vsock socket, reading the CONNECT line (with a timeout), refusing.
const VSOCK_LISTENER: &[Allow] = &[
    sys!(SYS_epoll_create1),
    sys!(SYS_epoll_ctl),
    EPOLL_WAIT,
    sys!(SYS_accept4),
    sys!(SYS_recvfrom),
    sys!(SYS_sendto),
    sys!(SYS_setsockopt, arg 2 in &[libc::SO_RCVTIMEO as u64]),
    sys!(SYS_ioctl, arg 1 in &[FIONBIO]),
];

/// The unix-socket sink's client, and input from a file or stdin.
const CONSOLE: &[Allow] = &[
    sys!(SYS_accept4),
    sys!(SYS_recvfrom),
    sys!(SYS_sendto),
    sys!(SYS_ioctl, arg 1 in &[FIONBIO]),
];

/// Starting a thread, and what the new thread does before its own filter is on (it runs
/// under the spawner's meanwhile): glibc's thread start, naming it, dropping its capabilities,
/// installing its filter.
const SPAWN: &[Allow] = &[
    sys!(SYS_clone3),
    sys!(SYS_clone),
    sys!(SYS_set_robust_list),
    sys!(SYS_rseq),
    // glibc's pthread_getattr_np and std, finding the new thread's stack at its start.
    sys!(SYS_sched_getaffinity),
    sys!(
        SYS_prctl,
        arg 0 in &[
            libc::PR_SET_NAME as u64,
            libc::PR_CAPBSET_READ as u64,
            libc::PR_CAPBSET_DROP as u64,
            libc::PR_CAP_AMBIENT as u64,
            libc::PR_SET_NO_NEW_PRIVS as u64,
        ]
    ),
    sys!(SYS_capget),
    sys!(SYS_capset),
    sys!(SYS_seccomp, arg 0 in &[libc::SECCOMP_SET_MODE_FILTER as u64]),
];

/// The groups a kind's list is made of.
pub fn groups(kind: ThreadKind) -> &'static [&'static [Allow]] {
    match kind {
        ThreadKind::Vcpu => &[RUNTIME, VCPU],
        ThreadKind::EventLoop => &[RUNTIME, EVENT_LOOP],
        ThreadKind::Block => &[RUNTIME, WORKER_LOOP, BLOCK],
        ThreadKind::Net => &[RUNTIME, WORKER_LOOP, NET],
        ThreadKind::Vsock => &[RUNTIME, WORKER_LOOP, VSOCK],
        ThreadKind::VsockListener => &[RUNTIME, VSOCK_LISTENER],
        ThreadKind::Console => &[RUNTIME, WORKER_LOOP, CONSOLE],
        // Reading the call eventfds and raising the legacy line (an eventfd write).
        ThreadKind::Fs => &[RUNTIME, WORKER_LOOP],
        ThreadKind::Spawner => &[
            RUNTIME,
            VCPU,
            EVENT_LOOP,
            WORKER_LOOP,
            BLOCK,
            NET,
            VSOCK,
            VSOCK_LISTENER,
            CONSOLE,
            SPAWN,
        ],
    }
}

/// An allow-list: each system call once, with its name and the argument rules under which it
/// is allowed (`None`: whatever its arguments).
pub type AllowList = BTreeMap<i64, (&'static str, Option<Vec<When>>)>;

/// What a kind may call. Entries of several groups for one call add up.
pub fn allow_list(kind: ThreadKind) -> AllowList {
    allow_list_of(groups(kind).iter().flat_map(|g| g.iter()))
}

/// The allow-list of `entries`.
pub fn allow_list_of<'a>(entries: impl IntoIterator<Item = &'a Allow>) -> AllowList {
    let mut list = AllowList::new();
    for entry in entries {
        let slot = list
            .entry(entry.nr)
            .or_insert((entry.name, Some(Vec::new())));
        match (&mut slot.1, entry.when) {
            (None, _) => {}
            (rules, When::Always) => *rules = None,
            (Some(rules), when) => {
                if !rules.contains(&when) {
                    rules.push(when);
                }
            }
        }
    }
    list
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|e| SeccompError::Compile(e.to_string()))
}

/// Calls every thread may make but that fail with [`REFUSED_ERRNO`] instead of running: glibc's
/// allocator opens `/proc/sys/vm/overcommit_memory` (read-only, close-on-exec) the first time
/// any thread of the process shrinks a heap, from whichever thread that is, and takes a failure
/// as "no". Every other `openat` is trapped as usual.
pub const REFUSED: &[Allow] = &[sys!(
    SYS_openat,
    arg 2 in &[(libc::O_RDONLY | libc::O_CLOEXEC) as u64]
)];

/// What a [`REFUSED`] call returns.
pub const REFUSED_ERRNO: i32 = libc::EACCES;

fn rules_of(list: AllowList) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, (_, whens)) in list {
        let mut chain = Vec::new();
        for when in whens.unwrap_or_default() {
            match when {
                When::Always => {}
                When::ArgIn { arg, values } => {
                    for &value in values {
                        chain.push(rule(vec![condition(arg, SeccompCmpOp::Eq, value)?])?);
                    }
                }
                When::ArgClear { arg, mask } => {
                    chain.push(rule(vec![condition(
                        arg,
                        SeccompCmpOp::MaskedEq(mask),
                        0,
                    )?])?);
                }
            }
        }
        // An empty chain matches the call whatever its arguments.
        rules.insert(nr, chain);
    }
    Ok(rules)
}

fn program_of(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))
}

/// Builds the BPF program of `kind`: its list (and the [`REFUSED`] calls, which the refusal
/// layer answers) allowed, anything else trapped.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let entries = groups(kind).iter().flat_map(|g| g.iter()).chain(REFUSED);
    program_of(
        rules_of(allow_list_of(entries))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
    )
}

/// Builds the refusal layer, installed under every kind's filter: the [`REFUSED`] calls fail
/// with [`REFUSED_ERRNO`], anything else is left to the kind's filter. (Of two filters the
/// stricter answer wins: trap over errno over allow.)
pub fn compile_refusals() -> Result<BpfProgram, SeccompError> {
    program_of(
        rules_of(allow_list_of(REFUSED))?,
        SeccompAction::Allow,
        SeccompAction::Errno(REFUSED_ERRNO as u32),
    )
}

/// The refusal layer, then each kind's filter in [`ThreadKind::ALL`] order.
type Compiled = Result<(BpfProgram, Vec<BpfProgram>), (ThreadKind, String)>;

fn compiled() -> &'static Compiled {
    static FILTERS: OnceLock<Compiled> = OnceLock::new();
    FILTERS.get_or_init(|| {
        // A refusal layer that does not compile is reported as the first kind's failure.
        let refusals = compile_refusals().map_err(|e| (ThreadKind::ALL[0], e.to_string()))?;
        let kinds = ThreadKind::ALL
            .iter()
            .map(|&kind| compile(kind).map_err(|e| (kind, e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((refusals, kinds))
    })
}

/// Compiles every kind's filter (once per process).
pub fn compile_all() -> Result<(), ConfineError> {
    match compiled() {
        Ok(_) => Ok(()),
        Err((kind, message)) => Err(ConfineError::Compile {
            kind: *kind,
            source: SeccompError::Compile(message.clone()),
        }),
    }
}

fn programs(kind: ThreadKind) -> Result<(&'static BpfProgram, &'static BpfProgram), SeccompError> {
    let index = ThreadKind::ALL
        .iter()
        .position(|&k| k == kind)
        .expect("every kind is in ALL");
    match compiled() {
        Ok((refusals, kinds)) => Ok((refusals, &kinds[index])),
        Err((failed, message)) if *failed == kind => Err(SeccompError::Compile(message.clone())),
        Err((failed, _)) => Err(SeccompError::OtherKind(*failed)),
    }
}

thread_local! {
    /// The kind of the calling thread once its filter is on (an index into
    /// [`ThreadKind::ALL`], `u8::MAX` for none), read by the SIGSYS handler.
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
    /// The thread's name, NUL-padded, for the SIGSYS handler.
    static NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Installs the refusal layer and `kind`'s filter on the calling thread (only: the other
/// threads of the process are not affected), after recording `name` and `kind` for the SIGSYS
/// report. The refusal layer goes first: the kind's filter does not allow `seccomp(2)`.
pub fn apply(kind: ThreadKind, name: &str) -> Result<(), SeccompError> {
    let (refusals, program) = programs(kind)?;
    install_reporter();
    let mut padded = [0u8; 16];
    let n = name.len().min(padded.len() - 1);
    padded[..n].copy_from_slice(&name.as_bytes()[..n]);
    NAME.with(|c| c.set(padded));
    let index = ThreadKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
    // A handful of thread kinds: the index fits in the byte (0, "unknown", otherwise).
    KIND.with(|c| c.set(u8::try_from(index).unwrap_or(0)));
    seccompiler::apply_filter(refusals).map_err(SeccompError::Install)?;
    seccompiler::apply_filter(program).map_err(SeccompError::Install)
}

static REPORT_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// Where the SIGSYS report line goes (default: stderr). The shim points it at its log.
pub fn set_report_fd(fd: RawFd) {
    REPORT_FD.store(fd, Ordering::SeqCst);
}

/// Installs the SIGSYS handler (once per process).
pub fn install_reporter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function with
        // the SA_SIGINFO signature, and only async-signal-safe work happens in it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = report_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                tracing::warn!(
                    "cannot install the SIGSYS handler; a forbidden system call then kills \
                     the process without a report: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: i32 = 1;

/// A line built without allocating (the handler runs in a signal).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_dec(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn push_hex(&mut self, value: u64) {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut v = value;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(b"0x");
        self.push(&digits[i..]);
    }
}

/// The name of system call `nr` if `kind`'s list has it (then an argument was refused), or
/// else if any list has it.
fn known_name(kind: Option<ThreadKind>, nr: i64) -> Option<(&'static str, bool)> {
    let find = |kind: ThreadKind| {
        groups(kind)
            .iter()
            .flat_map(|g| g.iter())
            .chain(REFUSED)
            .find(|a| a.nr == nr)
            .map(|a| a.name)
    };
    if let Some(name) = kind.and_then(find) {
        return Some((name, true));
    }
    find(ThreadKind::Spawner).map(|name| (name, false))
}

/// Writes the report line for a forbidden call of `nr` with `args` from the calling thread.
fn report_line(nr: i64, args: [u64; 3]) -> Line {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    let kind = KIND.with(|c| c.get());
    let name = NAME.with(|c| c.get());
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let kind = ThreadKind::ALL.get(usize::from(kind)).copied();
    match kind {
        Some(kind) => {
            line.push(b"pulse-vmm: seccomp: the ");
            line.push(kind.name().as_bytes());
            line.push(b" thread \"");
            line.push(&name[..name_len]);
            line.push(b"\"");
        }
        // Not confined yet: a thread the spawner started, under the spawner's filter.
        None => line.push(b"pulse-vmm: seccomp: a starting thread (under the spawner's filter)"),
    }
    line.push(b" made the forbidden system call ");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_dec(nr.unsigned_abs());
    match known_name(kind, nr) {
        Some((known, true)) => {
            line.push(b" (");
            line.push(known.as_bytes());
            line.push(b" with an argument its filter refuses)");
        }
        Some((known, false)) => {
            line.push(b" (");
            line.push(known.as_bytes());
            line.push(b")");
        }
        None => {}
    }
    line.push(b", arguments ");
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            line.push(b" ");
        }
        line.push_hex(*arg);
    }
    line.push(b"; the process exits with status ");
    line.push_dec(EXIT_STATUS as u64);
    line.push(b" (see docs/confinement.md)\n");
    line
}

extern "C" fn report_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers. For SIGSYS with
    // si_code SYS_SECCOMP the union after the three ints (and their padding, at offset 16)
    // holds `void *_call_addr; int _syscall; unsigned _arch` (asm-generic/siginfo.h), so the
    // call number is the i32 at offset 24.
    let (code, nr) = unsafe {
        let code = (*info).si_code;
        let nr = (info as *const u8).add(24).cast::<i32>().read_unaligned();
        (code, i64::from(nr))
    };
    let args = if ctx.is_null() {
        [0; 3]
    } else {
        // SAFETY: with SA_SIGINFO the third argument is the interrupted context (a ucontext_t)
        // and on x86_64 the first three system call arguments are in rdi, rsi and rdx.
        unsafe {
            let gregs = &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
            [
                // The registers' bits, as the kernel's u64 arguments.
                u64::from_ne_bytes(gregs[libc::REG_RDI as usize].to_ne_bytes()),
                u64::from_ne_bytes(gregs[libc::REG_RSI as usize].to_ne_bytes()),
                u64::from_ne_bytes(gregs[libc::REG_RDX as usize].to_ne_bytes()),
            ]
        }
    };
    let line = if code == SYS_SECCOMP {
        report_line(nr, args)
    } else {
        let mut line = Line {
            buf: [0; 512],
            len: 0,
        };
        line.push(b"pulse-vmm: SIGSYS not raised by seccomp; the process exits\n");
        line
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer lives on this stack.
    unsafe {
        libc::write(
            REPORT_FD.load(Ordering::SeqCst),
            line.buf.as_ptr().cast(),
            line.len,
        );
        libc::_exit(EXIT_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNSETQUEUE, 0x4004_54d9);
        assert_eq!(FIONBIO, 0x5421);
    }

    #[test]
    fn every_kind_compiles() {
        for kind in ThreadKind::ALL {
            let program = compile(kind).unwrap();
            assert!(!program.is_empty(), "{kind}");
        }
        assert!(!compile_refusals().unwrap().is_empty());
        compile_all().unwrap();
    }

    #[test]
    fn names_come_from_the_constants() {
        let vcpu = allow_list(ThreadKind::Vcpu);
        assert_eq!(vcpu[&libc::SYS_ioctl].0, "ioctl");
        assert_eq!(vcpu[&libc::SYS_futex], ("futex", None));
        assert!(!vcpu.contains_key(&libc::SYS_openat));
        assert!(!vcpu.contains_key(&libc::SYS_execve));
    }

    #[test]
    fn the_spawner_allows_everything_any_kind_allows() {
        let spawner = allow_list(ThreadKind::Spawner);
        for kind in ThreadKind::ALL {
            for (nr, (name, whens)) in allow_list(kind) {
                let (_, theirs) = spawner
                    .get(&nr)
                    .unwrap_or_else(|| panic!("{kind}'s {name} missing from the spawner"));
                match (theirs, whens) {
                    (None, _) => {}
                    (Some(_), None) => panic!("{kind} allows {name} always, the spawner not"),
                    (Some(theirs), Some(ours)) => {
                        for when in ours {
                            assert!(theirs.contains(&when), "{kind}'s {name} {when:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_entry_without_rules_wins_over_rules() {
        // VCPU has `read` always; nothing narrows it in the union.
        let spawner = allow_list(ThreadKind::Spawner);
        assert_eq!(spawner[&libc::SYS_read].1, None);
        // Three groups restrict ioctl: their values add up.
        let Some(rules) = &spawner[&libc::SYS_ioctl].1 else {
            panic!("ioctl is restricted");
        };
        assert!(rules.len() >= 3, "{rules:?}");
    }

    #[test]
    fn the_report_names_the_thread_its_kind_and_the_call() {
        KIND.with(|c| c.set(0));
        NAME.with(|c| {
            let mut n = [0u8; 16];
            n[..5].copy_from_slice(b"vcpu0");
            c.set(n)
        });
        let line = report_line(libc::SYS_ioctl, [3, 0x5401, 0]);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "pulse-vmm: seccomp: the vcpu thread \"vcpu0\" made the forbidden system call 16 \
             (ioctl with an argument its filter refuses), arguments 0x3 0x5401 0x0; the process \
             exits with status 159 (see docs/confinement.md)\n"
        );
        KIND.with(|c| c.set(u8::MAX));
        let line = report_line(libc::SYS_execve, [0; 3]);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.contains("a starting thread (under the spawner's filter) made"),
            "{text}"
        );
        assert!(text.contains("system call 59, arguments"), "{text}");
        KIND.with(|c| c.set(0));
        let line = report_line(libc::SYS_pwrite64, [0; 3]);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.contains("system call 18 (pwrite64), arguments"),
            "{text}"
        );
        KIND.with(|c| c.set(u8::MAX));
    }
}
