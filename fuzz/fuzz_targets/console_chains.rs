//! virtio-console: receiveq0 and transmitq0 built from the input, an output turn, then an
//! input turn with host input from a pipe. Input: the ring programs of rx and tx, `len u16`
//! and that many bytes of host input, the data blob.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{guest_memory, load_data, After, Image, Input, Ring};
use pulse_vmm::fuzzing::console_turn;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut img = Image::new();
    let rx = Ring::decode(0, &mut input, &mut img);
    let tx = Ring::decode(1, &mut input, &mut img);
    let len = usize::from(input.u16());
    let host_input = input.bytes(len);
    load_data(&mut img, input.rest());
    let mem = guest_memory();
    img.load(mem);

    let turn = console_turn(mem, rx.queue(), tx.queue(), host_input);

    let after = After::take(img, mem);
    assert!(turn.rx_bytes <= host_input.len() as u64);
    if !after.clean(&[&rx, &tx]) {
        return;
    }
    after.check_writes(&[&rx, &tx]);
    for (id, len) in after.check_used(&tx) {
        assert_eq!(len, 0, "output chain {id} returned with length {len}");
    }
    // Errors also count skipped entries (heads beyond the table), which are no chains.
    let ok = turn.tx_chains.saturating_sub(turn.tx_errors);
    assert!(ok <= tx.well_formed(&after.before));
    let walks: HashMap<u16, _> = rx.walks(&after.before).into_iter().collect();
    for (id, len) in after.check_used(&rx) {
        let w = &walks[&(id as u16)];
        assert!(u64::from(len) <= w.writable_bytes());
        if len > 0 {
            assert!(w.well_formed, "malformed input chain {id} got {len} bytes");
        }
    }
});
