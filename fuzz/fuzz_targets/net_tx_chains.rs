//! virtio-net transmit: the tx queue's rings built from the input, one worker turn, frames
//! to a stand-in tap. Input: a ring program (see `Ring::decode`), the data blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{chain_bytes, guest_memory, load_data, After, Image, Input, Ring};
use pulse_vmm::fuzzing::{net_turn, NetQueue};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut img = Image::new();
    let ring = Ring::decode(1, &mut input, &mut img);
    load_data(&mut img, input.rest());
    let mem = guest_memory();
    img.load(mem);

    let turn = net_turn(mem, NetQueue::Tx, ring.queue(), &[]);

    let after = After::take(img, mem);
    assert_eq!(
        turn.frames as usize,
        turn.to_tap.len(),
        "frames counted, frames the tap got"
    );
    if !after.clean(&[&ring]) {
        return;
    }
    after.check_writes(&[&ring]);
    for (id, len) in after.check_used(&ring) {
        assert_eq!(len, 0, "transmit chain {id} returned with length {len}");
    }
    assert!(turn.frames <= ring.well_formed(&after.before));
    // Every frame the tap got is exactly the bytes of a well-formed published chain (or, for
    // a chain that reads the used ring, which the turn itself updates, as long as one).
    let used = ring.used_area();
    let chains: Vec<(Vec<u8>, bool)> =
        ring.walks(&after.before)
            .iter()
            .filter(|(_, w)| w.well_formed)
            .filter_map(|(_, w)| {
                let reads_used = w.descs.iter().any(|d| {
                    d.addr < used.end && used.start < d.addr.saturating_add(u64::from(d.len))
                });
                chain_bytes(&after.before, w).map(|b| (b, reads_used))
            })
            .collect();
    for f in &turn.to_tap {
        assert!(
            chains
                .iter()
                .any(|(c, reads_used)| c == f || (*reads_used && c.len() == f.len())),
            "the tap got a frame of {} bytes that no chain holds (chains of {:?} bytes)",
            f.len(),
            chains.iter().map(|c| c.0.len()).collect::<Vec<_>>()
        );
    }
});
