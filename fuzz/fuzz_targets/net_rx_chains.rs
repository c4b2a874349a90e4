//! virtio-net receive: the rx queue's rings built from the input, frames from the input
//! waiting on a stand-in tap, one worker turn. Input: `cfg u8 (bit 0 MRG_RXBUF, bit 1
//! GUEST_CSUM)`, a ring program (see `Ring::decode`), `nframes u8 (at most 8)`, each frame
//! `len u16` and its bytes (virtio-net header included), the data blob.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{guest_memory, load_data, After, Image, Input, Ring};
use pulse_vmm::fuzzing::{net_turn, NetQueue};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let mut img = Image::new();
    let ring = Ring::decode(0, &mut input, &mut img);
    let nframes = input.u8() % 9;
    let frames: Vec<&[u8]> = (0..nframes)
        .map(|_| {
            let len = usize::from(input.u16());
            input.bytes(len)
        })
        .collect();
    load_data(&mut img, input.rest());
    let mem = guest_memory();
    img.load(mem);

    let which = NetQueue::Rx {
        mergeable: cfg & 1 != 0,
        guest_csum: cfg & 2 != 0,
    };
    let turn = net_turn(mem, which, ring.queue(), &frames);

    let after = After::take(img, mem);
    assert!(turn.frames <= u64::from(nframes));
    if !after.clean(&[&ring]) {
        return;
    }
    after.check_writes(&[&ring]);
    let walks: HashMap<u16, _> = ring.walks(&after.before).into_iter().collect();
    let mut total = 0u64;
    for (id, len) in after.check_used(&ring) {
        let w = &walks[&(id as u16)];
        assert!(
            u64::from(len) <= w.writable_bytes(),
            "receive chain {id} returned with {len} bytes, it has {} writable",
            w.writable_bytes()
        );
        if len > 0 {
            assert!(
                w.well_formed,
                "malformed receive chain {id} got {len} bytes"
            );
        }
        total += u64::from(len);
    }
    let sent: u64 = frames.iter().map(|f| f.len() as u64).sum();
    assert!(
        total <= sent,
        "{total} bytes given to the guest, {sent} came from the tap"
    );
});
