//! The embedded probe guest under real KVM, through the `pulse-vmm probe` command.

mod probe_run;

use probe_run::probe;

#[test]
fn boots_on_two_vcpus_through_pvh() {
    let (code, r) = probe(&["--vcpus", "2"]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["booted"], true);
    assert_eq!(r["vcpus"], 2);
    assert!(r["boot_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["boot_protocol"], "pvh");
    assert_eq!(r["guest"]["apic_ids"], serde_json::json!([0, 1]));
    assert_eq!(r["exit"]["kind"], "debug-exit");
    assert_eq!(
        r["seccomp"], true,
        "the VMM's threads run under their filters"
    );
}

#[test]
fn the_filters_can_be_turned_off_for_debugging() {
    let (code, r) = probe(&["--blk-queues", "1", "--seccomp", "off"]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["seccomp"], false);
}

#[test]
fn boots_every_vcpu_through_the_64_bit_entry() {
    let (code, r) = probe(&["--vcpus", "4", "--boot", "linux64"]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["boot_protocol"], "linux64");
    assert_eq!(r["vcpus"], 4);
    assert_eq!(r["guest"]["mptable"], true);
}

#[test]
fn a_failing_guest_fails_the_command() {
    let (code, r) = probe(&["--guest-arg", "probe.selftest=fail"]);
    assert_eq!(code, Some(1));
    assert_eq!(r["ok"], false);
    assert_eq!(r["exit"]["detail"], 1);
}

#[test]
fn a_panicking_guest_is_reported() {
    let (code, r) = probe(&["--guest-arg", "probe.selftest=panic"]);
    assert_eq!(code, Some(1));
    assert_eq!(r["ok"], false);
    assert!(
        r["guest"]["panic"]
            .as_str()
            .unwrap_or("")
            .contains("selftest"),
        "{r}"
    );
}
