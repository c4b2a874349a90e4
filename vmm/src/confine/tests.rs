//! Confinement tests. A forbidden system call ends the process, so those cases run in a child:
//! the test binary started again on [`child_process_entry`] alone, with [`CHILD_ENV`] saying
//! which kind and which call.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::mpsc;

use super::*;

/// `CapXxx:` lines of a `/proc/.../status` file.
pub(crate) fn status_caps(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.starts_with("Cap")
                .then(|| u64::from_str_radix(value.trim(), 16).ok())
                .flatten()
                .map(|v| (key.to_string(), v))
        })
        .collect()
}

/// The value of `field` in a `/proc/.../status` file.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

const CHILD_ENV: &str = "PULSE_CONFINE_TEST_CHILD";
const CHILD_TEST: &str = "confine::tests::child_process_entry";

/// What the confined thread of the child does.
fn child_case(case: &str) -> i64 {
    match case {
        // Creating a file: trapped.
        // SAFETY: openat(2) gets a NUL-terminated path literal that lives for the whole program
        // and plain integer flags and mode; the filter traps the call before the kernel reads
        // anything, and had it run, it would only create a file and return its descriptor.
        "openat-write" => unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/tmp/pulse-confine-test-never-created".as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            )
        },
        // Reading one, as glibc's allocator does: refused with EACCES, the thread goes on.
        // SAFETY: openat(2) gets a NUL-terminated path literal that outlives the call and integer
        // flags; `__errno_location` returns this thread's errno slot, valid for the thread's life,
        // and it is read right after the failed call.
        "openat-read" => unsafe {
            let fd = libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/proc/sys/vm/overcommit_memory".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                -i64::from(*libc::__errno_location())
            } else {
                fd
            }
        },
        // SAFETY: execve(2) gets a NUL-terminated path literal and `argv`, a null-terminated array
        // of pointers to string literals that lives on this frame across the call; a null envp is
        // accepted by Linux as an empty environment. The filter traps the call before it runs.
        "execve" => unsafe {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            libc::syscall(
                libc::SYS_execve,
                c"/bin/true".as_ptr(),
                argv.as_ptr(),
                std::ptr::null::<*const libc::c_char>(),
            )
        },
        // An allowed call with a refused argument: a terminal ioctl, an IPv4 socket.
        // SAFETY: TCGETS on fd 0 with a null argument pointer: the filter refuses the request
        // before the kernel looks at it, and had it run, the kernel would fail with EFAULT rather
        // than write through the null pointer; no memory of this process is touched.
        "ioctl-tcgets" => unsafe {
            i64::from(libc::ioctl(0, libc::TCGETS, std::ptr::null_mut::<u8>()))
        },
        // SAFETY: socket(2) takes only integers and touches no memory of this process.
        "socket-inet" => unsafe { i64::from(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) },
        "allowed" => {
            // What every thread does: allocate (a big block too), log, lock, read the clock,
            // signal an eventfd, close it.
            let mut v: Vec<u8> = (0..=u8::MAX).cycle().take(100_000).collect();
            v.resize(4 << 20, 1);
            tracing::info!("a confined thread logs {}", v.len());
            let _ = std::time::Instant::now();
            let m = std::sync::Mutex::new(1);
            *m.lock().unwrap() += 1;
            drop(v);
            // SAFETY: write(2) on stderr of a local buffer.
            unsafe { libc::write(2, c"allowed\n".as_ptr().cast(), 8) };
            0
        }
        // A bug on a VMM thread: the panic message (std names the thread's id, `gettid`).
        "panic" => panic!("a deliberate panic on a confined thread"),
        other => panic!("unknown case {other}"),
    }
}

/// Only does something in a child started by [`run_child`]: confines a thread as the kind in
/// [`CHILD_ENV`] and has it make the call named there; the test that started the child checks
/// how it ended.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (kind, case) = spec.split_once(':').expect("kind:case");
    let kind = ThreadKind::from_name(kind).expect("a kind");
    let case = case.to_string();
    let name = format!("t-{kind}");
    let thread = spawn(kind, name, move || child_case(&case)).expect("confined");
    let result = match thread.join() {
        Ok(result) => result.to_string(),
        Err(_) => "panicked".to_string(),
    };
    // Reached only when the call was allowed. This thread is not confined: it may open files.
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    println!(
        "CHILD-DONE result={result} own-seccomp={}",
        status_field(&own, "Seccomp")
    );
}

fn run_child(kind: ThreadKind, case: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{kind}:{case}"))
        // A backtrace would open files to symbolize it (see docs/confinement.md).
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// Runs the child, asserts that it exited with success, and returns its stdout and stderr.
fn run_child_to_the_end(kind: ThreadKind, case: &str) -> (String, String) {
    let out = run_child(kind, case);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{kind} {case}: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// For every kind, the child runs `case` to the end and reports `done` on stdout.
fn every_kind_finishes(case: &str, done: &str) {
    for kind in ThreadKind::ALL {
        let (stdout, _) = run_child_to_the_end(kind, case);
        assert!(stdout.contains(done), "{kind}: {stdout}");
    }
}

/// Asserts that the child ended as docs/confinement.md says: status 159 and one line that
/// names the thread, its kind and the call.
fn assert_killed(out: &std::process::Output, kind: ThreadKind, nr: i64, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(seccomp::EXIT_STATUS),
        "{kind} {what}: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("pulse-vmm: seccomp: "))
        .unwrap_or_else(|| panic!("{kind} {what}: no report line in {stderr}"));
    let thread = format!("t-{kind}");
    let thread = &thread[..thread.len().min(15)];
    let expected = format!(
        "pulse-vmm: seccomp: the {kind} thread \"{thread}\" made the forbidden system call {nr}"
    );
    assert!(line.starts_with(&expected), "{kind} {what}: {line}");
    assert!(
        line.ends_with("the process exits with status 159 (see docs/confinement.md)"),
        "{line}"
    );
    assert!(!stdout.contains("CHILD-DONE"), "{kind} {what}: {stdout}");
}

#[test]
fn a_forbidden_call_ends_the_process_with_a_report_for_every_kind() {
    for kind in ThreadKind::ALL {
        let out = run_child(kind, "openat-write");
        assert_killed(&out, kind, libc::SYS_openat, "openat(O_WRONLY|O_CREAT)");
    }
    assert!(!std::path::Path::new("/tmp/pulse-confine-test-never-created").exists());
    let out = run_child(ThreadKind::Vcpu, "execve");
    assert_killed(&out, ThreadKind::Vcpu, libc::SYS_execve, "execve");
}

#[test]
fn a_refused_argument_ends_the_process_too() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Net, ThreadKind::Vsock] {
        let out = run_child(kind, "ioctl-tcgets");
        assert_killed(&out, kind, libc::SYS_ioctl, "ioctl TCGETS");
        let line = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            line.contains("(ioctl with an argument its filter refuses), arguments 0x0 0x5401 0x0"),
            "{line}"
        );
    }
    let out = run_child(ThreadKind::Vsock, "socket-inet");
    assert_killed(&out, ThreadKind::Vsock, libc::SYS_socket, "socket(AF_INET)");
}

#[test]
fn a_read_only_open_is_refused_without_ending_the_process() {
    every_kind_finishes(
        "openat-read",
        &format!("CHILD-DONE result=-{} ", libc::EACCES),
    );
}

#[test]
fn a_panic_on_a_confined_thread_prints_its_message_and_ends_only_that_thread() {
    for kind in ThreadKind::ALL {
        let (stdout, stderr) = run_child_to_the_end(kind, "panic");
        assert!(
            stdout.contains("CHILD-DONE result=panicked "),
            "{kind}: {stdout}"
        );
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains("a deliberate panic on a confined thread"),
            "{kind}: {all}"
        );
        assert!(!all.contains("pulse-vmm: seccomp:"), "{kind}: {all}");
    }
}

#[test]
fn allowed_calls_pass_and_other_threads_stay_unconfined() {
    every_kind_finishes("allowed", "CHILD-DONE result=0 own-seccomp=0");
}

/// The id of the thread of this process named `name`.
fn tid_named(name: &str) -> i32 {
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = entry.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("no thread named {name}");
}

/// A name no other thread of this test process has.
fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{n}")
}

/// Starts a confined `kind` thread that waits to be let go; returns its name, the way to let it
/// go, and its handle. Once `spawn` returns the thread is confined.
fn parked(kind: ThreadKind) -> (String, mpsc::Sender<()>, JoinHandle<()>) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let name = unique_name("park");
    let thread = spawn(kind, name.clone(), move || {
        let _ = go_rx.recv();
    })
    .unwrap();
    (name, go_tx, thread)
}

fn thread_status(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{}/status", tid_named(name))).unwrap()
}

#[test]
fn confined_threads_have_no_capabilities_and_a_filter() {
    let own_before = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let can_drop_bounding = status_caps(&own_before)["CapEff"] & (1 << 8) != 0;
    for kind in ThreadKind::ALL {
        let (name, go, thread) = parked(kind);
        let status = thread_status(&name);
        let caps = status_caps(&status);
        for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(caps[key], 0, "{kind}: {key}: {caps:?}");
        }
        if can_drop_bounding {
            assert_eq!(caps["CapBnd"], 0, "{kind}: {caps:?}");
        }
        assert_eq!(status_field(&status, "Seccomp"), "2", "{kind}: filter mode");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{kind}");
        go.send(()).unwrap();
        thread.join().unwrap();
    }
    let own_after = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_eq!(status_caps(&own_before), status_caps(&own_after));
    assert_eq!(status_field(&own_after, "Seccomp"), "0", "the test thread");
}

#[test]
fn without_seccomp_threads_still_drop_capabilities() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let name = unique_name("nofilter");
    let thread = {
        let _scope = PolicyScope::enter(Policy { seccomp: false });
        spawn(ThreadKind::Block, name.clone(), move || {
            let _ = go_rx.recv();
            // Not under a filter: it may open files.
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        })
        .unwrap()
    };
    let status = thread_status(&name);
    assert_eq!(status_field(&status, "Seccomp"), "0");
    assert_eq!(status_caps(&status)["CapEff"], 0);
    go_tx.send(()).unwrap();
    let own = thread.join().unwrap();
    assert_eq!(status_caps(&own)["CapPrm"], 0);
}

#[test]
fn threads_started_under_a_filter_come_from_the_spawner_with_their_own_filter() {
    let _spawner = prepare(Policy::default()).unwrap();
    assert!(spawner::is_running());
    let (names_tx, names_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let vcpu_name = unique_name("vcpu");
    let vcpu = spawn(ThreadKind::Vcpu, vcpu_name.clone(), move || {
        assert!(under_filter());
        assert_eq!(current_kind(), Some(ThreadKind::Vcpu));
        // Through the spawner: this thread may not create threads itself.
        let (name, go, worker) = parked(ThreadKind::Net);
        names_tx.send(name).unwrap();
        let _ = go_rx.recv();
        go.send(()).unwrap();
        worker.join().unwrap();
    })
    .unwrap();
    let worker_name = names_rx.recv().unwrap();
    // Each confined thread has the refusal layer and its kind's filter.
    assert_eq!(
        status_field(&thread_status(&vcpu_name), "Seccomp_filters"),
        "2"
    );
    let status = thread_status(&worker_name);
    assert_eq!(
        status_field(&status, "Seccomp_filters"),
        "4",
        "the spawner's two filters and the net worker's own two"
    );
    assert_eq!(status_caps(&status)["CapEff"], 0);
    go_tx.send(()).unwrap();
    vcpu.join().unwrap();
}

#[test]
fn a_thread_that_cannot_be_confined_never_runs_and_the_error_names_its_kind() {
    // Filters that allow everything, so many instructions of them that no further filter fits
    // within the kernel's limit on a thread's filters (32768 instructions as the kernel counts
    // them): the next install fails.
    let error = std::thread::spawn(|| {
        let allow_all = |len: usize| -> Vec<seccompiler::sock_filter> {
            let load = seccompiler::sock_filter {
                code: 0x20, // BPF_LD | BPF_W | BPF_ABS
                jt: 0,
                jf: 0,
                k: 0,
            };
            let allow = seccompiler::sock_filter {
                code: 0x06, // BPF_RET | BPF_K
                jt: 0,
                jf: 0,
                k: 0x7fff_0000, // SECCOMP_RET_ALLOW
            };
            std::iter::repeat_n(load, len - 1)
                .chain(std::iter::once(allow))
                .collect()
        };
        // Largest first, halving on each refusal, down to a lone RET: then nothing fits.
        let mut len = 4096;
        while len > 0 {
            if seccompiler::apply_filter(&allow_all(len)).is_err() {
                len /= 2;
            }
        }
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let result = spawn(ThreadKind::Console, "doomed".into(), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        (result.err(), ran.load(std::sync::atomic::Ordering::SeqCst))
    })
    .join()
    .unwrap();
    let (error, ran) = error;
    assert!(!ran, "the body of a thread that could not be confined ran");
    let error = error.expect("the spawn fails");
    assert!(
        matches!(
            error,
            ConfineError::Seccomp {
                kind: ThreadKind::Console,
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert_eq!(
        text,
        "console thread \"doomed\": cannot install its seccomp filter: Error calling \
         `seccomp`: Cannot allocate memory (os error 12)"
    );
}

#[test]
fn policy_scopes_nest_and_end() {
    assert_eq!(policy_for_new_threads(), Policy::default());
    {
        let _off = PolicyScope::enter(Policy { seccomp: false });
        assert!(!policy_for_new_threads().seccomp);
        {
            let _on = PolicyScope::enter(Policy { seccomp: true });
            assert!(policy_for_new_threads().seccomp);
        }
        assert!(!policy_for_new_threads().seccomp);
    }
    assert_eq!(policy_for_new_threads(), Policy::default());
}

#[test]
fn kinds_have_unique_names() {
    for kind in ThreadKind::ALL {
        assert_eq!(ThreadKind::from_name(kind.name()), Some(kind));
    }
    assert_eq!(ThreadKind::from_name("qemu"), None);
}

/// The backquoted words of `text`.
fn quoted(text: &str) -> std::collections::BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_doc_lists_every_call_of_every_kind() {
    let doc = include_str!("../../../docs/confinement.md");
    let runtime = seccomp::allow_list_of(seccomp::RUNTIME);
    let section = doc
        .split("### What every kind has (the runtime set, ")
        .nth(1)
        .expect("runtime section");
    assert!(
        section.starts_with(&format!("{} calls)", runtime.len())),
        "runtime count in the doc: {}",
        &section[..20]
    );
    let table = section.split("\n\n").nth(1).unwrap();
    let documented = quoted(table);
    for (name, _) in runtime.values() {
        assert!(documented.contains(*name), "runtime {name} not in the doc");
    }
    for kind in ThreadKind::ALL {
        // The row of the per-kind table: its second column is the count.
        let cells: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with(&format!("| `{kind}` | ")))
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
            .find(|cells| cells.len() == 6 && cells[2].parse::<usize>().is_ok())
            .unwrap_or_else(|| panic!("no per-kind row for {kind}"));
        let list = seccomp::allow_list(kind);
        let names: Vec<&str> = list.values().map(|(n, _)| *n).collect();
        assert_eq!(
            cells[2],
            list.len().to_string(),
            "{kind}'s count; the list: {names:?}"
        );
        let added: std::collections::BTreeSet<String> = list
            .iter()
            .filter(|(nr, (_, rules))| runtime.get(nr).is_none_or(|(_, r)| r != rules))
            .map(|(_, (name, _))| name.to_string())
            .collect();
        if kind == ThreadKind::Spawner {
            for name in quoted(cells[3]) {
                assert!(added.contains(&name), "spawner: {name} in the doc only");
            }
        } else {
            assert_eq!(
                quoted(cells[3]),
                added,
                "{kind}'s calls beyond the runtime set"
            );
        }
    }
}
