//! Tiny hand-assembled guests for the VMM's tests, wrapped in minimal ELF files.
#![allow(dead_code)]

use std::path::PathBuf;

pub const LOAD_ADDR: u64 = 0x20_0000;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Instruction bytes that assemble the same in 32-bit and 64-bit mode.
pub mod asm {
    /// mov dx, port
    pub fn mov_dx(port: u16) -> Vec<u8> {
        let p = port.to_le_bytes();
        vec![0x66, 0xba, p[0], p[1]]
    }
    /// mov al, value
    pub fn mov_al(value: u8) -> Vec<u8> {
        vec![0xb0, value]
    }
    /// out dx, al
    pub const OUT_DX_AL: u8 = 0xee;
    /// Writes `value` to `port`.
    pub fn outb(port: u16, value: u8) -> Vec<u8> {
        let mut v = mov_dx(port);
        v.extend(mov_al(value));
        v.push(OUT_DX_AL);
        v
    }
    /// Writes `text` to COM1.
    pub fn print(text: &str) -> Vec<u8> {
        let mut v = mov_dx(0x3f8);
        for b in text.bytes() {
            v.extend(mov_al(b));
            v.push(OUT_DX_AL);
        }
        v
    }
    /// hlt
    pub const HLT: u8 = 0xf4;
    /// jmp $ (spin forever)
    pub const SPIN: [u8; 2] = [0xeb, 0xfe];
    /// ud2: an invalid opcode, with no IDT to handle it a triple fault.
    pub const UD2: [u8; 2] = [0x0f, 0x0b];
}

/// A guest that writes the boot timer, prints `text`, and leaves through debug-exit with `code`.
pub fn exiting_guest(text: &str, code: u8) -> Vec<u8> {
    let mut v = asm::outb(0x440, 123);
    v.extend(asm::print(text));
    v.extend(asm::outb(0x501, code));
    v.push(asm::HLT);
    v
}

/// An x86_64 ELF: `code` loaded at LOAD_ADDR as the 64-bit entry; with `pvh_code`, that code is
/// loaded right after it and announced as the PVH entry through a Xen ELF note.
pub fn elf(code: &[u8], pvh_code: Option<&[u8]>) -> Vec<u8> {
    let phnum: u16 = if pvh_code.is_some() { 2 } else { 1 };
    let headers = 64 + 56 * phnum as usize;
    let mut image = code.to_vec();
    let pvh_entry = LOAD_ADDR + image.len() as u64;
    if let Some(pvh) = pvh_code {
        image.extend_from_slice(pvh);
    }
    let mut note = Vec::new();
    if pvh_code.is_some() {
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&u32::try_from(pvh_entry).unwrap().to_le_bytes());
    }
    let code_off = headers as u64;
    let note_off = code_off + image.len() as u64;

    let mut elf = vec![0u8; headers];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&phnum.to_le_bytes());
    let mut phdr = |i: usize, kind: u32, off: u64, addr: u64, size: u64| {
        let p = 64 + 56 * i;
        elf[p..p + 4].copy_from_slice(&kind.to_le_bytes());
        elf[p + 4..p + 8].copy_from_slice(&7u32.to_le_bytes());
        elf[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
        elf[p + 16..p + 24].copy_from_slice(&addr.to_le_bytes());
        elf[p + 24..p + 32].copy_from_slice(&addr.to_le_bytes());
        elf[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
        elf[p + 40..p + 48].copy_from_slice(&size.to_le_bytes());
        elf[p + 48..p + 56].copy_from_slice(&4u64.to_le_bytes());
    };
    phdr(0, PT_LOAD, code_off, LOAD_ADDR, image.len() as u64);
    if pvh_code.is_some() {
        phdr(1, PT_NOTE, note_off, 0, note.len() as u64);
    }
    elf.extend_from_slice(&image);
    elf.extend_from_slice(&note);
    elf
}

/// A temporary file that is removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn with_contents(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pulse-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A minimal bzImage: a one-sector setup header (boot protocol 2.15, loaded high at 1 MiB) and
/// a protected-mode payload whose 64-bit entry, 0x200 bytes in, is `code64`.
pub fn bzimage(code64: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects: one sector after the boot sector
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    let mut payload = vec![0xf4u8; 0x200]; // 32-bit entry area: hlt
    payload.extend_from_slice(code64);
    let init_size = (u32::try_from(payload.len()).unwrap() + 0xfff) & !0xfff;
    image[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    image.extend_from_slice(&payload);
    image
}
