//! Builds the bare-metal probe guest (guest/probe, target x86_64-unknown-none) so that this
//! crate can embed it: `pulse-vmm probe` then needs no file. Only this test-harness crate does
//! it; the VMM library (and so the shim) builds no guest.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let probe_dir = manifest_dir.join("../../guest/probe");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("probe-target");
    // The guest's sources, and those of the spec crate it shares with the VMM.
    let spec_dir = manifest_dir.join("../../virtio-spec");
    for input in [
        probe_dir.join("src"),
        probe_dir.join("Cargo.toml"),
        probe_dir.join("build.rs"),
        probe_dir.join("link.ld"),
        probe_dir.join(".cargo"),
        spec_dir.join("src"),
        spec_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    // A prebuilt probe can be given instead (to try a modified guest without rebuilding it here).
    println!("cargo:rerun-if-env-changed=PULSE_PROBE_ELF");
    if let Ok(prebuilt) = env::var("PULSE_PROBE_ELF") {
        std::fs::copy(&prebuilt, out_dir.join("pulse-probe.elf"))
            .unwrap_or_else(|e| panic!("PULSE_PROBE_ELF={prebuilt}: {e}"));
        return;
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&probe_dir)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings (clippy's wrapper, host RUSTFLAGS, its target dir) must not
    // leak into a build for another target.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the probe guest: {e}"));
    if !status.success() {
        panic!(
            "building the probe guest failed ({status}); it needs the x86_64-unknown-none target: \
             rustup target add x86_64-unknown-none"
        );
    }
    let elf = target_dir.join("x86_64-unknown-none/release/pulse-probe");
    std::fs::copy(&elf, out_dir.join("pulse-probe.elf"))
        .unwrap_or_else(|e| panic!("probe guest not found at {}: {e}", elf.display()));
}
