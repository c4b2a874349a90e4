//! Links the probe with its own linker script when building for the bare-metal target,
//! and keeps host builds (`cargo test --target x86_64-unknown-linux-gnu`) untouched.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        // The target defaults to static-pie; the 32-bit entry stub and the AP trampoline
        // need absolute addresses, so insist on a plain static executable. This also holds
        // when .cargo/config.toml is not read (cargo run from another directory): the Rust
        // code is then position-independent but still linked at its fixed address.
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-znorelro");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
    }
}
