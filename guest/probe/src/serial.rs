//! COM1 (8250/16550 at 0x3F8), polled output only.

use crate::arch::{inb, outb, pause};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
const THR: u16 = 0; // transmit holding register (DLAB = 0)
const IER: u16 = 1; // interrupt enable (DLAB = 0)
const DLL: u16 = 0; // divisor latch low (DLAB = 1)
const DLM: u16 = 1; // divisor latch high (DLAB = 1)
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_TX_IDLE: u8 = 1 << 6;

/// Polls of LSR before a byte is sent anyway (a missing UART must not hang the probe).
const MAX_POLLS: u32 = 100_000;

static LOCK: AtomicBool = AtomicBool::new(false);

/// 115200 8N1, FIFOs on, no interrupts.
pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80);
    outb(COM1 + DLL, 0x01);
    outb(COM1 + DLM, 0x00);
    outb(COM1 + LCR, 0x03);
    outb(COM1 + FCR, 0xc7);
    outb(COM1 + MCR, 0x03);
}

fn wait_lsr(bit: u8) {
    for _ in 0..MAX_POLLS {
        if inb(COM1 + LSR) & bit != 0 {
            return;
        }
        pause();
    }
}

fn put(b: u8) {
    wait_lsr(LSR_THR_EMPTY);
    outb(COM1 + THR, b);
}

/// Waits until the transmitter has sent everything (before the VM is stopped).
pub fn flush() {
    wait_lsr(LSR_TX_IDLE);
}

/// The port as a `fmt::Write` sink; `\n` goes out as `\r\n`. Get one through [`with`].
pub struct Serial(());

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Runs `f` with the port to itself, so lines from different CPUs do not interleave.
/// The lock is taken with a bounded wait: a CPU that faulted while holding it (the
/// exception and panic paths print too) must not deadlock the report.
pub fn with<R>(f: impl FnOnce(&mut Serial) -> R) -> R {
    let mut locked = false;
    for _ in 0..10_000_000u32 {
        if LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            locked = true;
            break;
        }
        pause();
    }
    let r = f(&mut Serial(()));
    if locked {
        LOCK.store(false, Ordering::Release);
    }
    r
}

/// `println!` to COM1 (whole line under the lock).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::with(|s| {
            use core::fmt::Write as _;
            let _ = s.write_fmt(format_args!($($arg)*));
            let _ = s.write_str("\n");
        })
    };
}
