//! The kernel loader against good and malformed images.

mod common;

use std::io::Cursor;

use common::{elf, LOAD_ADDR};
use pulse_vmm::boot::kernel::{load, KernelError};
use pulse_vmm::memory::{create_guest_memory, GuestMemoryMmap};

const RAM_END: u64 = 16 << 20;

fn mem() -> GuestMemoryMmap {
    create_guest_memory(16).unwrap()
}

fn try_load(image: &[u8]) -> Result<pulse_vmm::boot::kernel::LoadedKernel, KernelError> {
    load(&mem(), &mut Cursor::new(image), RAM_END)
}

/// Rewrites the load address of the single PT_LOAD segment.
fn at(mut image: Vec<u8>, paddr: u64) -> Vec<u8> {
    image[24..32].copy_from_slice(&paddr.to_le_bytes());
    image[64 + 16..64 + 24].copy_from_slice(&paddr.to_le_bytes());
    image[64 + 24..64 + 32].copy_from_slice(&paddr.to_le_bytes());
    image
}

#[test]
fn loads_an_elf_and_finds_its_pvh_note() {
    let k = try_load(&elf(&[0xf4; 16], None)).unwrap();
    assert_eq!((k.entry_64, k.kernel_end), (LOAD_ADDR, LOAD_ADDR + 16));
    assert!(k.pvh_entry.is_none());
    let k = try_load(&elf(&[0xf4; 16], Some(&[0xf4; 4]))).unwrap();
    assert_eq!(k.pvh_entry, Some(LOAD_ADDR + 16));
}

#[test]
fn rejects_files_that_are_no_kernel() {
    for junk in [vec![], vec![0x55u8; 4096], b"#!/bin/sh\necho hi\n".to_vec()] {
        assert!(matches!(try_load(&junk), Err(KernelError::UnknownFormat)));
    }
}

#[test]
fn rejects_truncated_elf_at_every_part() {
    let image = elf(&[0xf4; 64], None);
    for cut in [10, 70, image.len() - 1] {
        let err = try_load(&image[..cut]).unwrap_err();
        assert!(
            matches!(err, KernelError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn rejects_a_kernel_larger_than_memory() {
    let err = try_load(&at(elf(&[0xf4; 64], None), RAM_END - 8)).unwrap_err();
    assert!(
        matches!(err, KernelError::TooLarge { needed } if needed == RAM_END + 56),
        "{err}"
    );
}

#[test]
fn rejects_segments_over_the_boot_data() {
    let err = try_load(&at(elf(&[0xf4; 16], None), 0x7000)).unwrap_err();
    assert!(matches!(err, KernelError::SegmentTooLow(0x7000)), "{err}");
}

#[test]
fn rejects_other_architectures() {
    let mut image = elf(&[0xf4; 16], None);
    image[18] = 0xb7; // aarch64
    assert!(matches!(try_load(&image), Err(KernelError::WrongElfKind)));
}

#[test]
fn rejects_a_broken_bzimage() {
    // A boot header magic with nothing behind it.
    let mut image = vec![0u8; 0x1000];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    assert!(matches!(try_load(&image), Err(KernelError::Loader(_))));
}
