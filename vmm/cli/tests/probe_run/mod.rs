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
