//! virtio-net on a tap and virtio-console on a unix socket, over virtio-mmio with per-queue
//! MSI, driven by the probe guest under real KVM; and all four device types in one VM, in
//! MSI and in legacy mode.

mod probe_run;

use std::process::Command;

use serde_json::Value;

use probe_run::{assert_raised_and_taken, device, probe, BIN};

/// Every queue vector of `d` was raised, and the guest took what was raised.
fn assert_queue_vectors_taken(d: &Value) {
    assert_eq!(d["msi_enabled"], true, "{d}");
    for v in &d["vectors"].as_array().unwrap()[1..] {
        assert_raised_and_taken(v);
    }
}

/// What the guest sent on each of its two queue pairs arrived on the host's tap, and the tap
/// is gone.
fn assert_both_pairs_reached_the_tap(r: &Value) {
    assert_eq!(
        r["net_host"]["from_guest"],
        serde_json::json!([16, 16]),
        "{r}"
    );
    assert_tap_gone(r);
}

fn assert_tap_gone(r: &Value) {
    let tap = r["net_host"]["tap"].as_str().expect("tap name");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "tap {tap} left behind"
    );
}

#[test]
fn net_frames_cross_every_queue_pair_both_ways() {
    let (code, r) = probe(&["--net-queues", "2", "--vcpus", "2"]);
    assert_eq!(code, Some(0), "{r}");
    let d = device(&r, "net");
    assert_eq!(d["queues"], 5, "2 pairs + control");
    assert_queue_vectors_taken(d);
    let guest = &d["net"];
    assert_eq!(guest["mq_set"], true);
    assert_eq!(guest["tx_done"], serde_json::json!([16, 16]));
    for n in guest["rx_host"].as_array().unwrap() {
        assert!(n.as_u64().unwrap() >= 4, "{guest}");
    }
    assert_both_pairs_reached_the_tap(&r);
}

#[test]
fn net_on_the_legacy_line() {
    let (code, r) = probe(&["--net-queues", "2", "--irq", "legacy"]);
    assert_eq!(code, Some(0), "{r}");
    let d = device(&r, "net");
    assert_eq!(d["msi_enabled"], false);
    assert!(d["legacy"]["sent"].as_u64().unwrap() > 0);
    assert_both_pairs_reached_the_tap(&r);
}

#[test]
fn console_output_reaches_the_socket_and_input_the_guest() {
    let (code, r) = probe(&["--console"]);
    assert_eq!(code, Some(0), "{r}");
    let d = device(&r, "console");
    assert_queue_vectors_taken(d);
    let out = r["console_host"]["output"].as_str().unwrap();
    assert!(out.contains("pulse-probe: hello on hvc0\n"), "{out}");
    assert!(out.contains("echo: ping from pulse-vmm\n"), "{out}");
}

/// The probe's flags for one device of each type (block and net with two queues each).
const FOUR_DEVICES: [&str; 6] = [
    "--blk-queues",
    "2",
    "--net-queues",
    "2",
    "--vsock",
    "--console",
];

#[test]
fn four_device_types_in_one_vm_with_msi() {
    let (code, r) = probe(&FOUR_DEVICES);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["devices"].as_array().unwrap().len(), 4);
    for kind in ["block", "net", "vsock", "console"] {
        assert_queue_vectors_taken(device(&r, kind));
    }
    assert_eq!(r["interrupts_match"], true);
    assert_tap_gone(&r);
}

#[test]
fn four_device_types_on_legacy_lines() {
    let (code, r) = probe(&[&FOUR_DEVICES[..], &["--irq", "legacy"]].concat());
    assert_eq!(code, Some(0), "{r}");
    for kind in ["block", "net", "vsock", "console"] {
        let d = device(&r, kind);
        assert_eq!(d["msi_enabled"], false, "{d}");
        assert!(d["legacy"]["sent"].as_u64().unwrap() > 0, "{d}");
    }
    assert_eq!(r["interrupts_match"], true);
}

#[test]
fn a_tap_that_cannot_be_opened_is_a_clear_error() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kernel.path(), pulse_probe::PROBE_ELF).unwrap();
    for (net, wanted) in [
        ("tap=this-name-is-too-long", "tap"),
        ("tap=ok0,queues=0", "queue pairs"),
        ("tap=ok0,mac=zz", "MAC"),
    ] {
        let out = Command::new(BIN)
            .args(["run", "--serial", "none", "--kernel"])
            .arg(kernel.path())
            .args(["--net", net])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--net {net}: {stderr}");
        assert!(stderr.starts_with("pulse-vmm: error:"), "{stderr}");
        assert!(stderr.contains(wanted), "--net {net}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
