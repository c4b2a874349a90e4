//! The pod-wide filesystems the shim asks for at `CreateSandbox`: the pod's virtio-fs share
//! (the host paths of its containers' bind mounts, which the host's virtiofsd serves) at
//! [`SHARED_DIR`], and the pod's shared memory, a tmpfs at [`SANDBOX_SHM_DIR`]. Containers
//! reach both through bind mounts in their specs, which the shim rewrote to these guest paths
//! (`/run/pulse/shared/<container>/<n>`, `/run/pulse/sandbox-shm`).

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Where the pod's virtio-fs share is mounted.
pub const SHARED_DIR: &str = "/run/pulse/shared";
/// Where the pod's shared-memory tmpfs is mounted.
pub const SANDBOX_SHM_DIR: &str = "/run/pulse/sandbox-shm";
/// The longest virtio-fs tag (virtio 1.2, 5.11.4: `u8 tag[36]`).
pub const MAX_TAG_LEN: usize = 36;

/// Why a pod-wide filesystem could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The tag is empty, too long or not printable.
    #[error("virtio-fs tag {0:?}: must be 1 to {MAX_TAG_LEN} printable ASCII characters")]
    Tag(String),
    /// The mount point cannot be made.
    #[error("creating {0}: {1}")]
    Dir(PathBuf, #[source] std::io::Error),
    /// The mount failed.
    #[error("mounting {what} on {target}: {err}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// The kernel's answer.
        err: nix::Error,
    },
}

/// Checks a virtio-fs tag as the shim sent it.
pub fn validate_tag(tag: &str) -> Result<(), SharedError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !tag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SharedError::Tag(tag.to_string()));
    }
    Ok(())
}

/// Whether `target` is a mount point in `mountinfo` (the text of `/proc/self/mountinfo`).
pub fn is_mounted(mountinfo: &str, target: &Path) -> bool {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(mp) == target)
}

fn mounted(target: &Path) -> bool {
    is_mounted(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        target,
    )
}

/// Mounts the virtio-fs device tagged `tag` at `target` (nosuid, nodev: the host shares no
/// device nodes and no set-id programs); a second call finds it mounted and does nothing.
pub fn mount_shared_fs(tag: &str, target: &Path) -> Result<(), SharedError> {
    validate_tag(tag)?;
    if mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| SharedError::Dir(target.to_path_buf(), e))?;
    mount(
        Some(tag),
        target,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|err| SharedError::Mount {
        what: format!("virtio-fs {tag:?}"),
        target: target.to_path_buf(),
        err,
    })
}

/// Mounts the pod's shared-memory tmpfs of `bytes` bytes at `target` (mode 1777, nosuid, nodev,
/// noexec, as containerd makes a pod's /dev/shm); a second call does nothing.
pub fn mount_sandbox_shm(bytes: u64, target: &Path) -> Result<(), SharedError> {
    if mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| SharedError::Dir(target.to_path_buf(), e))?;
    let data = shm_options(bytes);
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|err| SharedError::Mount {
        what: format!("tmpfs ({data})"),
        target: target.to_path_buf(),
        err,
    })
}

/// The tmpfs options of the pod's shared memory (the size rounded up to KiB).
pub fn shm_options(bytes: u64) -> String {
    format!("mode=1777,size={}k", bytes.div_ceil(1024).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_and_printable() {
        validate_tag("pulse-shared").unwrap();
        validate_tag(&"t".repeat(MAX_TAG_LEN)).unwrap();
        for bad in ["", "a b", "a\0b", "ta\ng"] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        let long = "t".repeat(MAX_TAG_LEN + 1);
        let err = validate_tag(&long).unwrap_err().to_string();
        assert!(err.contains("1 to 36 printable"), "{err}");
    }

    #[test]
    fn mount_points_are_found_by_whole_path() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:35 / /run/pulse/shared rw,nosuid,nodev - virtiofs pulse-shared rw\n";
        assert!(is_mounted(info, Path::new("/run/pulse/shared")));
        assert!(!is_mounted(info, Path::new("/run/pulse")));
        assert!(!is_mounted(info, Path::new("/run/pulse/shared/c1")));
    }

    #[test]
    fn shm_size_is_in_kib() {
        assert_eq!(shm_options(64 << 20), "mode=1777,size=65536k");
        assert_eq!(shm_options(1), "mode=1777,size=1k");
        assert_eq!(shm_options(0), "mode=1777,size=1k");
    }

    #[test]
    fn a_bad_tag_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shared");
        assert!(matches!(
            mount_shared_fs("bad tag", &target),
            Err(SharedError::Tag(_))
        ));
        assert!(!target.exists());
    }
}
