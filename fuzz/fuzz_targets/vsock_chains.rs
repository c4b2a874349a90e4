//! virtio-vsock: the rx, tx and (optionally) event rings built from the input, a transmit
//! turn (guest packets: connects to host ports nobody listens on, RSTs, data for unknown
//! connections, garbage), a receive turn (the replies) and an event turn. Input: `cfg u8
//! (bit 0: an event queue, bit 1: guest CID 3, else the next u64)`, [`guest_cid u64`], the
//! ring programs of rx, tx [and event], the data blob.

#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{guest_memory, load_data, After, Image, Input, Ring};
use pulse_vmm::devices::vsock::muxer::MAX_QUEUED_REPLIES;
use pulse_vmm::fuzzing::{vsock_turn, VsockHost};

fn host() -> &'static VsockHost {
    static HOST: OnceLock<VsockHost> = OnceLock::new();
    HOST.get_or_init(|| VsockHost::new().expect("vsock listener"))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let cid = if cfg & 2 != 0 { 3 } else { input.u64() };
    let mut img = Image::new();
    let rx = Ring::decode(0, &mut input, &mut img);
    let tx = Ring::decode(1, &mut input, &mut img);
    let ev = (cfg & 1 != 0).then(|| Ring::decode(2, &mut input, &mut img));
    load_data(&mut img, input.rest());
    let mem = guest_memory();
    img.load(mem);

    let turn = vsock_turn(
        mem,
        host(),
        cid,
        rx.queue(),
        tx.queue(),
        ev.as_ref().map(Ring::queue),
    );

    let after = After::take(img, mem);
    assert!(turn.replies_queued <= MAX_QUEUED_REPLIES);
    let mut rings = vec![&rx, &tx];
    rings.extend(ev.as_ref());
    if !after.clean(&rings) {
        return;
    }
    after.check_writes(&rings);
    for (id, len) in after.check_used(&tx) {
        assert_eq!(len, 0, "transmit chain {id} returned with length {len}");
    }
    assert!(
        turn.tx_packets <= tx.well_formed(&after.before),
        "{} packets taken from {} well-formed chains",
        turn.tx_packets,
        tx.well_formed(&after.before)
    );
    for r in [Some(&rx), ev.as_ref()].into_iter().flatten() {
        let walks: HashMap<u16, _> = r.walks(&after.before).into_iter().collect();
        for (id, len) in after.check_used(r) {
            let w = &walks[&(id as u16)];
            assert!(u64::from(len) <= w.writable_bytes());
            if len > 0 {
                assert!(
                    w.well_formed,
                    "malformed chain {id} on queue {} got {len} bytes",
                    r.index
                );
            }
        }
    }
});
