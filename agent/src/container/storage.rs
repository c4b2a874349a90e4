//! Filesystems the agent mounts for a container before creating it: block
//! devices found by their serial, guest paths, tmpfs, overlays of shared layers.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use pulse_protocols::containers::{Storage, StorageSource};

use super::overlay::{mount_overlay, OverlayPlan};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Invalid(String),
    #[error("no block device with serial {0:?} (looked in {1}/block/*/serial)")]
    NoSuchSerial(String, String),
    #[error("mounting {source_desc} on {target}: {err}")]
    Mount {
        source_desc: String,
        target: PathBuf,
        err: nix::Error,
    },
    #[error("creating mount point {0}: {1}")]
    MountPoint(PathBuf, #[source] std::io::Error),
    #[error(
        "block device {0} still has no medium (size 0) after {1:?}: the host's disk did not reach \
         the guest"
    )]
    NoMedium(PathBuf, Duration),
}

/// How long a block device may take to show the disk the host attached.
pub const MEDIUM_WAIT: Duration = Duration::from_secs(10);

/// Waits until block device `dev` (`/dev/NAME`) has a size (`SYS/block/NAME/size` not 0). The
/// host attaches a rootfs disk by resizing an empty slot and the guest's driver learns the size
/// from a configuration interrupt, later: a mount before that reads past the end ("unable to
/// read superblock", EIO). A device without a size file is taken as it is.
pub fn wait_for_medium(sys: &Path, dev: &Path, limit: Duration) -> Result<(), StorageError> {
    let Some(name) = dev.file_name() else {
        return Ok(());
    };
    let size_file = sys.join("block").join(name).join("size");
    let deadline = Instant::now() + limit;
    loop {
        match fs::read_to_string(&size_file) {
            Ok(size) if size.trim() == "0" => {}
            _ => return Ok(()),
        }
        if Instant::now() >= deadline {
            return Err(StorageError::NoMedium(dev.to_path_buf(), limit));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A mount made for a container, undone when the container is removed.
#[derive(Debug)]
pub struct MountedStorage {
    pub target: PathBuf,
}

impl MountedStorage {
    pub fn unmount(&self) {
        if let Err(e) = umount2(&self.target, MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", self.target.display());
        }
    }
}

/// Finds `/dev/<name>` for the block device whose `serial` attribute is `serial`.
pub fn find_block_by_serial(sys: &Path, serial: &str) -> Result<PathBuf, StorageError> {
    let not_found = || StorageError::NoSuchSerial(serial.to_string(), sys.display().to_string());
    let entries = fs::read_dir(sys.join("block")).map_err(|_| not_found())?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|name| {
            fs::read_to_string(sys.join("block").join(name).join("serial"))
                .is_ok_and(|s| s.trim() == serial)
        })
        .map(|name| PathBuf::from("/dev").join(name))
        .ok_or_else(not_found)
}

/// Splits mount options into flags and the filesystem's data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "bind" | "rbind" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Mounts one storage; relative targets are taken under `bundle`.
pub fn mount_storage(
    storage: &Storage,
    bundle: &Path,
    sys: &Path,
) -> Result<MountedStorage, StorageError> {
    if storage.target.is_empty() {
        return Err(StorageError::Invalid("target is empty".into()));
    }
    let target = bundle.join(&storage.target);
    if !target.starts_with(bundle) && Path::new(&storage.target).is_relative() {
        return Err(StorageError::Invalid(format!(
            "relative target {:?} leaves the bundle",
            storage.target
        )));
    }
    if storage.target.split('/').any(|c| c == "..") {
        return Err(StorageError::Invalid(format!(
            "target {:?} contains ..",
            storage.target
        )));
    }
    let (flags, data) = parse_options(&storage.options);
    let source_kind = storage
        .source
        .enum_value()
        .map_err(|v| StorageError::Invalid(format!("unknown source {v}")))?;
    let (source, fstype, flags): (PathBuf, Option<&str>, MsFlags) = match source_kind {
        StorageSource::STORAGE_SOURCE_BLOCK_SERIAL => {
            if storage.fs_type.is_empty() {
                return Err(StorageError::Invalid(
                    "a block device storage needs fs_type".into(),
                ));
            }
            let dev = find_block_by_serial(sys, &storage.locator)?;
            wait_for_medium(sys, &dev, MEDIUM_WAIT)?;
            (dev, Some(storage.fs_type.as_str()), flags)
        }
        StorageSource::STORAGE_SOURCE_GUEST_PATH => {
            let path = PathBuf::from(&storage.locator);
            if !path.is_absolute() || !path.exists() {
                return Err(StorageError::Invalid(format!(
                    "guest path {:?} does not exist",
                    storage.locator
                )));
            }
            (path, None, flags | MsFlags::MS_BIND | MsFlags::MS_REC)
        }
        StorageSource::STORAGE_SOURCE_TMPFS => (PathBuf::from("tmpfs"), Some("tmpfs"), flags),
        StorageSource::STORAGE_SOURCE_OVERLAY => {
            let plan = OverlayPlan::new(
                &storage.lower_dirs,
                &storage.upper_dir,
                &storage.work_dir,
                bundle,
            )?;
            fs::create_dir_all(&target).map_err(|e| StorageError::MountPoint(target.clone(), e))?;
            mount_overlay(&plan, &target, flags, &data)?;
            return Ok(MountedStorage { target });
        }
        StorageSource::STORAGE_SOURCE_UNSPECIFIED => {
            return Err(StorageError::Invalid("source is unspecified".into()))
        }
    };
    fs::create_dir_all(&target).map_err(|e| StorageError::MountPoint(target.clone(), e))?;
    let data = (!data.is_empty()).then_some(data.as_str());
    let mount_err = |err| StorageError::Mount {
        source_desc: source.display().to_string(),
        target: target.clone(),
        err,
    };
    mount(Some(source.as_path()), &target, fstype, flags, data).map_err(mount_err)?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, &target, None::<&str>, remount, None::<&str>) {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
            return Err(mount_err(e));
        }
    }
    Ok(MountedStorage { target })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lookup_in_fixture_tree() {
        let sys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/msi-guest/sys");
        assert_eq!(
            find_block_by_serial(&sys, "pulse-rootfs-0").unwrap(),
            Path::new("/dev/vda")
        );
        let err = find_block_by_serial(&sys, "nope").unwrap_err();
        assert!(err
            .to_string()
            .contains("no block device with serial \"nope\""));
    }

    #[test]
    fn a_device_is_mounted_once_it_has_its_medium() {
        let sys = tempfile::tempdir().unwrap();
        let block = sys.path().join("block/vdb");
        fs::create_dir_all(&block).unwrap();
        fs::write(block.join("size"), "0\n").unwrap();
        let dev = Path::new("/dev/vdb");
        let err = wait_for_medium(sys.path(), dev, Duration::from_millis(30)).unwrap_err();
        assert!(
            err.to_string().contains("/dev/vdb still has no medium"),
            "{err}"
        );
        let size = block.join("size");
        let attach = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            fs::write(size, "153600\n").unwrap();
        });
        wait_for_medium(sys.path(), dev, Duration::from_secs(5)).unwrap();
        attach.join().unwrap();
        // No size file (not a sysfs block device): nothing to wait for.
        wait_for_medium(sys.path(), Path::new("/dev/loop7"), Duration::ZERO).unwrap();
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "size=64m", "mode=0755"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "size=64m,mode=0755");
    }
}
