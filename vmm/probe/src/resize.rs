//! The host side of the resize test: grows the disk when the guest asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pulse_vmm::devices::block::BlockHandle;
use pulse_vmm::devices::pseudo::phase_marker::Marks;

use crate::ResizeHostReport;

/// Waits for the guest's "change my disk" mark, then doubles the disk and reloads it.
pub(crate) struct Resizer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ResizeHostReport>,
}

/// The guest's phase mark that asks for the resize.
const PHASE_RESIZE: u8 = 3;

impl Resizer {
    pub(crate) fn start(marks: Marks, block: BlockHandle) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let asked = || {
                marks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|m| m.phase == PHASE_RESIZE)
            };
            while !asked() {
                if flag.load(Ordering::SeqCst) {
                    return ResizeHostReport {
                        error: Some("the guest never asked for the resize".into()),
                        ..ResizeHostReport::default()
                    };
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let grow = || -> Result<u64, String> {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(block.path())
                    .map_err(|e| e.to_string())?;
                let size = file.metadata().map_err(|e| e.to_string())?.len();
                file.set_len(size * 2).map_err(|e| e.to_string())?;
                block.reload(None).map_err(|e| e.to_string())
            };
            match grow() {
                Ok(capacity) => ResizeHostReport {
                    capacity,
                    error: None,
                },
                Err(e) => ResizeHostReport {
                    capacity: 0,
                    error: Some(e),
                },
            }
        });
        Self { stop, thread }
    }

    pub(crate) fn finish(self) -> ResizeHostReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_else(|_| ResizeHostReport {
            error: Some("resizer panicked".into()),
            ..ResizeHostReport::default()
        })
    }
}
