//! Where the tests find virtiofsd: `PULSE_VIRTIOFSD`, then where `cargo install` and
//! distributions put it. Shared by the device's unit tests and the VM test of virtio-fs.

use std::path::PathBuf;

/// The virtiofsd binary; None, said on stderr, when there is none (the test is skipped).
pub fn find() -> Option<PathBuf> {
    let found = std::env::var_os("PULSE_VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd")))
        .chain(["/usr/local/bin/virtiofsd", "/usr/libexec/virtiofsd"].map(PathBuf::from))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: no virtiofsd (cargo install virtiofsd, or PULSE_VIRTIOFSD)");
    }
    found
}
