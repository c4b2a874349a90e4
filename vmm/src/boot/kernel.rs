//! Kernel image loading: ELF (`vmlinux`, the probe) and bzImage, through `linux-loader`.
//!
//! Before handing an ELF to `linux-loader` its headers are checked here, so that a truncated
//! file or a kernel larger than guest memory gets an error that says so, rather than a generic
//! "unable to read kernel image".

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::GuestAddress;

use crate::layout;
use crate::memory::GuestMemoryMmap;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELF_HEADER_SIZE: usize = 64;
const ELF_PHDR_SIZE: u64 = ELF_PHDR_LEN as u64;
const ELF_PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 0x3e;
/// Offset of the "HdrS" magic of the Linux x86 boot protocol header.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// The 64-bit entry of a bzImage sits 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Kernel image problems.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Reading the file failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// Neither ELF nor bzImage.
    #[error("not an ELF or bzImage kernel (no ELF magic, no 'HdrS' boot header)")]
    UnknownFormat,
    /// An ELF for another machine or class.
    #[error("ELF is not a 64-bit little-endian x86_64 executable")]
    WrongElfKind,
    /// The file ends before its headers or segments do.
    #[error(
        "ELF is truncated: {what} needs bytes up to offset {needed:#x} but the file has {len:#x}"
    )]
    Truncated {
        /// Which part.
        what: String,
        /// Offset needed.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// The ELF has nothing to load.
    #[error("ELF has no loadable segment")]
    NoLoadableSegment,
    /// A segment would overwrite the boot data below 1 MiB.
    #[error("ELF segment at {0:#x} is below 1 MiB, where the VMM keeps boot data")]
    SegmentTooLow(u64),
    /// The kernel needs more memory than the guest has below the MMIO gap.
    #[error("kernel needs memory up to {needed:#x}")]
    TooLarge {
        /// End address needed.
        needed: u64,
    },
    /// `linux-loader` rejected the image.
    #[error("{0}")]
    Loader(#[from] linux_loader::loader::Error),
}

/// Result of loading a kernel.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Entry of the 64-bit boot protocol.
    pub entry_64: u64,
    /// Entry of the PVH protocol, if the kernel has one.
    pub pvh_entry: Option<u64>,
    /// First byte after the image (including its bss).
    pub kernel_end: u64,
    /// The boot header of a bzImage, to start the zero page from.
    pub setup_header: Option<setup_header>,
}

/// What a kernel image is read from: the kernel file, or a cursor over bytes in tests.
pub trait KernelImage: Read + Seek + vm_memory::ReadVolatile {}

impl<F: Read + Seek + vm_memory::ReadVolatile> KernelImage for F {}

/// Loads an ELF or bzImage into `mem`; `ram_end` is the end of RAM below the MMIO gap.
pub fn load(
    mem: &GuestMemoryMmap,
    image: &mut impl KernelImage,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let len = image.seek(SeekFrom::End(0))?;
    let mut magic = [0u8; 4];
    image.rewind()?;
    if len >= 4 {
        image.read_exact(&mut magic)?;
    }
    if magic == ELF_MAGIC {
        return load_elf(mem, image, len, ram_end);
    }
    if len >= BZIMAGE_MAGIC_OFFSET + 4 {
        image.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))?;
        image.read_exact(&mut magic)?;
        if &magic == b"HdrS" {
            return load_bzimage(mem, image, ram_end);
        }
    }
    Err(KernelError::UnknownFormat)
}

fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(buf[off..off + 2].try_into().expect("2 bytes"))
}
fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

/// Checks the ELF headers against the file length and guest memory; returns the end address of
/// the loaded image.
fn check_elf<F: Read + Seek>(image: &mut F, len: u64, ram_end: u64) -> Result<u64, KernelError> {
    let truncated = |what: &str, needed: u64| KernelError::Truncated {
        what: what.to_string(),
        needed,
        len,
    };
    if len < ELF_HEADER_SIZE as u64 {
        return Err(truncated("the ELF header", ELF_HEADER_SIZE as u64));
    }
    let mut ehdr = [0u8; ELF_HEADER_SIZE];
    image.rewind()?;
    image.read_exact(&mut ehdr)?;
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little endian), e_machine = x86_64.
    if ehdr[4] != 2 || ehdr[5] != 1 || u16_at(&ehdr, 18) != EM_X86_64 {
        return Err(KernelError::WrongElfKind);
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    if phentsize != ELF_PHDR_SIZE {
        return Err(KernelError::WrongElfKind);
    }
    let ph_end = phoff.saturating_add(phnum * ELF_PHDR_SIZE);
    if ph_end > len {
        return Err(truncated("the program header table", ph_end));
    }
    let mut end = 0u64;
    for i in 0..phnum {
        let mut phdr = [0u8; ELF_PHDR_LEN];
        image.seek(SeekFrom::Start(phoff + i * ELF_PHDR_SIZE))?;
        image.read_exact(&mut phdr)?;
        if u32_at(&phdr, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr) = (u64_at(&phdr, 8), u64_at(&phdr, 24));
        let (filesz, memsz) = (u64_at(&phdr, 32), u64_at(&phdr, 40));
        let file_end = offset.saturating_add(filesz);
        if file_end > len {
            return Err(truncated(&format!("segment {i}"), file_end));
        }
        if memsz == 0 {
            continue;
        }
        if paddr < layout::HIMEM_START {
            return Err(KernelError::SegmentTooLow(paddr));
        }
        end = end.max(paddr.saturating_add(memsz.max(filesz)));
    }
    if end == 0 {
        return Err(KernelError::NoLoadableSegment);
    }
    if end > ram_end {
        return Err(KernelError::TooLarge { needed: end });
    }
    Ok(end)
}

fn load_elf(
    mem: &GuestMemoryMmap,
    image: &mut impl KernelImage,
    len: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let end = check_elf(image, len, ram_end)?;
    let result = Elf::load(mem, None, image, Some(GuestAddress(layout::HIMEM_START)))?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    Ok(LoadedKernel {
        entry_64: result.kernel_load.0,
        pvh_entry,
        kernel_end: end.max(result.kernel_end),
        setup_header: None,
    })
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    image: &mut impl KernelImage,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    image.rewind()?;
    let result = BzImage::load(mem, None, image, Some(GuestAddress(layout::HIMEM_START)))?;
    let header = result
        .setup_header
        .expect("bzImage loads carry their setup header");
    // The kernel decompresses in place and needs init_size bytes from its load address.
    let needed = result.kernel_load.0 + u64::from(header.init_size);
    if needed > ram_end {
        return Err(KernelError::TooLarge { needed });
    }
    Ok(LoadedKernel {
        entry_64: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        pvh_entry: None,
        kernel_end: result.kernel_end.max(needed),
        setup_header: Some(header),
    })
}
