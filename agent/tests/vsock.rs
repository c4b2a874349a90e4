//! The agent binds its vsock port (the guest's default transport). This
//! machine has no vsock loopback, so the check is the bind itself: a second
//! agent on the same port must fail with a clear error.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn binds_a_vsock_port_and_reports_a_busy_one() {
    let state = tempfile::tempdir().unwrap();
    // A port unlikely to be taken, different per test process.
    let port = 20_000 + std::process::id() % 20_000;
    let listen = format!("vsock://{port}");
    let agent = || {
        Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
            .args(["--listen", &listen, "--state-dir"])
            .arg(state.path())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = agent();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first agent should be serving on {listen}"
    );

    let mut second = agent();
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second agent on {listen} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("listening on vsock://{port}")),
        "{stderr}"
    );

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = first.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
