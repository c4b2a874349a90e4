//! virtio-net control queue: its rings built from the input, one worker turn. Input:
//! `features u8 (bit 0 MQ, bit 1 CTRL_MAC_ADDR, bit 2 CTRL_GUEST_OFFLOADS, bit 3
//! GUEST_CSUM)`, `pairs u8`, a ring program (see `Ring::decode`), the data blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{guest_memory, load_data, After, Image, Input, Ring};
use pulse_vmm::devices::net::{F_CTRL_GUEST_OFFLOADS, F_CTRL_MAC_ADDR, F_GUEST_CSUM, F_MQ};
use pulse_vmm::fuzzing::{net_turn, NetQueue};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let bits = input.u8();
    let pairs = u16::from(input.u8() % 9).max(1);
    let mut features = 0;
    for (bit, f) in [F_MQ, F_CTRL_MAC_ADDR, F_CTRL_GUEST_OFFLOADS, F_GUEST_CSUM]
        .into_iter()
        .enumerate()
    {
        if bits & (1 << bit) != 0 {
            features |= f;
        }
    }
    let mut img = Image::new();
    let ring = Ring::decode(2, &mut input, &mut img);
    load_data(&mut img, input.rest());
    let mem = guest_memory();
    img.load(mem);

    let turn = net_turn(mem, NetQueue::Ctrl { features, pairs }, ring.queue(), &[]);

    let after = After::take(img, mem);
    assert!((1..=pairs).contains(&turn.active_pairs));
    assert_eq!(turn.mac[0] & 1, 0, "a multicast MAC was accepted");
    if features & F_MQ == 0 {
        assert_eq!(turn.active_pairs, 1);
    }
    if !after.clean(&[&ring]) {
        return;
    }
    after.check_writes(&[&ring]);
    for (id, len) in after.check_used(&ring) {
        assert!(len <= 1, "control chain {id} returned with length {len}");
    }
    assert!(turn.frames <= ring.well_formed(&after.before));
});
