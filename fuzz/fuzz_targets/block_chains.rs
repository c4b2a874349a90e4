//! virtio-blk request parsing: one queue's rings built from the input, one worker turn over a
//! small disk image. Input: `cfg u8 (bit 0 read-only)`, a ring program (see `Ring::decode`),
//! the data blob.

#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulse_fuzz::{guest_memory, load_data, After, Image, Input, Ring};

/// The disk: 128 sectors, rewritten with the same pattern before every run.
fn disk() -> &'static tempfile::NamedTempFile {
    static DISK: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    let disk = DISK.get_or_init(|| tempfile::NamedTempFile::new().expect("disk image"));
    let pattern: Vec<u8> = (0..128 * 512).map(|i| (i / 512) as u8).collect();
    std::fs::write(disk.path(), pattern).expect("disk contents");
    disk
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 != 0;
    let mut img = Image::new();
    let ring = Ring::decode(0, &mut input, &mut img);
    load_data(&mut img, input.rest());
    let mem = guest_memory();
    img.load(mem);

    let turn = pulse_vmm::fuzzing::block_turn(mem, ring.queue(), disk().path(), read_only);

    let after = After::take(img, mem);
    assert!(turn.failed <= turn.completed);
    if !after.clean(&[&ring]) {
        return;
    }
    after.check_writes(&[&ring]);
    let used = after.check_used(&ring);
    let walks: HashMap<u16, _> = ring.walks(&after.before).into_iter().collect();
    for (id, len) in &used {
        let w = &walks[&(*id as u16)];
        assert!(
            u64::from(*len) <= w.writable_bytes(),
            "used length {len} of head {id}, its chain has {} writable bytes",
            w.writable_bytes()
        );
    }
    let ok = turn.completed - turn.failed;
    assert!(
        ok <= ring.well_formed(&after.before),
        "{ok} requests succeeded, only {} chains were well formed",
        ring.well_formed(&after.before)
    );
});
