//! Leaving the VM through the debug-exit port.
//!
//! The probe writes one byte to port 0x501 and halts. The Pulse VMM stops the VM on that
//! write; QEMU's `isa-debug-exit,iobase=0x501` exits with status `value * 2 + 1`.

use crate::arch;

pub const DEBUG_EXIT_PORT: u16 = 0x501;

/// The byte written to [`DEBUG_EXIT_PORT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    /// The report says `ok:false`.
    Failure = 1,
    /// A CPU exception (the report says `ok:false` and names it).
    Exception = 3,
    Panic = 4,
}

pub fn exit(code: ExitCode) -> ! {
    crate::serial::flush();
    arch::outb(DEBUG_EXIT_PORT, code as u8);
    arch::halt_forever()
}
