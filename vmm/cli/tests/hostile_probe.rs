//! The probe as a hostile guest (`pulse-vmm probe --hostile`, guest/probe/src/virtio/hostile/)
//! against a VMM with a block device (2 queues), a net device on a tap, a vsock device and a
//! console, run as a child process so that its exit status, peak memory and log are its own.
//!
//! The guest breaks every rule the docs list (odd register writes, MSI messages with NMI, SMI,
//! INIT, ExtINT delivery or exception vectors, hostile descriptor chains, a vsock connect flood
//! to host ports nobody listens on with no receive buffer posted, RSTs for nothing, a control
//! queue flood, notification storms, a queue broken on purpose, a busy worker reset mid-way)
//! and checks from its side that each device answered as the rules say and still works. Here
//! the VMM's side: it exits with the documented status, every class was seen and refused, no
//! worker thread was left behind, and it stayed within stated bounds of memory and log. A
//! watchdog kills it if it does not finish: that is a hang, not a slow machine.

mod probe_run;

use std::fs::File;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use probe_run::{device, BIN};

/// The run takes seconds; this is only there to turn a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(300);
/// Guest RAM of the run (the probe's default).
const GUEST_MIB: u64 = 64;
/// The VMM's own memory (RSS less the guest pages it touched) at the end: about 10 MiB in a
/// debug build; a queue a flood could grow without bound would show here.
const OVERHEAD_BOUND_KIB: u64 = 32 << 10;
/// Peak RSS of the whole process (getrusage of the child): guest RAM if the guest touched all
/// of it, plus the overhead bound.
const PEAK_RSS_BOUND_KIB: u64 = (GUEST_MIB << 10) + OVERHEAD_BOUND_KIB;
/// The log (stderr, at the default level): about 4 KiB for the whole run, though the guest
/// sends over 15000 hostile chains, packets and commands. The fault log writes the first
/// mistake of each kind and then summaries; this bound does not grow with the floods.
const LOG_BOUND_BYTES: u64 = 32 << 10;

struct Run {
    code: Option<i32>,
    report: Value,
    max_rss_kib: u64,
    log: String,
}

/// Runs `pulse-vmm probe --hostile --json` under the watchdog; reaps it with wait4 for its
/// exit status and peak RSS.
fn run_hostile() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("report.json");
    let log_path = dir.path().join("stderr.log");
    let child = Command::new(BIN)
        .args(["probe", "--hostile", "--json", "--timeout-s", "240"])
        .env_remove("PULSE_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&log_path).unwrap())
        .spawn()
        .expect("run pulse-vmm probe --hostile");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, fired) = (done.clone(), fired.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if start.elapsed() > WATCHDOG {
                    fired.store(true, Ordering::SeqCst);
                    // SAFETY: kill(2) of our child, not reaped yet (the test thread reaps it
                    // only after this thread is told it is done).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it and `status` for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; the pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    // Reaped already: dropping the handle does not wait.
    drop(child);
    let mut log = String::new();
    File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        !fired.load(Ordering::SeqCst),
        "the VMM did not finish within {WATCHDOG:?} (a hang); its log:\n{log}"
    );
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\nstderr: {log}"));
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        report,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap(),
        log,
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_hostile_guest_is_refused_everywhere_and_the_vmm_stays_bounded() {
    let run = run_hostile();
    let r = &run.report;
    // The documented exit status of `pulse-vmm probe`: 0 when the report is ok (here: every
    // check of the guest held, the guest left through the debug-exit port with 0, and no
    // thread was left behind).
    assert_eq!(run.code, Some(0), "{r}\nstderr: {}", run.log);
    assert_eq!(r["ok"], true);
    assert_eq!(r["exit"]["kind"], "debug-exit", "{}", r["exit"]);

    // No worker left behind: the same devices run at the guest's two marks (every device was
    // reset and brought up again in between, some of them twice), and the VM's end takes
    // every thread it started.
    let t = &r["threads"];
    assert!(n(&t["at_start"]) > n(&t["before"]), "{t}");
    assert_eq!(t["at_start"], t["at_done"], "{t}");
    assert_eq!(t["before"], t["after"], "{t}");

    // Memory and log within their bounds.
    let overhead = n(&r["memory"]["overhead_kib"]);
    assert!(overhead < OVERHEAD_BOUND_KIB, "VMM overhead {overhead} KiB");
    assert!(
        run.max_rss_kib > 0 && run.max_rss_kib < PEAK_RSS_BOUND_KIB,
        "peak RSS {} KiB",
        run.max_rss_kib
    );
    let log_bytes = run.log.len() as u64;
    assert!(
        log_bytes < LOG_BOUND_BYTES,
        "{log_bytes} bytes of log:\n{}",
        run.log
    );

    for kind in ["block", "net", "vsock", "console"] {
        let d = device(r, kind);
        let h = &d["hostile"];
        assert_eq!(h["alive"], true, "{kind}: {h}");
        assert_eq!(h["checks"], h["checks_passed"], "{kind}: {h}");
        assert!(n(&h["chains"]) > n(&h["chains_expected"]), "{kind}: {h}");
        assert_eq!(h["chains_returned"], h["chains_expected"], "{kind}: {h}");
        assert!(
            d["guest_errors"].as_array().unwrap().is_empty(),
            "{kind}: {}",
            d["guest_errors"]
        );
        // Every class of register mistake seen and refused by the transport.
        let e = &d["transport_errors"];
        for class in [
            "bad_access_width",
            "bad_status",
            "bad_features",
            "bad_queue_setup",
            "bad_notify",
            "unknown_msi_op",
            "vector_out_of_range",
            "csr_after_driver_ok",
        ] {
            assert!(n(&e[class]) > 0, "{kind}: {class} never counted: {e}");
        }
        // NMI, SMI, INIT, ExtINT, vector 2; outside the LAPIC window, a high half.
        assert!(n(&e["msi_data_rejected"]) >= 5, "{kind}: {e}");
        assert!(n(&e["msi_address_rejected"]) >= 2, "{kind}: {e}");
        // Nothing the guest wrote made KVM refuse a route: no refused message got that far.
        assert_eq!(n(&e["interrupt_setup_failed"]), 0, "{kind}: {e}");
        // Hostile chains seen by the device model.
        let f = &d["faults"];
        assert!(n(&f["malformed_chain"]) > 0, "{kind}: {f}");
        assert!(n(&f["head_out_of_range"]) > 0, "{kind}: {f}");
        // The fault logs (the device model's and the transport's): the first of each kind
        // and at most one summary every 10 s each, not a line per mistake or per reset.
        assert!(n(&f["log_lines"]) <= 24, "{kind}: {f}");
    }

    // Queue 0's vector only ever got refused messages while the device ran hostile chains on
    // it: the interrupts it raised were dropped, none injected (an NMI or exception vector
    // would have ended the probe with an exception report).
    for kind in ["block", "net", "vsock"] {
        let v = &device(r, kind)["vectors"][1];
        assert!(n(&v["dropped"]) > 0, "{kind}: {v}");
    }
    // A queue broken on purpose: DEVICE_NEEDS_RESET, one configuration interrupt, the other
    // block queue still served.
    let blk = &device(r, "block")["hostile"];
    assert_eq!(blk["broken_queue_seen"], true, "{blk}");
    assert_eq!(blk["healthy_queue"], true, "{blk}");
    assert_eq!(blk["config_interrupts"], 1, "{blk}");
    assert!(n(&device(r, "block")["faults"]["avail_index_too_far"]) >= 1);
    assert_eq!(device(r, "console")["hostile"]["broken_queue_seen"], true);

    // The reset storm: DRIVER_OK without queues, fifty times per device (block starts
    // without them); each refused, none worth a log line of its own (the log bound above).
    for kind in ["net", "vsock", "console"] {
        let f = &device(r, kind)["faults"];
        assert!(n(&f["incomplete_setup"]) >= 50, "{kind}: {f}");
    }

    // The vsock connect flood: 5000 connects to host ports nobody listens on, no receive
    // buffer posted. Each was refused; the RSTs waiting for the guest stopped at the cap and
    // the rest were dropped, and those kept all reached the guest once it posted buffers.
    let v = &r["vsock_device"];
    assert!(n(&v["refused"]) >= 5000, "{v}");
    assert!(n(&v["replies_dropped"]) > 0, "{v}");
    assert_eq!(n(&v["replies_queued"]), 0, "{v}");
    let vh = &device(r, "vsock")["hostile"];
    assert!(n(&vh["flood"]) >= 7000, "{vh}");
    assert!(n(&vh["flood_answers"]) > 0, "{vh}");
    // The net control-queue flood was answered (ERR), command by command.
    let nh = &device(r, "net")["hostile"];
    assert!(n(&nh["flood_answers"]) > 500, "{nh}");
}
