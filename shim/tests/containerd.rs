//! End to end: Debian's containerd 1.6 and ctr, the busybox image, the shim
//! by absolute path and by runtime name, a guest under QEMU (TCG here).

mod common;

use std::process::Stdio;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use common::{text, Env, IMAGE};

fn serial() -> MutexGuard<'static, ()> {
    common::SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn shim() -> String {
    common::shim_binary().display().to_string()
}

#[test]
fn run_rm_prints_the_output_and_returns_the_exit_code() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    let out = env.run_rm(
        "rm1",
        &[],
        &[
            "sh",
            "-c",
            "echo hello from pulse; echo to-stderr >&2; exit 7",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}\n{}",
        text(&out.stderr),
        env.log()
    );
    assert!(
        text(&out.stdout).contains("hello from pulse"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("to-stderr"),
        "{}",
        text(&out.stderr)
    );
    env.assert_no_leaks();

    // By runtime name: containerd finds containerd-shim-pulse-v2 on its PATH.
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.pulse.v2",
        IMAGE,
        "rm2",
        "cat",
        "/etc/passwd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("root:x:0:0"));
    env.assert_no_leaks();
}

#[test]
fn detached_container_exec_tty_kill_delete() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    let out = env.ctr(&[
        "run",
        "-d",
        "--runtime",
        &shim(),
        IMAGE,
        "d1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), env.log());
    env.wait_status("d1", "RUNNING");

    let out = env.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "d1",
        "sh",
        "-c",
        "echo exec-out; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("exec-out"));

    // A terminal: ctr needs one itself, script(1) gives it a pty.
    let ctr_line = format!(
        "ctr --address {} --namespace {} tasks exec -t --exec-id e2 d1 tty",
        env.sock().display(),
        common::NS
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &ctr_line, "/dev/null"])
        .stdin(Stdio::null());
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "tty said: {:?} {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let out = env.ctr(&["tasks", "ps", "d1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = env.ctr(&["tasks", "kill", "--signal", "SIGKILL", "d1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("d1", "STOPPED");
    let out = env.ctr(&["tasks", "delete", "d1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.ctr(&["containers", "delete", "d1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_no_leaks();
}

#[test]
fn a_two_container_pod_shares_one_shim_and_one_vm() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    let sandbox = [
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let member = [
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod1",
    ];
    let shim = shim();
    let mut args = vec!["run", "-d", "--runtime", &shim];
    args.extend_from_slice(&sandbox);
    args.extend_from_slice(&[IMAGE, "pod1", "sleep", "1000"]);
    let out = env.ctr(&args);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), env.log());
    let mut args = vec!["run", "-d", "--runtime", &shim];
    args.extend_from_slice(&member);
    args.extend_from_slice(&[IMAGE, "app1", "sleep", "1000"]);
    let out = env.ctr(&args);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), env.log());
    env.wait_status("app1", "RUNNING");

    let procs = env.pod_processes();
    let count = |what: &str| procs.iter().filter(|(_, c)| c.contains(what)).count();
    assert_eq!(count("containerd-shim-pulse-v2"), 1, "{procs:?}");
    assert_eq!(count("qemu-system"), 1, "{procs:?}");
    // Both see the same guest: the VM's hostname is the pod's id.
    let out = env.ctr(&["tasks", "exec", "--exec-id", "h", "app1", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "pod1", "{}", text(&out.stderr));

    for id in ["app1", "pod1"] {
        let out = env.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        env.wait_status(id, "STOPPED");
        let out = env.ctr(&["tasks", "delete", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = env.ctr(&["containers", "delete", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    env.assert_no_leaks();
}

#[test]
fn ctr_events_shows_the_task_events() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    let events_file = env.dir.path().join("events.txt");
    let mut events = env.ctr_cmd(&["events"]);
    events
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(Stdio::null());
    let mut events = events.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let out = env.ctr(&[
        "run",
        "-d",
        "--runtime",
        &shim(),
        IMAGE,
        "ev1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("ev1", "RUNNING");
    let out = env.ctr(&["tasks", "exec", "--exec-id", "x", "ev1", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.ctr(&["tasks", "kill", "--signal", "SIGKILL", "ev1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("ev1", "STOPPED");
    let out = env.ctr(&["tasks", "delete", "ev1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let wanted = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen = std::fs::read_to_string(&events_file).unwrap_or_default();
        if wanted.iter().all(|w| seen.contains(w)) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = events.kill();
    let _ = events.wait();
    for w in wanted {
        assert!(seen.contains(w), "no {w} in:\n{seen}");
    }
    let _ = env.ctr(&["containers", "delete", "ev1"]);
    env.assert_no_leaks();
}

#[test]
fn kill_9_of_the_shim_then_delete_leaves_nothing() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    let out = env.ctr(&[
        "run",
        "-d",
        "--runtime",
        &shim(),
        IMAGE,
        "k1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("k1", "RUNNING");
    let shims: Vec<u32> = env
        .pod_processes()
        .into_iter()
        .filter(|(_, c)| c.contains("containerd-shim-pulse-v2"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(shims.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd notices the dead shim and runs `containerd-shim-pulse-v2 delete`.
    env.wait_not_running("k1");
    let _ = env.ctr(&["tasks", "delete", "k1"]);
    let out = env.ctr(&["containers", "delete", "k1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_no_leaks();
}

#[test]
fn a_guest_that_never_answers_is_a_clear_error_and_leaves_nothing() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    // The agent serves a unix socket inside the guest instead of vsock: it never answers.
    env.write_config(
        "kernel_params = \"-- --listen unix:///run/nowhere.sock\"",
        "connect_timeout_ms = 5000",
    );
    let started = Instant::now();
    let out = env.run_rm("silent", &[], &["true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    env.assert_no_leaks();
}

#[test]
fn a_missing_kernel_and_a_broken_config_are_clear_errors() {
    require_env!();
    let _one = serial();
    let env = Env::start();
    let text_config = std::fs::read_to_string(env.config_path()).unwrap();
    let (kernel, _) = common::guest_image().unwrap();
    std::fs::write(
        env.config_path(),
        text_config.replace(&format!("{kernel:?}"), "\"/nonexistent/vmlinux\""),
    )
    .unwrap();
    let out = env.run_rm("nokernel", &[], &["true"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("vm.kernel") && err.contains("/nonexistent/vmlinux"),
        "{err}"
    );
    env.assert_no_leaks();

    std::fs::write(env.config_path(), "[vm]\nvcpus = \"two\"\n").unwrap();
    let out = env.run_rm("badconfig", &[], &["true"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("pulse.toml") && err.contains("line 2"),
        "{err}"
    );
    env.assert_no_leaks();
}
