//! The panic handler: one JSON line, then exit code 4.

use crate::exit::{self, ExitCode};
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};
use pulse_probe::json::Object;

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    crate::arch::cli();
    if PANICKING.swap(true, Ordering::AcqRel) {
        // Panicked while reporting a panic (or on two CPUs at once).
        exit::exit(ExitCode::Panic);
    }
    crate::serial::with(|s| {
        let mut o = Object::new(s);
        crate::report::header(&mut o, false);
        o.fmt("panic", format_args!("{}", info.message()));
        if let Some(l) = info.location() {
            o.fmt("location", format_args!("{}:{}", l.file(), l.line()));
        }
        let _ = o.end();
        let _ = s.write_str("\n");
    });
    exit::exit(ExitCode::Panic)
}
