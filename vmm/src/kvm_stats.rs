//! KVM's binary statistics (KVM_GET_STATS_FD): per-vCPU counters kept by the kernel, such as
//! `exits`, `io_exits`, `mmio_exits`, `halt_exits`, `irq_exits`. They count what userspace never
//! sees: exits that KVM handles itself (ioeventfd doorbells, LAPIC EOIs, HLT).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
const HEADER_SIZE: usize = 24;
const DESC_FIXED_SIZE: usize = 16;
/// The value type in bits 0-3 of a descriptor's flags: a cumulative counter.
const TYPE_CUMULATIVE: u32 = 0;
const TYPE_MASK: u32 = 0xf;

/// One vCPU's (or VM's) statistics file.
pub struct StatsFd {
    file: File,
    layout: Vec<(String, u64, u32)>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

impl StatsFd {
    /// Opens the statistics of the KVM object behind `fd` (a vCPU or VM fd).
    pub fn open(fd: &impl AsRawFd) -> std::io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)?;
        let name_size = u32_at(&header, 4) as usize;
        let num_desc = u32_at(&header, 8) as usize;
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        let desc_size = DESC_FIXED_SIZE + name_size;
        let mut descs = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut descs, desc_offset)?;
        let mut layout = Vec::new();
        for d in descs.chunks_exact(desc_size) {
            let flags = u32_at(d, 0);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = u64::from(u32_at(d, 8));
            let name_bytes = &d[DESC_FIXED_SIZE..];
            let end = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
            // Only single-value cumulative counters; histograms and gauges are skipped.
            if flags & TYPE_MASK == TYPE_CUMULATIVE && size == 1 {
                layout.push((name, data_offset + offset, flags));
            }
        }
        Ok(Self { file, layout })
    }

    /// Current value of every cumulative counter.
    pub fn read(&self) -> std::io::Result<BTreeMap<String, u64>> {
        let mut values = BTreeMap::new();
        for (name, offset, _) in &self.layout {
            let mut b = [0u8; 8];
            self.file.read_exact_at(&mut b, *offset)?;
            values.insert(name.clone(), u64::from_le_bytes(b));
        }
        Ok(values)
    }
}

/// Sums counters of several vCPUs.
pub fn sum(all: &[BTreeMap<String, u64>]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for stats in all {
        for (k, v) in stats {
            *total.entry(k.clone()).or_insert(0) += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vcpu_counters() {
        let kvm = crate::kvm::open_kvm().unwrap();
        let vm = crate::kvm::create_vm(&kvm, 1).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let stats = StatsFd::open(&vcpu).expect("KVM_GET_STATS_FD");
        let values = stats.read().unwrap();
        assert!(values.contains_key("exits"), "{values:?}");
        assert_eq!(
            sum(&[values.clone(), values.clone()])["exits"],
            2 * values["exits"]
        );
    }
}
