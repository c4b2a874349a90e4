//! Everything that prepares a guest to run its first instruction: the kernel and initrd in guest
//! memory, the boot-protocol data (Linux zero page or PVH start info), the MP table, and the
//! architectural state of each vCPU.

pub mod cpu;
pub mod cpuid;
pub mod kernel;
pub mod mptable;
pub mod pvh;
pub mod zero_page;

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::{low_ram_end, GuestMemoryMmap};

/// Where the kernel image comes from.
#[derive(Clone, Debug)]
pub enum KernelSource {
    /// A file on the host.
    Path(PathBuf),
    /// An image held in memory, such as the probe guest embedded in the binary.
    Bytes(Arc<[u8]>),
}

/// Which entry convention the guest is started with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the ELF carries the PVH note, else the Linux 64-bit boot protocol.
    #[default]
    Auto,
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, `ebx` = `hvm_start_info`.
    Pvh,
}

impl std::str::FromStr for BootProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "linux64" => Ok(Self::Linux64),
            "pvh" => Ok(Self::Pvh),
            other => Err(format!(
                "unknown boot protocol '{other}' (expected auto, linux64 or pvh)"
            )),
        }
    }
}

/// How the boot vCPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit entry at `rip` with `rsi` = zero page.
    Linux64 {
        /// Entry address.
        rip: u64,
    },
    /// 32-bit PVH entry at `rip` with `ebx` = start info.
    Pvh {
        /// Entry address.
        rip: u64,
    },
}

impl EntryPoint {
    /// Short name for reports.
    pub fn protocol_name(&self) -> &'static str {
        match self {
            EntryPoint::Linux64 { .. } => "linux64",
            EntryPoint::Pvh { .. } => "pvh",
        }
    }
}

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd file cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel image is malformed or of an unknown format.
    #[error("kernel image: {0}")]
    Kernel(#[from] kernel::KernelError),
    /// The kernel does not fit.
    #[error(
        "guest memory of {mem_mib} MiB is too small: the kernel needs memory up to {needed:#x}"
    )]
    KernelTooLarge {
        /// Guest memory size.
        mem_mib: u64,
        /// End address the kernel needs.
        needed: u64,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory after the kernel (ends at {kernel_end:#x}, RAM below 4 GiB ends at {ram_end:#x})")]
    InitrdTooLarge {
        /// Size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// PVH was requested but the kernel has no PVH entry.
    #[error("PVH boot requested but the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry,
    /// The command line is too long.
    #[error("kernel command line is {len} bytes, longer than the {max} the guest accepts")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit, without the NUL.
        max: usize,
    },
    /// The command line holds a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Writing boot data into guest memory failed.
    #[error("writing {what} into guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
}

/// What the loader leaves behind for the vCPU setup.
#[derive(Clone, Copy, Debug)]
pub struct BootSetup {
    /// Where and how the boot vCPU starts.
    pub entry: EntryPoint,
    /// First byte after the kernel image.
    pub kernel_end: u64,
}

/// Guest inputs of one boot.
pub struct BootInputs<'a> {
    /// The kernel image.
    pub kernel: &'a KernelSource,
    /// An optional initrd.
    pub initrd: Option<&'a Path>,
    /// The full kernel command line.
    pub cmdline: &'a str,
    /// Requested protocol.
    pub protocol: BootProtocol,
    /// vCPU count, for the MP table.
    pub vcpus: u8,
}

/// Validates a command line against the guest's limit.
pub fn check_cmdline(cmdline: &str) -> Result<(), BootError> {
    let max = layout::CMDLINE_MAX_SIZE - 1;
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    Ok(())
}

/// Loads kernel and initrd, writes the command line, the boot-protocol data and the MP table.
pub fn load_guest(mem: &GuestMemoryMmap, inputs: &BootInputs) -> Result<BootSetup, BootError> {
    check_cmdline(inputs.cmdline)?;
    let loaded = match inputs.kernel {
        KernelSource::Path(path) => {
            let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
                path: path.clone(),
                source,
            })?;
            load_image(mem, &mut file)?
        }
        KernelSource::Bytes(bytes) => load_image(mem, &mut Cursor::new(&bytes[..]))?,
    };

    let initrd = match inputs.initrd {
        Some(path) => Some(load_initrd(mem, path, loaded.kernel_end)?),
        None => None,
    };

    let mut cmdline = inputs.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(layout::CMDLINE_START))
        .map_err(|source| BootError::GuestMemory {
            what: "command line",
            source,
        })?;

    mptable::write(mem, inputs.vcpus).map_err(|source| BootError::GuestMemory {
        what: "MP table",
        source,
    })?;

    let use_pvh = match (inputs.protocol, loaded.pvh_entry) {
        (BootProtocol::Pvh, None) => return Err(BootError::NoPvhEntry),
        (BootProtocol::Pvh, Some(_)) | (BootProtocol::Auto, Some(_)) => true,
        _ => false,
    };
    let ram = zero_page::ram_map(mem);
    let entry = if use_pvh {
        pvh::write_start_info(mem, &ram, cmdline.len(), initrd).map_err(|source| {
            BootError::GuestMemory {
                what: "PVH start info",
                source,
            }
        })?;
        EntryPoint::Pvh {
            rip: loaded.pvh_entry.expect("checked above"),
        }
    } else {
        zero_page::write(mem, loaded.setup_header, &ram, cmdline.len(), initrd).map_err(
            |source| BootError::GuestMemory {
                what: "zero page",
                source,
            },
        )?;
        EntryPoint::Linux64 {
            rip: loaded.entry_64,
        }
    };
    Ok(BootSetup {
        entry,
        kernel_end: loaded.kernel_end,
    })
}

fn load_image(
    mem: &GuestMemoryMmap,
    image: &mut impl kernel::KernelImage,
) -> Result<kernel::LoadedKernel, BootError> {
    let ram_end = low_ram_end(mem);
    kernel::load(mem, image, ram_end).map_err(|e| match e {
        kernel::KernelError::TooLarge { needed } => BootError::KernelTooLarge {
            mem_mib: mem_mib(mem),
            needed,
        },
        other => BootError::Kernel(other),
    })
}

fn mem_mib(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter().map(|r| r.len()).sum::<u64>() >> 20
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Places the initrd page-aligned at the top of RAM below the MMIO gap, as bootloaders do.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdPlacement, BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::ReadInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = data.len() as u64;
    let ram_end = low_ram_end(mem);
    let too_large = BootError::InitrdTooLarge {
        size,
        kernel_end,
        ram_end,
    };
    let addr = ram_end.checked_sub(size).ok_or(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(BootError::InitrdTooLarge {
            size,
            kernel_end,
            ram_end,
        });
    }
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|source| BootError::GuestMemory {
            what: "initrd",
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_limits() {
        assert!(check_cmdline("console=ttyS0").is_ok());
        let long = "x".repeat(layout::CMDLINE_MAX_SIZE);
        assert!(matches!(
            check_cmdline(&long),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(check_cmdline("a\0b"), Err(BootError::CmdlineNul)));
    }

    #[test]
    fn protocol_names_parse() {
        assert_eq!("pvh".parse::<BootProtocol>(), Ok(BootProtocol::Pvh));
        assert!("bios".parse::<BootProtocol>().is_err());
    }
}
