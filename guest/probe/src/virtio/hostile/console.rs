//! The console's hostile output chains and a broken output ring.

use super::chains::{run_chains, Chains};
use super::device::HDev;
use super::{page, Tally, FAR, F_INDIRECT, F_NEXT, F_WRITE, SCRATCH_RAM, TOP};
use crate::virtio::buf::write_bytes;
/// One output chain on transmitq0; true when it came back.
pub(super) fn console_write(dev: &mut HDev, q: u16, text: &[u8]) -> bool {
    let at = page(dev.d, 7);
    write_bytes(at, text);
    dev.desc(q, 0, at, text.len() as u32, 0, 0);
    dev.roundtrip(q, 0)
}

pub(super) fn console(dev: &mut HDev, t: &mut Tally) {
    let d = dev.d;
    let text = page(d, 2);
    write_bytes(text, b"pulse-probe hostile\n");
    let q = 1;
    let mut chains = Chains::new();
    dev.desc(q, 0, text, 20, F_NEXT, 0); // a loop
    chains.add(0, true);
    dev.desc(q, 1, text, 20, F_WRITE, 0); // writable output
    chains.add(1, true);
    dev.desc(q, 2, SCRATCH_RAM, 0x1_0000, F_NEXT, 3); // more than 64 KiB
    dev.desc(q, 3, SCRATCH_RAM, 0x1_0000, 0, 0);
    chains.add(2, true);
    dev.desc(q, 4, text, 0, 0, 0); // zero length
    chains.add(4, true);
    dev.desc(q, 5, FAR, 32, F_INDIRECT, 0);
    chains.add(5, true);
    dev.desc(q, 6, TOP, 64, 0, 0);
    chains.add(6, true);
    dev.desc(q, 7, text, 4, F_NEXT, 999);
    chains.add(7, true);
    chains.add(4000, false);
    dev.desc(q, 8, text, 20, 0, 0);
    chains.add(8, true);
    let (used, k) = run_chains(dev, t, q, &chains);
    t.check(
        used[..k].iter().all(|e| e.1 == 0),
        "hostile: an output chain came back with a length",
    );
    // A storm on the input queue with nothing posted.
    for _ in 0..2000 {
        dev.kick(0);
    }
    t.r.flood += 2000;
    // The output ring published far past the device: broken, DEVICE_NEEDS_RESET.
    t.r.broken_queue_seen = Some(dev.break_queue(1, 1));
}
