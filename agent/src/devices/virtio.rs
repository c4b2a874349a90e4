//! The virtio devices under `/sys/bus/virtio/devices` and their transports.

use std::fs;
use std::path::{Path, PathBuf};

use pulse_protocols::devices::TransportKind;

use super::ReportError;

/// What sysfs says about one virtio device.
#[derive(Debug, Clone)]
pub struct SysVirtioDevice {
    /// `virtioN`.
    pub name: String,
    pub index: u32,
    pub device_id: u32,
    pub vendor: String,
    pub driver: String,
    /// The resolved device directory.
    pub dir: PathBuf,
    /// The parent (transport) device directory and its name.
    pub parent_dir: PathBuf,
    pub parent_name: String,
    pub transport: TransportKind,
    /// Block devices (`vda`) or interfaces (`eth0`) the driver created.
    pub block_devices: Vec<String>,
    pub net_interfaces: Vec<String>,
}

/// The name of a virtio device ID (virtio 1.2, section 5).
pub fn device_type_name(id: u32) -> &'static str {
    match id {
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "rng",
        5 => "balloon",
        8 => "scsi",
        9 => "9p",
        16 => "gpu",
        18 => "input",
        19 => "vsock",
        20 => "crypto",
        23 => "iommu",
        24 => "memory",
        26 => "fs",
        27 => "pmem",
        29 => "mem",
        _ => "unknown",
    }
}

/// Lists `<sys>/bus/virtio/devices/virtio*`, sorted by index. An absent
/// directory means a guest without virtio: an empty list.
pub fn list_devices(sys: &Path) -> Result<Vec<SysVirtioDevice>, ReportError> {
    let bus = sys.join("bus/virtio/devices");
    let entries = match fs::read_dir(&bus) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReportError::io(&bus, e)),
    };
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io(&bus, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("virtio")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        devices.push(read_device(&entry.path(), name, index)?);
    }
    devices.sort_by_key(|d| d.index);
    Ok(devices)
}

fn read_device(link: &Path, name: String, index: u32) -> Result<SysVirtioDevice, ReportError> {
    let dir = fs::canonicalize(link).map_err(|e| ReportError::io(link, e))?;
    let device_text = read_trimmed(&dir.join("device")).unwrap_or_default();
    let device_id = parse_hex(&device_text).ok_or_else(|| {
        ReportError::Parse(format!(
            "{}: device ID {device_text:?} is not a number",
            dir.join("device").display()
        ))
    })?;
    let vendor = read_trimmed(&dir.join("vendor")).unwrap_or_default();
    let driver = fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let parent_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let parent_name = parent_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let transport = classify_transport(&parent_dir, &parent_name);
    Ok(SysVirtioDevice {
        block_devices: child_names(&dir.join("block")),
        net_interfaces: child_names(&dir.join("net")),
        name,
        index,
        device_id,
        vendor,
        driver,
        dir,
        parent_dir,
        parent_name,
        transport,
    })
}

fn classify_transport(parent_dir: &Path, parent_name: &str) -> TransportKind {
    if is_pci_address(parent_name) {
        TransportKind::TRANSPORT_KIND_PCI
    } else if parent_name.contains("virtio-mmio")
        || parent_name.contains("virtio_mmio")
        || parent_dir
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|p| p == "platform")
    {
        TransportKind::TRANSPORT_KIND_MMIO
    } else {
        TransportKind::TRANSPORT_KIND_UNKNOWN
    }
}

/// `0000:00:02.0`.
pub fn is_pci_address(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The MMIO base of a virtio-mmio platform device: from a device-tree style
/// name (`d0000000.virtio_mmio`), else from the `/proc/iomem` entry that
/// carries the device's name (command-line devices, `virtio-mmio.0`).
pub fn mmio_base(parent_name: &str, iomem: Option<&str>) -> Option<(u64, &'static str)> {
    if let Some((addr, _)) = parent_name.split_once('.') {
        if let Ok(base) = u64::from_str_radix(addr, 16) {
            return Some((base, "sysfs device name"));
        }
    }
    iomem?.lines().find_map(|line| {
        let (range, owner) = line.trim().split_once(" : ")?;
        if owner.trim() != parent_name {
            return None;
        }
        let start = range.split('-').next()?;
        u64::from_str_radix(start, 16)
            .ok()
            .map(|b| (b, "/proc/iomem"))
    })
}

/// Interrupts that a PCI function uses for MSI or MSI-X
/// (`<pci device>/msi_irqs/<irq>`, each file holding `msi` or `msix`).
pub fn pci_msi_irqs(parent_dir: &Path) -> Vec<(u32, String)> {
    let dir = parent_dir.join("msi_irqs");
    let mut irqs: Vec<(u32, String)> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let irq = e.file_name().to_str()?.parse::<u32>().ok()?;
            let mode = read_trimmed(&e.path()).unwrap_or_default();
            Some((irq, mode))
        })
        .collect();
    irqs.sort();
    irqs
}

pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn parse_hex(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

fn child_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:00:02.0"));
        assert!(is_pci_address("0001:af:1f.7"));
        assert!(!is_pci_address("virtio-mmio.0"));
        assert!(!is_pci_address("0000:00:02"));
    }

    #[test]
    fn mmio_base_from_name_or_iomem() {
        assert_eq!(
            mmio_base("d0000000.virtio_mmio", None),
            Some((0xd000_0000, "sysfs device name"))
        );
        let iomem = "c0000000-c0001fff : virtio-mmio.1\n  d0000000-d0001fff : virtio-mmio.0\n";
        assert_eq!(
            mmio_base("virtio-mmio.0", Some(iomem)),
            Some((0xd000_0000, "/proc/iomem"))
        );
        assert_eq!(mmio_base("virtio-mmio.7", Some(iomem)), None);
    }

    #[test]
    fn type_names() {
        assert_eq!(device_type_name(2), "block");
        assert_eq!(device_type_name(19), "vsock");
        assert_eq!(device_type_name(999), "unknown");
    }
}
