//! Pulse's end-to-end test fixtures.
//!
//! - [`qemu`]: the QEMU rig. Boots the project's guest kernel and initramfs
//!   (`make guest`) under `qemu-system-x86_64 -M microvm -accel tcg`, with
//!   virtio-mmio block disks and a vsock device backed by
//!   `vhost-device-vsock`, and hands out the agent's hybrid-vsock address.
//!   A test fixture only: the product path is Pulse's own VMM.
//! - [`agent`]: ttrpc clients for the agent in such a guest.
//! - [`embedded`]: the same guest under Pulse's own VMM (the library the
//!   shim embeds), one MSI per queue; needs VT-x/AMD-V or the nested rig.
//! - [`nested`]: the nested-virtualization rig (`scripts/nested.sh`): a
//!   command run as root in an L1 guest whose KVM has (emulated) AMD SVM, so
//!   that Pulse's own VMM boots the real Linux guest on these machines.
//! - [`rootfs`]: busybox root filesystems and ext4 images of them.
//! - [`shell`]: a privileged root shell in the guest through the agent.
//! - [`connect`]: pulse-ctl's connection code (`hvsock://PATH:PORT`), the
//!   same source file, compiled into this crate.

pub mod agent;
#[path = "../../ctl/src/connect.rs"]
pub mod connect;
pub mod embedded;
pub mod nested;
pub mod qemu;
mod ready;
pub mod rootfs;
pub mod shell;

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where `make guest` puts the kernel and the initramfs.
pub fn guest_build_dir() -> PathBuf {
    std::env::var_os("PULSE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest"))
}

/// `make guest`'s kernel and initramfs, both there.
pub fn guest_images() -> Result<(PathBuf, PathBuf)> {
    let dir = guest_build_dir();
    let (kernel, initramfs) = (dir.join("vmlinux"), dir.join("initramfs.cpio.lz4"));
    for f in [&kernel, &initramfs] {
        if !f.is_file() {
            bail!("{} is missing: run `make guest` first", f.display());
        }
    }
    Ok((kernel, initramfs))
}
