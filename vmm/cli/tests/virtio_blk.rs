//! Multi-queue virtio-blk over virtio-mmio with per-queue MSI, driven by the probe guest under
//! real KVM: the guest runs writes and verifying reads on every queue, the report merges the
//! VMM's counts (interrupts sent, requests completed) with the guest's (interrupts received,
//! data errors).

mod probe_run;

use std::process::Command;

use serde_json::Value;

use probe_run::probe;
use probe_run::BIN;

fn only_device(r: &Value) -> &Value {
    let devices = r["devices"].as_array().expect("devices array");
    assert_eq!(devices.len(), 1, "{r}");
    &devices[0]
}

/// Every queue vector was raised and taken equally often, and at least once; the config
/// vector stayed quiet; the legacy line was never used.
fn assert_msi_counts(d: &Value, queues: u64) {
    let vectors = d["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len() as u64, queues + 1, "{d}");
    assert_eq!(vectors[0]["role"], "config");
    assert_eq!(vectors[0]["sent"], 0);
    for (i, v) in vectors.iter().enumerate().skip(1) {
        assert_eq!(v["role"], "queue", "{v}");
        assert_eq!(v["queue"], i as u64 - 1);
        let sent = v["sent"].as_u64().unwrap();
        assert!(sent > 0, "queue vector {i} never raised: {d}");
        assert_eq!(v["received"].as_u64(), Some(sent), "vector {i}: {d}");
    }
    let gsis: std::collections::BTreeSet<u64> =
        vectors.iter().map(|v| v["gsi"].as_u64().unwrap()).collect();
    assert_eq!(
        gsis.len(),
        vectors.len(),
        "each vector has its own GSI: {d}"
    );
    assert_eq!(d["legacy"]["sent"], 0, "{d}");
}

#[test]
fn four_queues_with_msi_on_one_vcpu() {
    let (code, r) = probe(&["--blk-queues", "4"]);
    assert_eq!(code, Some(0), "{r}");
    let d = only_device(&r);
    assert_eq!(d["type"], "block");
    assert_eq!(d["queues"], 4);
    assert_eq!(d["msi_enabled"], true);
    assert_eq!(d["guest_msi"], true);
    assert_msi_counts(d, 4);
    assert_eq!(d["requests_completed"], d["requests_asked"]);
    assert_eq!(d["requests_completed"], 4 * 32);
    assert_eq!(d["data_errors"], 0);
}

#[test]
fn queues_interrupt_the_vcpu_that_owns_them() {
    let (code, r) = probe(&["--blk-queues", "4", "--vcpus", "2", "--requests", "48"]);
    assert_eq!(code, Some(0), "{r}");
    let d = only_device(&r);
    assert_msi_counts(d, 4);
    // Queue q is owned by online CPU q % 2 and its MSI is aimed there.
    let cpus: Vec<u64> = d["vectors"].as_array().unwrap()[1..]
        .iter()
        .map(|v| v["cpu"].as_u64().unwrap())
        .collect();
    assert_eq!(cpus, vec![0, 1, 0, 1], "{d}");
    assert_eq!(d["requests_completed"], 4 * 48);
    assert_eq!(d["data_errors"], 0);
    // Doorbells are ioeventfds: the workload itself costs no MMIO exit to userspace.
    assert_eq!(r["exits"]["workload"]["mmio_exits"], 0, "{r}");
}

#[test]
fn the_legacy_line_when_the_guest_asks_for_it() {
    let (code, r) = probe(&["--blk-queues", "4", "--vcpus", "2", "--irq", "legacy"]);
    assert_eq!(code, Some(0), "{r}");
    let d = only_device(&r);
    assert_eq!(d["msi_enabled"], false);
    assert_eq!(d["guest_msi"], false);
    assert_eq!(d["requests_completed"], 4 * 32);
    assert_eq!(d["data_errors"], 0);
    let legacy_sent = d["legacy"]["sent"].as_u64().unwrap();
    assert!(legacy_sent > 0, "{d}");
    // Edges raised while one is still pending on the pin merge (that is what InterruptStatus
    // is for), so the guest may take fewer than were raised, never more.
    let legacy_received = d["legacy"]["received"].as_u64().unwrap();
    assert!(legacy_received > 0 && legacy_received <= legacy_sent, "{d}");
    for v in d["vectors"].as_array().unwrap() {
        assert_eq!(v["sent"], 0, "no MSI in legacy mode: {d}");
    }
    // Every legacy interrupt costs the guest at least an InterruptStatus read (and an ACK
    // write when it found something pending).
    assert!(r["exits"]["workload"]["mmio_exits"].as_u64().unwrap() >= legacy_received);
}

#[test]
fn a_masked_vector_delivers_once_on_unmask() {
    let (code, r) = probe(&["--blk-queues", "2", "--guest-arg", "probe.masktest=1"]);
    assert_eq!(code, Some(0), "{r}");
    let guest_dev = &r["guest"]["devices"][0];
    assert_eq!(guest_dev["mask_test"]["received_while_masked"], 0, "{r}");
    assert_eq!(guest_dev["mask_test"]["delivered_after_unmask"], 1, "{r}");
    let d = only_device(&r);
    assert_msi_counts(d, 2);
}

#[test]
fn the_64_bit_entry_drives_the_device_too() {
    let (code, r) = probe(&["--blk-queues", "2", "--vcpus", "2", "--boot", "linux64"]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["boot_protocol"], "linux64");
    assert_msi_counts(only_device(&r), 2);
}

#[test]
fn bad_queue_counts_are_refused_with_one_line() {
    for bad in ["0", "65"] {
        let out = Command::new(BIN)
            .args(["probe", "--blk-queues", bad])
            .output()
            .expect("run pulse-vmm probe");
        assert_eq!(out.status.code(), Some(2), "--blk-queues {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("pulse-vmm: error:"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn a_guest_asking_for_msi_falls_back_when_the_vmm_offers_none() {
    let (code, r) = probe(&["--blk-queues", "2", "--offer-msi", "off"]);
    assert_eq!(code, Some(0), "{r}");
    let d = only_device(&r);
    assert_eq!(d["msi_enabled"], false);
    assert_eq!(d["guest_msi"], false);
    assert!(
        d["guest_note"]
            .as_str()
            .unwrap_or("")
            .contains("not offered"),
        "{d}"
    );
    assert_eq!(d["requests_completed"], 2 * 32);
    assert_eq!(d["data_errors"], 0);
    assert!(d["legacy"]["sent"].as_u64().unwrap() > 0);
}

#[test]
fn a_disk_changed_while_the_guest_runs_raises_the_config_vector() {
    for irq in ["msi", "legacy"] {
        let (code, r) = probe(&["--blk-queues", "2", "--blk-resize", "--irq", irq]);
        assert_eq!(code, Some(0), "{irq}: {r}");
        let d = only_device(&r);
        let resize = &d["resize"];
        assert_eq!(resize["config_interrupts"], 1, "{irq}: {d}");
        assert_eq!(
            resize["capacity_after"].as_u64().unwrap(),
            2 * resize["capacity_before"].as_u64().unwrap(),
            "{irq}: {d}"
        );
        assert_eq!(resize["config_generation_moved"], true);
        if irq == "msi" {
            let config = &d["vectors"][0];
            assert_eq!(config["role"], "config");
            assert_eq!(
                (config["sent"].as_u64(), config["received"].as_u64()),
                (Some(1), Some(1))
            );
        }
    }
}
