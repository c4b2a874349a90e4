//! The nested-virtualization rig itself: a command runs as root in the L1
//! guest with a working /dev/kvm on (emulated) AMD SVM, sees the host's tree at
//! the same paths, and hands back its output and exit status; a command that
//! outlives its deadline is killed and reported.

use std::time::Duration;

use pulse_tests::nested::{self, Options};

/// One L1 guest at a time: the machines have two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn skip() -> bool {
    if let Some(why) = nested::unavailable() {
        eprintln!("SKIPPED: {why}");
        return true;
    }
    false
}

#[test]
fn a_command_runs_as_root_with_kvm_and_its_status_comes_back() {
    if skip() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let here = pulse_tests::repo_root();
    std::env::set_current_dir(&here).unwrap();
    let options = Options {
        env: vec![("PULSE_RIG_PROBE".into(), "a b'c".into())],
        direct_ok: false,
        ..Options::default()
    };
    let out = nested::run(
        &[
            "sh",
            "-c",
            "test -c /dev/kvm && echo kvm; grep -cw svm /proc/cpuinfo; id -u; pwd; \
             test -f Cargo.toml && echo tree; echo \"$PULSE_RIG_PROBE\"; \
             touch Cargo.toml 2>/dev/null || echo read-only; exit 7",
        ],
        &options,
    )
    .unwrap();
    assert_eq!(out.code, 7, "{out:?}");
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[0], "kvm", "{out:?}");
    assert!(lines[1].parse::<u32>().unwrap() >= 1, "svm in L1: {out:?}");
    assert_eq!(lines[2], "0");
    assert_eq!(lines[3], here.display().to_string());
    assert_eq!(&lines[4..], ["tree", "a b'c", "read-only"], "{out:?}");
    assert!(
        out.stderr.contains("nested: exit 7 after"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_command_past_its_deadline_is_killed_and_reported() {
    if skip() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let options = Options {
        timeout: Duration::from_secs(40),
        direct_ok: false,
        ..Options::default()
    };
    let out = nested::run(&["sh", "-c", "echo started; sleep 600"], &options).unwrap();
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.output.contains("started"), "{out:?}");
    assert!(
        out.stderr.contains("still running after 40s; killed it"),
        "{}",
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(240), "{:?}", out.elapsed);
    // Hold the lock: no other rig of this binary runs now.
    let left = std::process::Command::new("pgrep")
        .args(["-f", "qemu-system-x86_64.*pulse-nested"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "QEMU left: {:?}",
        String::from_utf8_lossy(&left.stdout)
    );
}
