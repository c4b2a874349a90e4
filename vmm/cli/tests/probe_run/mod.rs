//! Runs `pulse-vmm probe --json` and parses its one-object report.

// Each test file includes this module and uses what it needs of it.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

/// The `pulse-vmm` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pulse-vmm");

/// Exit status and report of `pulse-vmm probe --json ARGS`; panics with both outputs when
/// stdout is not one JSON object.
pub fn probe(args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(BIN)
        .arg("probe")
        .arg("--json")
        .args(args)
        .output()
        .expect("run pulse-vmm probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): stdout {stdout} stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// The first device of type `kind` in a report.
pub fn device<'a>(r: &'a Value, kind: &str) -> &'a Value {
    r["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} device: {r}"))
}

/// Queue vector `v` of a report was raised, and the guest took every interrupt the VMM sent
/// on it, less at most one per blind re-arm of the guest's pacer (a late interrupt that
/// merged with the next one in the LAPIC).
pub fn assert_raised_and_taken(v: &Value) {
    let sent = v["sent"].as_u64().expect("sent");
    let received = v["received"].as_u64().expect("received");
    let blind = v["blind_rearms"].as_u64().expect("blind_rearms");
    assert!(sent > 0, "queue vector never raised: {v}");
    assert!(received <= sent, "{v}");
    assert!(sent - received <= blind, "{v}");
}
