//! The guest's console output. The guest is hostile and the state directory
//! is on a tmpfs shared with containerd and every other pod, so the VMM never
//! writes a console file itself: it writes into a pipe, and a shim thread
//! ([`capture`]) copies the pipe into a log that rotates at a size cap
//! ([`capped_log`]: `console.log` and `console.log.1`, at most twice the cap
//! on disk). The OOM watcher ([`oom`]) reads only what was added since its
//! last look, across rotations.

pub mod capped_log;
pub mod capture;
pub mod oom;

pub use capped_log::{rotated_path, CappedLog};
pub use capture::ConsoleCapture;
pub use oom::{oom_container, OomScanner};
