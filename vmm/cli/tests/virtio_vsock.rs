//! virtio-vsock over virtio-mmio with per-queue MSI, the probe guest as the driver under real
//! KVM, and the hybrid-vsock host side: 100 host processes' worth of connections (`CONNECT
//! <port>` on the VMM's socket) echoed by the guest, a guest-initiated connection to a host
//! listener on `<uds>_<port>`, and a transport reset through the event queue.

mod probe_run;

use serde_json::Value;

use probe_run::{assert_raised_and_taken, device, probe};

fn assert_host_side(r: &Value, conns: u64) {
    let host = &r["vsock_host"];
    assert_eq!(host["echoed"], conns, "{host}");
    assert_eq!(host["mismatched"], 0, "{host}");
    assert_eq!(host["guest_connected"], true, "{host}");
    assert_eq!(host["resets"], 1, "{host}");
    let guest = &device(r, "vsock")["vsock"];
    assert_eq!(guest["conns_done"], conns, "{guest}");
    assert_eq!(guest["bytes_echoed"], conns * 65536, "{guest}");
    assert_eq!(guest["connect_ok"], true, "{guest}");
    assert_eq!(guest["events"], 1, "{guest}");
}

#[test]
fn a_hundred_connections_echo_64k_each_with_msi() {
    let (code, r) = probe(&["--vsock", "--vsock-conns", "100", "--vsock-bytes", "65536"]);
    assert_eq!(code, Some(0), "{r}");
    assert_host_side(&r, 100);
    let d = device(&r, "vsock");
    assert_eq!(d["queues"], 3);
    assert_eq!(d["msi_enabled"], true);
    let vectors = d["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 4, "config + rx, tx, event");
    for v in &vectors[1..] {
        assert_raised_and_taken(v);
    }
    assert_eq!(r["interrupts_match"], true);
}

#[test]
fn the_same_on_the_legacy_line() {
    let (code, r) = probe(&["--vsock", "--irq", "legacy"]);
    assert_eq!(code, Some(0), "{r}");
    assert_host_side(&r, 100);
    let d = device(&r, "vsock");
    assert_eq!(d["msi_enabled"], false);
    assert!(d["legacy"]["sent"].as_u64().unwrap() > 0, "{d}");
}

#[test]
fn vsock_beside_a_block_device_on_two_vcpus() {
    let (code, r) = probe(&[
        "--vsock",
        "--vsock-conns",
        "20",
        "--blk-queues",
        "2",
        "--vcpus",
        "2",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_host_side(&r, 20);
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    assert_eq!(r["interrupts_match"], true);
}
