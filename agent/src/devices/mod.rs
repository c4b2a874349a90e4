//! The device and interrupt report: for every virtio device of the guest,
//! its transport, queues, whether MSI is in effect, and each interrupt
//! vector with its counts, plus where each fact came from. The report is
//! built directly as the API's message (`pulse_protocols::devices`), its one
//! definition.
//!
//! Everything is read below one root directory (`/` in a guest), so tests
//! can point the parser at fixture trees that hold `proc/` and `sys/`.

mod interrupts;
mod queues;
mod report;
mod virtio;

use std::path::{Path, PathBuf};

pub use interrupts::{parse_proc_interrupts, InterruptTable, IrqLine};
pub use report::collect;
pub use virtio::device_type_name;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing: {0}")]
    Parse(String),
}

impl ReportError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
