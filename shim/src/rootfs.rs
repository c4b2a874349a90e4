//! A container's rootfs as a disk the guest can mount: containerd's mounts
//! (the snapshotter's overlay) are mounted on a staging directory, copied into
//! an ext4 image with `mkfs.ext4 -d`, and unmounted again. The image is written
//! in place into the block slot's file, so the VMM's open file sees it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::mount::{umount2, MntFlags};

use crate::config::RootfsConfig;

/// One of containerd's rootfs mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootfsMount {
    /// `overlay`, `bind`, ...
    pub fs_type: String,
    /// The source.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Why a rootfs disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A host mount failed.
    #[error("mounting the container's rootfs ({fs_type} on {target}): {message}")]
    Mount {
        /// Type.
        fs_type: String,
        /// Where.
        target: PathBuf,
        /// Why.
        message: String,
    },
    /// mkfs failed.
    #[error("making the rootfs disk image with {mkfs}: {message}")]
    Mkfs {
        /// The program.
        mkfs: String,
        /// Its error output.
        message: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What.
        context: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootfsError {
    let context = context.into();
    move |source| RootfsError::Io { context, source }
}

/// Bytes and inodes a directory tree uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Allocated bytes (st_blocks x 512), directories included.
    pub bytes: u64,
    /// Files, directories, links.
    pub inodes: u64,
}

/// Walks `root` without following symlinks or crossing into other mounts.
pub fn tree_usage(root: &Path) -> std::io::Result<TreeUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut usage = TreeUsage::default();
    let top = std::fs::symlink_metadata(root)?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            usage.inodes += 1;
            usage.bytes += meta.blocks() * 512;
            if meta.is_dir() && meta.dev() == top.dev() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// The image size for a tree: its use plus ext4's metadata (inode tables,
/// journal) plus the configured free space, in whole MiB.
pub fn image_size(usage: TreeUsage, config: &RootfsConfig) -> u64 {
    const MIB: u64 = 1 << 20;
    // 256-byte inodes, some slack per inode for directory blocks, 10% for the rest.
    let meta = usage.inodes * 256 + usage.inodes * 64 + usage.bytes / 10;
    let total = usage.bytes + meta + config.free_mib * MIB + 8 * MIB;
    let mib = total.div_ceil(MIB).max(config.min_mib);
    mib * MIB
}

/// Mounts `mounts` on `target` (the first is the root; usually there is just
/// the one overlay). With no mounts, `target` is used as it is.
pub fn mount_all(mounts: &[RootfsMount], target: &Path) -> Result<(), RootfsError> {
    crate::private_fs::create_dir(target).map_err(io(format!("creating {}", target.display())))?;
    for m in mounts {
        let fs_type = (!m.fs_type.is_empty()).then_some(m.fs_type.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, target).map_err(|e| {
            RootfsError::Mount {
                fs_type: m.fs_type.clone(),
                target: target.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Unmounts everything on `target` (lazily: a leftover user is no reason to
/// keep the mount) and removes the directory.
pub fn unmount_all(target: &Path) {
    // Stacked mounts come off one by one.
    for _ in 0..16 {
        if umount2(target, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir(target);
}

/// Whether something is mounted exactly at `path` (from /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let want = path.to_string_lossy();
    crate::mountinfo::current()
        .iter()
        .any(|e| e.mount_point == want)
}

/// Writes an ext4 image of `tree` into `image` (truncated first; the inode
/// stays the same, so a VMM holding it open sees the new content). Returns its size.
pub async fn make_image(
    tree: &Path,
    image: &Path,
    config: &RootfsConfig,
) -> Result<u64, RootfsError> {
    let tree_owned = tree.to_path_buf();
    let usage = tokio::task::spawn_blocking(move || tree_usage(&tree_owned))
        .await
        .map_err(|e| RootfsError::Io {
            context: "measuring the rootfs".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(format!("measuring {}", tree.display())))?;
    let size = image_size(usage, config);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(image)
        .map_err(io(format!("opening {}", image.display())))?;
    file.set_len(0)
        .and_then(|_| file.set_len(size))
        .map_err(io(format!("sizing {}", image.display())))?;
    drop(file);
    let inodes = (usage.inodes * 2 + 4096).to_string();
    let output = tokio::process::Command::new(&config.mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "pulse-rootfs",
            "-N",
            &inodes,
            "-d",
        ])
        .arg(tree)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| RootfsError::Mkfs {
            mkfs: config.mkfs.display().to_string(),
            message: format!("{e} (e2fsprogs is needed)"),
        })?;
    if !output.status.success() {
        return Err(RootfsError::Mkfs {
            mkfs: config.mkfs.display().to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(size)
}

/// The whole step: mount, make the image, unmount. `staging` is removed after.
pub async fn build_disk(
    mounts: &[RootfsMount],
    tree: &Path,
    staging: &Path,
    image: &Path,
    config: &RootfsConfig,
) -> Result<u64, RootfsError> {
    if mounts.is_empty() {
        // containerd mounted nothing: the spec's root.path (`tree`) is the tree.
        return make_image(tree, image, config).await;
    }
    let owned: Vec<RootfsMount> = mounts.to_vec();
    let target = staging.to_path_buf();
    let mounted = tokio::task::spawn_blocking(move || mount_all(&owned, &target))
        .await
        .map_err(|e| RootfsError::Io {
            context: "mounting the rootfs".into(),
            source: std::io::Error::other(e),
        })?;
    let result = match mounted {
        Ok(()) => make_image(staging, image, config).await,
        Err(e) => Err(e),
    };
    unmount_all(staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_room_and_a_floor() {
        let config = RootfsConfig::default();
        let small = image_size(TreeUsage::default(), &config);
        assert_eq!(small, 72 << 20, "8 MiB of ext4 overhead + 64 MiB free");
        let floor = image_size(
            TreeUsage::default(),
            &RootfsConfig {
                free_mib: 0,
                min_mib: 32,
                ..config.clone()
            },
        );
        assert_eq!(floor, 32 << 20);
        let big = image_size(
            TreeUsage {
                bytes: 1 << 30,
                inodes: 10_000,
            },
            &config,
        );
        assert!(big > (1 << 30) + (64 << 20));
        assert_eq!(big % (1 << 20), 0);
    }

    #[test]
    fn usage_counts_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/sh"), vec![1u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("sh", dir.path().join("bin/ls")).unwrap();
        let u = tree_usage(dir.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.bytes >= 10_000);
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(crate::mountinfo::unescape("/a\\040b"), "/a b");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/nonexistent-dir")));
    }

    #[tokio::test]
    async fn image_is_ext4_and_written_in_place() {
        if which_mkfs().is_none() {
            eprintln!("mkfs.ext4 missing; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hello"), "hi\n").unwrap();
        let image = dir.path().join("slot.img");
        std::fs::write(&image, b"").unwrap();
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&image).unwrap().ino();
        let size = make_image(&tree, &image, &RootfsConfig::default())
            .await
            .unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!((meta.len(), meta.ino()), (size, inode));
        // The ext4 magic at 1024 + 0x38.
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(&bytes[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        let bad = RootfsConfig {
            mkfs: "/nonexistent/mkfs".into(),
            ..Default::default()
        };
        let err = make_image(&tree, &image, &bad).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/mkfs"), "{err}");
    }

    fn which_mkfs() -> Option<PathBuf> {
        ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }
}
