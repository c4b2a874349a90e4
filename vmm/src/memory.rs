//! Guest RAM: anonymous mappings through `vm-memory`, registered with KVM as memory slots; or,
//! for a VM with a vhost-user device, one memfd mapped shared ([`create_shared_guest_memory`]),
//! whose descriptor the backend process maps too.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout;

/// The guest's RAM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Smallest guest accepted: room for the fixed boot areas and a small kernel.
pub const MIN_MEMORY_MIB: u64 = 8;
/// Largest guest accepted (1 TiB): a sanity bound on configuration input.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Errors while setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The configured size is outside what Pulse accepts.
    #[error(
        "guest memory of {0} MiB is out of range ({MIN_MEMORY_MIB} MiB to {MAX_MEMORY_MIB} MiB)"
    )]
    InvalidSize(u64),
    /// The host could not map the memory.
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Mmap {
        /// Requested size.
        size_mib: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The memfd behind shared guest memory could not be made.
    #[error("cannot create the memfd of {size_mib} MiB of shared guest memory: {source}")]
    Memfd {
        /// Requested size.
        size_mib: u64,
        /// Why.
        source: std::io::Error,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    SetMemoryRegion {
        /// The slot.
        slot: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

/// Maps `mem_mib` MiB of guest RAM laid out as [`layout::ram_regions`] says.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mem_mib) {
        return Err(MemoryError::InvalidSize(mem_mib));
    }
    let ranges = layout::ram_regions(mem_mib << 20)
        .into_iter()
        .map(|(start, size)| Ok((GuestAddress(start), region_len(size, mem_mib)?)))
        .collect::<Result<Vec<(GuestAddress, usize)>, MemoryError>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap {
        size_mib: mem_mib,
        source,
    })
}

/// Maps `mem_mib` MiB of guest RAM laid out as [`layout::ram_regions`] says, every region from
/// one memfd (regions at their offsets in it, in order) mapped `MAP_SHARED`: a vhost-user
/// backend maps the same pages from the descriptor each region's `file_offset` holds.
pub fn create_shared_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mem_mib) {
        return Err(MemoryError::InvalidSize(mem_mib));
    }
    let memfd_err = |source| MemoryError::Memfd {
        size_mib: mem_mib,
        source,
    };
    let fd = nix::sys::memfd::memfd_create(
        c"pulse-guest-ram",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| memfd_err(e.into()))?;
    let file = std::sync::Arc::new(std::fs::File::from(fd));
    file.set_len(mem_mib << 20).map_err(memfd_err)?;
    let mut offset = 0u64;
    let ranges = layout::ram_regions(mem_mib << 20)
        .into_iter()
        .map(|(start, size)| {
            let region = (
                GuestAddress(start),
                region_len(size, mem_mib)?,
                Some(vm_memory::FileOffset::from_arc(file.clone(), offset)),
            );
            offset += size;
            Ok(region)
        })
        .collect::<Result<Vec<(GuestAddress, usize, Option<vm_memory::FileOffset>)>, MemoryError>>(
        )?;
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|source| MemoryError::Mmap {
        size_mib: mem_mib,
        source,
    })
}

/// A RAM region's size as the length of its mapping (on 64-bit hosts, always).
fn region_len(size: u64, mem_mib: u64) -> Result<usize, MemoryError> {
    usize::try_from(size).map_err(|_| MemoryError::InvalidSize(mem_mib))
}

/// Registers every region of `mem` with KVM, one slot per region.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host_addr = mem
            .get_host_address(region.start_addr())
            .expect("a region's own start address is mapped") as u64;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr,
        };
        // SAFETY: the host range [userspace_addr, userspace_addr + memory_size) is a live mapping
        // owned by `mem`, which the VM keeps alive for as long as the VmFd exists.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::SetMemoryRegion { slot, source })?;
    }
    Ok(())
}

/// Bytes of guest RAM that are resident on the host (pages the guest or the loader touched).
pub fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
    let page = page_size();
    let mut resident = 0u64;
    for region in mem.iter() {
        let Ok(host_addr) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: [host_addr, host_addr + len) is one page-aligned mapping owned by `mem`, and `vec`
        // has one byte per page of it, as mincore(2) requires.
        let rc = unsafe { libc::mincore(host_addr.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            resident += vec.iter().filter(|b| *b & 1 != 0).count() as u64 * page as u64;
        }
    }
    resident
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

/// Last address + 1 of RAM below the MMIO gap.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= layout::MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn shared_memory_is_one_memfd_that_another_mapping_sees() {
        use std::os::unix::fs::FileExt;
        assert!(matches!(
            create_shared_guest_memory(1),
            Err(MemoryError::InvalidSize(1))
        ));
        let mem = create_shared_guest_memory(16).unwrap();
        assert_eq!(low_ram_end(&mem), 16 << 20);
        let mut expected_offset = 0;
        let mut fds = Vec::new();
        for region in mem.iter() {
            let file_offset = region.file_offset().expect("a file-backed region");
            assert_eq!(file_offset.start(), expected_offset);
            expected_offset += region.len();
            fds.push(std::os::fd::AsRawFd::as_raw_fd(file_offset.file()));
        }
        fds.dedup();
        assert_eq!(fds.len(), 1, "one memfd for every region");
        let region = mem.iter().next().unwrap();
        let file = region.file_offset().unwrap().file();
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
        // A write through the guest's mapping is in the file (what the backend maps), and back.
        mem.write_obj(0x1234_5678u32, GuestAddress(0x10_0000))
            .unwrap();
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, 0x10_0000).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
        file.write_all_at(&7u32.to_le_bytes(), 0x20_0000).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 7);
    }

    #[test]
    fn rejects_sizes_out_of_range() {
        assert!(matches!(
            create_guest_memory(1),
            Err(MemoryError::InvalidSize(1))
        ));
        assert!(matches!(
            create_guest_memory(MAX_MEMORY_MIB + 1),
            Err(MemoryError::InvalidSize(_))
        ));
    }

    #[test]
    fn resident_bytes_counts_touched_pages() {
        let mem = create_guest_memory(16).unwrap();
        assert_eq!(low_ram_end(&mem), 16 << 20);
        let before = resident_bytes(&mem);
        for i in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(0x10_0000 + i * 4096))
                .unwrap();
        }
        assert_eq!(resident_bytes(&mem) - before, 10 * 4096);
    }
}
