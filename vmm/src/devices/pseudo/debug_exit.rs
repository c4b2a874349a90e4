//! The debug-exit port: a guest write stops the VM with that byte as its status (the same port
//! as QEMU's `isa-debug-exit`, so test guests run under both).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitController, VmExit};

/// The debug-exit port.
pub struct DebugExit {
    exit: Arc<ExitController>,
}

impl DebugExit {
    /// A port that reports to `exit`.
    pub fn new(exit: Arc<ExitController>) -> Self {
        Self { exit }
    }
}

impl BusDevice for DebugExit {
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(code) = data.first() {
            self.exit.request(VmExit::DebugExit(*code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stops_with_status() {
        let exit = Arc::new(ExitController::new().unwrap());
        DebugExit::new(exit.clone()).write(0, &[5]);
        assert_eq!(exit.reason(), Some(VmExit::DebugExit(5)));
    }
}
