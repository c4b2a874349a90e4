//! The pause process: it stays, exits 0 on SIGTERM and SIGINT, and reaps the children it gets.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const PAUSE: &str = env!("CARGO_BIN_EXE_pulse-pause");

fn pid_of(child: &std::process::Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap())
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "pulse-pause still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn it_waits_until_sigterm_or_sigint_and_exits_0() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut child = Command::new(PAUSE).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "pulse-pause exited on its own"
        );
        // SIGCHLD with nothing to reap changes nothing.
        kill(pid_of(&child), Signal::SIGCHLD).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGCHLD ended pulse-pause"
        );
        kill(pid_of(&child), sig).unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "after {sig}");
    }
}

#[test]
fn children_it_inherits_are_reaped() {
    // The shell starts a short sleep, prints its pid, and becomes pulse-pause: the sleep is
    // then pause's child, and must not stay a zombie once it exits.
    let mut child = Command::new("sh")
        .args(["-c", &format!("sleep 0.3 & echo $!; exec {PAUSE}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sleeper: u32 = line.trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        if stat.is_empty() {
            break; // reaped
        }
        assert!(
            Instant::now() < deadline,
            "the child {sleeper} was not reaped: {stat}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(pid_of(&child), Signal::SIGTERM).unwrap();
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).code(),
        Some(0)
    );
}
