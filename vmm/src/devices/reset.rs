//! The reset control register at port 0xcf9: writing a value with the reset bit (2) set is how
//! Linux's `reboot=pci` and firmware reset the machine. Pulse stops the VM instead.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitController, VmExit};

/// Port of the reset control register.
pub const RESET_PORT: u16 = 0xcf9;
const RESET_CPU: u8 = 1 << 2;

/// The reset control register.
pub struct ResetControl {
    exit: Arc<ExitController>,
    value: u8,
}

impl ResetControl {
    /// A register that reports resets to `exit`.
    pub fn new(exit: Arc<ExitController>) -> Self {
        Self { exit, value: 0 }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let [value] = data {
            self.value = *value & !RESET_CPU;
            if value & RESET_CPU != 0 {
                self.exit.request(VmExit::Reset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_bit_resets() {
        let exit = Arc::new(ExitController::new().unwrap());
        let mut reg = ResetControl::new(exit.clone());
        reg.write(0, &[0x2]);
        assert_eq!(exit.reason(), None);
        reg.write(0, &[0x6]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }
}
