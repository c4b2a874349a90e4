//! A container's rootfs for the guest, two ways (`rootfs.mode`):
//!
//! - **shared**: [`image_view`] turns containerd's mounts into a read-only view of the
//!   snapshot (an overlay of its layers without an upper dir, or a read-only bind); the sandbox
//!   mounts that in the pod's virtio-fs share, and the guest mounts an overlay of it under a
//!   writable layer on a fresh, empty ext4 disk ([`make_writable_disk`]). Nothing of the
//!   image is read or copied on the host, and the host's overlayfs keeps the layers' own
//!   whiteouts and opaque directories (no extended attributes cross virtio-fs).
//! - **copy** (the fallback): containerd's mounts are mounted on a staging directory, copied
//!   into an ext4 image with `mkfs.ext4 -d`, and unmounted again ([`build_disk`]).
//!
//! Either image is written in place into the block slot's file, so the VMM's open file sees it.

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

/// A read-only view of the snapshot behind containerd's `mounts`, as one mount the share can
/// hold, when they are something a read-only view can be made of: one overlay (viewed as an
/// overlay without an upper dir: the snapshot's upper dir, normally still empty, on top of its
/// lower dirs; the host's overlayfs resolves the layers' whiteouts and opaque directories), or
/// one bind (the native snapshotter's directory, a one-layer view); no mounts at all: a bind
/// of `tree`, the spec's root.path. `None` for anything else (a block device of another
/// snapshotter, several mounts): that rootfs is copied. Mounting the view reads nothing of the
/// image and writes nothing anywhere.
pub fn image_view(mounts: &[RootfsMount], tree: &Path) -> Option<RootfsMount> {
    let bind = |source: &Path| RootfsMount {
        fs_type: "bind".into(),
        source: source.display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
    };
    // Relative or odd paths (overlayfs escapes, option separators) are not guessed at.
    let plain = |p: &str| p.starts_with('/') && !p.contains([',', ':', '\\']);
    match mounts {
        [] => Some(bind(tree)),
        [m] if m.fs_type == "overlay" => {
            let value = |key: &str| {
                m.options
                    .iter()
                    .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
            };
            let mut layers: Vec<&str> = value("upperdir").into_iter().collect();
            layers.extend(value("lowerdir")?.split(':'));
            if !layers.iter().all(|l| plain(l)) {
                return None;
            }
            if let [one] = layers[..] {
                // overlayfs wants two layers without an upper dir; one is a bind.
                return Some(bind(Path::new(one)));
            }
            let mut options = vec!["ro".to_string(), format!("lowerdir={}", layers.join(":"))];
            // What else containerd asked for (index=off, userxattr) holds for the view too.
            options.extend(
                m.options
                    .iter()
                    .filter(|o| {
                        !["upperdir=", "workdir=", "lowerdir="]
                            .iter()
                            .any(|k| o.starts_with(k))
                            && !matches!(o.as_str(), "rw" | "ro")
                    })
                    .cloned(),
            );
            Some(RootfsMount {
                fs_type: "overlay".into(),
                source: "overlay".into(),
                options,
            })
        }
        [m] if m.fs_type == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
            plain(&m.source).then(|| bind(Path::new(&m.source)))
        }
        _ => None,
    }
}

/// How many layers a view from [`image_view`] stacks.
pub fn view_layers(view: &RootfsMount) -> usize {
    view.options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map_or(1, |l| l.split(':').count())
}

/// How the guest mounts a writable layer: `noinit_itable` keeps the kernel from zeroing the
/// inode tables mkfs left uninitialised (tens of MiB written in the background for a layer
/// that is thrown away); the block groups stay flagged uninitialised, which ext4 handles.
pub const WRITABLE_MOUNT_OPTIONS: [&str; 1] = ["noinit_itable"];

/// Makes `image` a fresh, empty ext4 filesystem of `mib` MiB: a container's writable layer.
/// The file is sparse (the host stores what the guest writes) and rewritten in place, so a VMM
/// holding it open sees the new one. Returns its size.
pub async fn make_writable_disk(image: &Path, mib: u64, mkfs: &Path) -> Result<u64, RootfsError> {
    let size = mib << 20;
    resize_in_place(image, size)?;
    // -m 0: the whole layer is the container's (its root would use the reserve anyway). No
    // journal: the layer is thrown away with the container and never mounted again after a
    // crash, so a journal would only double the writes. Lazy init: the inode tables are not
    // zeroed here (mkfs writes about 2 MiB whatever the size), nor later in the guest
    // (WRITABLE_MOUNT_OPTIONS).
    let args = [
        "-L",
        "pulse-rw",
        "-m",
        "0",
        "-O",
        "^has_journal",
        "-E",
        "lazy_itable_init=1,nodiscard",
    ];
    run_mkfs(mkfs, &args, image).await?;
    Ok(size)
}

/// Empties `image` and gives it `size` bytes (sparse), keeping its inode: a VMM that holds
/// the file open sees what is made in it next.
fn resize_in_place(image: &Path, size: u64) -> Result<(), RootfsError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(image)
        .map_err(io(format!("opening {}", image.display())))?;
    file.set_len(0)
        .and_then(|_| file.set_len(size))
        .map_err(io(format!("sizing {}", image.display())))
}

/// Runs `mkfs -q -F -t ext4 ARGS... IMAGE`; its error output on failure.
async fn run_mkfs<S: AsRef<std::ffi::OsStr>>(
    mkfs: &Path,
    args: &[S],
    image: &Path,
) -> Result<(), RootfsError> {
    let failed = |message: String| RootfsError::Mkfs {
        mkfs: mkfs.display().to_string(),
        message,
    };
    let output = tokio::process::Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4"])
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| failed(format!("{e} (e2fsprogs is needed)")))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
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
    resize_in_place(image, size)?;
    let inodes = (usage.inodes * 2 + 4096).to_string();
    let args = ["-L", "pulse-rootfs", "-N", &inodes, "-d"].map(std::ffi::OsStr::new);
    let args: Vec<&std::ffi::OsStr> = args.into_iter().chain([tree.as_os_str()]).collect();
    run_mkfs(&config.mkfs, &args, image).await?;
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

    fn mount(fs_type: &str, source: &str, options: &[&str]) -> RootfsMount {
        RootfsMount {
            fs_type: fs_type.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_and_bind_snapshots_have_a_read_only_view_the_rest_is_copied() {
        let tree = Path::new("/bundle/rootfs");
        assert_eq!(
            image_view(&[], tree),
            Some(mount("bind", "/bundle/rootfs", &["rbind", "ro"]))
        );
        let active = mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/s/9/work",
                "upperdir=/s/9/fs",
                "lowerdir=/s/2/fs:/s/1/fs",
                "rw",
            ],
        );
        assert_eq!(
            image_view(&[active], tree),
            Some(mount(
                "overlay",
                "overlay",
                &["ro", "lowerdir=/s/9/fs:/s/2/fs:/s/1/fs", "index=off"]
            ))
        );
        let view = mount("overlay", "overlay", &["lowerdir=/s/2/fs:/s/1/fs"]);
        assert_eq!(
            image_view(&[view], tree).unwrap().options,
            ["ro", "lowerdir=/s/2/fs:/s/1/fs"]
        );
        let native = mount("bind", "/s/native/5", &["rbind", "rw"]);
        assert_eq!(
            image_view(&[native], tree),
            Some(mount("bind", "/s/native/5", &["rbind", "ro"]))
        );
        let single = mount("", "/s/1/fs", &["ro", "rbind"]);
        assert!(image_view(&[single], tree).is_some());
        // Another snapshotter's block device, several mounts, odd paths: copied.
        assert!(image_view(&[mount("ext4", "/dev/dm-3", &[])], tree).is_none());
        let two = [mount("bind", "/a", &[]), mount("bind", "/b", &[])];
        assert!(image_view(&two, tree).is_none());
        assert!(image_view(&[mount("overlay", "overlay", &["upperdir=/u"])], tree).is_none());
        assert!(image_view(&[mount("overlay", "overlay", &["lowerdir=rel/1:/a"])], tree).is_none());
        assert_eq!(
            image_view(&[mount("overlay", "overlay", &["lowerdir=/only"])], tree),
            Some(mount("bind", "/only", &["rbind", "ro"]))
        );
        assert!(image_view(&[mount("bind", "/a,b", &[])], tree).is_none());
    }

    #[tokio::test]
    async fn the_writable_disk_is_sparse_ext4_of_the_size_asked() {
        let Some(mkfs) = which_mkfs() else {
            eprintln!("mkfs.ext4 missing; skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("slot.img");
        std::fs::write(&image, vec![7u8; 4096]).unwrap();
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&image).unwrap().ino();
        let size = make_writable_disk(&image, 1024, &mkfs).await.unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!((size, meta.len(), meta.ino()), (1 << 30, 1 << 30, inode));
        assert!(
            meta.blocks() * 512 < 8 << 20,
            "a 1 GiB layer stores {} bytes",
            meta.blocks() * 512
        );
        let mut head = [0u8; 2048];
        use std::io::Read;
        std::fs::File::open(&image)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        let err = make_writable_disk(&image, 64, Path::new("/nonexistent/mkfs"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/mkfs"), "{err}");
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
