//! A pod's virtio-fs share on the host: the tree one virtiofsd per pod exports to the guest
//! (as Kata's `/run/kata-containers/shared/sandboxes/<id>/`).
//!
//! ```text
//! <sandbox>/mounts/              a bind of itself, its own shared peer group
//! <sandbox>/mounts/<c>/<n>       container <c>'s bind mount n: the host source, bound here
//!                                (a read-only bind when the spec says ro)
//! <sandbox>/mounts/<c>/rootfs     container <c>'s image: a read-only view of its snapshot (an
//!                                overlay without upper dir, or a bind; `rootfs.mode = "shared"`)
//! <sandbox>/shared/              a read-only bind of mounts/, its slave: what virtiofsd exports
//! <sandbox>/staging/             a private bind of itself: where a read-only bind is made
//!                                read-only before it is bound into mounts/
//! ```
//!
//! virtiofsd runs in its own mount namespace (`--sandbox namespace`), made when it starts; it
//! still sees the binds made later below `mounts/` because `shared/` is a slave of `mounts/`
//! (and so is virtiofsd's copy of it), and it sees them go when they are unmounted. The top of
//! the export is read-only, so the guest cannot create files in the shim's state directory; a
//! container's own read-write binds stay writable. A read-only bind is read-only before it
//! shows in `mounts/`: remounting it there would leave its propagated copies, virtiofsd's
//! among them, writable. Everything here is below the sandbox
//! directory: [`crate::persist::remove_dir`] unmounts it at teardown, also after a `kill -9` of
//! the shim.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::hypervisor::SandboxPaths;
use crate::ids::{self, IdError, IdKind};
use crate::mountinfo;
use crate::rootfs::RootfsMount;
use crate::spec::{MountPlan, SourceKind};

/// The tag of the pod's virtio-fs device (the agent mounts it at
/// [`crate::spec::GUEST_SHARED_DIR`]).
pub const TAG: &str = "pulse-shared";
/// Where a container's image view is in its part of the share.
const IMAGE_DIR: &str = "rootfs";
/// The size of the pod's shared-memory tmpfs in the guest (containerd's CRI default for a pod's
/// /dev/shm).
pub const SANDBOX_SHM_BYTES: u64 = 64 << 20;

/// What setting up or using the share can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A mount call failed.
    #[error("{what} {target}: {err}")]
    Mount {
        /// What was being done.
        what: String,
        /// The mount point.
        target: PathBuf,
        /// The kernel's answer.
        err: nix::Error,
    },
    /// A directory or file could not be made.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The container id cannot name a directory.
    #[error(transparent)]
    Id(#[from] IdError),
}

/// What `path` is (following symbolic links, as a bind mount does).
pub fn source_kind(path: &Path) -> io::Result<SourceKind> {
    let t = std::fs::metadata(path)?.file_type();
    Ok(if t.is_dir() {
        SourceKind::Dir
    } else if t.is_file() {
        SourceKind::File
    } else if t.is_socket() {
        SourceKind::Other("a socket")
    } else if t.is_char_device() {
        SourceKind::Other("a character device")
    } else if t.is_block_device() {
        SourceKind::Other("a block device")
    } else if t.is_fifo() {
        SourceKind::Other("a FIFO")
    } else {
        SourceKind::Other("neither a directory nor a regular file")
    })
}

/// The pod's share.
#[derive(Clone, Debug)]
pub struct SharedFs {
    mounts: PathBuf,
    shared: PathBuf,
    staging: PathBuf,
}

fn mount_err(what: &str, target: &Path) -> impl FnOnce(nix::Error) -> ShareError {
    let what = what.to_string();
    let target = target.to_path_buf();
    move |err| ShareError::Mount { what, target, err }
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> ShareError {
    move |source| ShareError::Io { context, source }
}

/// Unmounts everything at or below `dir`, deepest first; returns what is still mounted there.
fn unmount_below(dir: &Path) -> Vec<String> {
    for m in mountinfo::mounts_below(&mountinfo::current(), dir) {
        let _ = umount2(m.as_str(), MntFlags::MNT_DETACH);
    }
    mountinfo::mounts_below(&mountinfo::current(), dir)
}

impl SharedFs {
    /// The share of the sandbox at `paths` (nothing is made).
    pub fn new(paths: &SandboxPaths) -> Self {
        Self {
            mounts: paths.dir.join("mounts"),
            shared: paths.dir.join("shared"),
            staging: paths.dir.join("staging"),
        }
    }

    /// The directory virtiofsd exports.
    pub fn export_dir(&self) -> &Path {
        &self.shared
    }

    /// Where container `container`'s binds are made.
    pub fn container_dir(&self, container: &str) -> Result<PathBuf, ShareError> {
        ids::validate(IdKind::Container, container)?;
        Ok(self.mounts.join(container))
    }

    /// Makes the two mounts of the module's picture; before virtiofsd starts. Undone by
    /// [`crate::persist::remove_dir`] of the sandbox directory.
    pub fn prepare(&self) -> Result<(), ShareError> {
        for dir in [&self.mounts, &self.shared, &self.staging] {
            crate::private_fs::create_dir(dir)
                .map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let none = None::<&str>;
        let m = &self.mounts;
        mount(Some(m), m, none, MsFlags::MS_BIND, none)
            .map_err(mount_err("bind-mounting onto itself", m))?;
        // Out of the peer group of the file system it is on (a bind of a shared mount would
        // join that group, and every later bind would propagate there), into its own.
        mount(none, m, none, MsFlags::MS_PRIVATE, none).map_err(mount_err("making private", m))?;
        mount(none, m, none, MsFlags::MS_SHARED, none).map_err(mount_err("making shared", m))?;
        let s = &self.shared;
        mount(Some(m), s, none, MsFlags::MS_BIND, none)
            .map_err(mount_err(&format!("bind-mounting {} on", m.display()), s))?;
        mount(none, s, none, MsFlags::MS_SLAVE, none).map_err(mount_err("making slave", s))?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, s, none, ro, none).map_err(mount_err("remounting read-only", s))?;
        let st = &self.staging;
        mount(Some(st), st, none, MsFlags::MS_BIND, none)
            .map_err(mount_err("bind-mounting onto itself", st))?;
        mount(none, st, none, MsFlags::MS_PRIVATE, none)
            .map_err(mount_err("making private", st))?;
        Ok(())
    }

    /// Binds the host sources of `plans` for container `container`; on failure, what was bound
    /// is undone. Returns how many were bound.
    pub fn bind(&self, container: &str, plans: &[MountPlan]) -> Result<usize, ShareError> {
        let dir = self.container_dir(container)?;
        let mut bound = 0;
        for plan in plans {
            let MountPlan::Share {
                index,
                source,
                kind,
                recursive,
                readonly,
            } = plan
            else {
                continue;
            };
            if bound == 0 {
                crate::private_fs::create_dir(&dir)
                    .map_err(io_err(format!("creating {}", dir.display())))?;
            }
            let target = dir.join(index.to_string());
            let result = if *readonly {
                let stage = self.staging.join(format!("{container}-{index}"));
                bind_read_only(source, &stage, &target, *kind, *recursive)
            } else {
                bind_one(source, &target, *kind, *recursive, false)
            };
            if let Err(e) = result {
                self.unbind(container);
                return Err(e);
            }
            bound += 1;
        }
        Ok(bound)
    }

    /// Mounts `view` (a read-only view of container `container`'s snapshot, from
    /// [`crate::rootfs::image_view`]) into the share and returns its path in the guest.
    pub fn mount_image(&self, container: &str, view: &RootfsMount) -> Result<String, ShareError> {
        let target = self.container_dir(container)?.join(IMAGE_DIR);
        crate::private_fs::create_dir(&target)
            .map_err(io_err(format!("creating {}", target.display())))?;
        let result = if view.fs_type == "bind" {
            let stage = self.staging.join(format!("{container}-{IMAGE_DIR}"));
            bind_read_only(
                Path::new(&view.source),
                &stage,
                &target,
                SourceKind::Dir,
                false,
            )
        } else {
            // The options may name more layers than one page holds: containerd-shim's mount
            // shortens them as containerd does (from the layers' common parent).
            containerd_shim::mount::mount_rootfs(
                Some(view.fs_type.as_str()),
                Some(view.source.as_str()),
                &view.options,
                &target,
            )
            .map_err(|e| ShareError::Io {
                context: format!(
                    "mounting the image's {} view on {}",
                    view.fs_type,
                    target.display()
                ),
                source: io::Error::other(e.to_string()),
            })
        };
        if let Err(e) = result {
            self.unmount_image(container);
            return Err(e);
        }
        Ok(format!(
            "{}/{container}/{IMAGE_DIR}",
            crate::spec::GUEST_SHARED_DIR
        ))
    }

    /// Unmounts and removes container `container`'s image view (its binds stay).
    pub fn unmount_image(&self, container: &str) {
        self.unmount_and_remove(container, Some(IMAGE_DIR));
    }

    /// Unmounts and removes container `container`'s binds (and its image view).
    pub fn unbind(&self, container: &str) {
        self.unmount_and_remove(container, None);
    }

    /// Unmounts everything at or below `sub` (or all) of container `container`'s part of the
    /// share, then removes that directory: only when nothing is mounted there any more (never
    /// deleting through a bind into a host path).
    fn unmount_and_remove(&self, container: &str, sub: Option<&str>) {
        let Ok(dir) = self.container_dir(container) else {
            return;
        };
        let within = |d: PathBuf| sub.map_or_else(|| d.clone(), |s| d.join(s));
        let dir = within(dir);
        if !dir.exists() {
            return;
        }
        let left = unmount_below(&dir);
        // The propagated copies go with their masters; unmount any that stayed.
        let _ = unmount_below(&within(self.shared.join(container)));
        if !left.is_empty() {
            tracing::error!(
                container,
                "still mounted after unmounting: {left:?}; leaving {}",
                dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

/// Binds `source` read-only at `target` by way of `stage` (a private mount point, made for it
/// and removed again): the bind is read-only before it shows at `target`.
fn bind_read_only(
    source: &Path,
    stage: &Path,
    target: &Path,
    kind: SourceKind,
    recursive: bool,
) -> Result<(), ShareError> {
    bind_one(source, stage, kind, recursive, true)?;
    // A bind copies the mount's flags (read-only included), and with MS_REC the mounts below.
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    let result = make_mount_point(target, kind).and_then(|()| {
        mount(Some(stage), target, None::<&str>, flags, None::<&str>).map_err(mount_err(
            &format!("bind-mounting {} on", source.display()),
            target,
        ))
    });
    let _ = umount2(stage, MntFlags::MNT_DETACH);
    let _ = match kind {
        SourceKind::Dir => std::fs::remove_dir(stage),
        _ => std::fs::remove_file(stage),
    };
    result
}

/// Creates the directory or empty file a bind of `kind` is mounted on.
fn make_mount_point(target: &Path, kind: SourceKind) -> Result<(), ShareError> {
    match kind {
        SourceKind::Dir => crate::private_fs::create_dir(target).map(|_| ()),
        _ => crate::private_fs::create_file(target).map(|_| ()),
    }
    .map_err(io_err(format!("creating {}", target.display())))
}

/// Binds `source` (a directory or regular file) at `target`, made for it.
fn bind_one(
    source: &Path,
    target: &Path,
    kind: SourceKind,
    recursive: bool,
    readonly: bool,
) -> Result<(), ShareError> {
    make_mount_point(target, kind)?;
    let none = None::<&str>;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, none, flags, none).map_err(mount_err(
        &format!("bind-mounting {} on", source.display()),
        target,
    ))?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if readonly {
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(err) = mount(none, target, none, ro, none) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(mount_err("remounting read-only", target)(err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn common_list(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    }

    /// A temporary directory with a host directory `host` in it and the prepared share of
    /// sandbox `ns/p` below its `state`; none (the test skipped) when not root.
    fn prepared_share(host: &str) -> Option<(tempfile::TempDir, PathBuf, SandboxPaths, SharedFs)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join(host);
        std::fs::create_dir_all(&host).unwrap();
        let paths = SandboxPaths::new(&dir.path().join("state"), "ns", "p").unwrap();
        crate::private_fs::create_dir(&paths.dir).unwrap();
        let share = SharedFs::new(&paths);
        share.prepare().unwrap();
        Some((dir, host, paths, share))
    }

    #[test]
    fn source_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(source_kind(dir.path()).unwrap(), SourceKind::Dir);
        assert_eq!(source_kind(&file).unwrap(), SourceKind::File);
        assert_eq!(source_kind(&sock).unwrap(), SourceKind::Other("a socket"));
        assert_eq!(
            source_kind(Path::new("/dev/null")).unwrap(),
            SourceKind::Other("a character device")
        );
        assert!(source_kind(&dir.path().join("none")).is_err());
    }

    #[test]
    fn a_bad_container_id_binds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SandboxPaths::new(dir.path(), "ns", "p").unwrap();
        let share = SharedFs::new(&paths);
        assert!(matches!(
            share.bind("../../etc", &[]),
            Err(ShareError::Id(_))
        ));
    }

    /// The binds appear in the export (read-only ones read-only), the export's top is
    /// read-only, and unbinding and the sandbox's removal leave the host sources intact.
    #[test]
    fn binds_show_in_the_export_and_go_without_touching_the_sources() {
        let Some((dir, host, paths, share)) = prepared_share("host") else {
            return;
        };
        std::fs::create_dir_all(host.join("data")).unwrap();
        std::fs::write(host.join("data/keep"), b"keep").unwrap();
        std::fs::write(host.join("hosts"), b"127.0.0.1 localhost\n").unwrap();
        let plans = [
            MountPlan::Share {
                index: 1,
                source: host.join("data"),
                kind: SourceKind::Dir,
                recursive: true,
                readonly: false,
            },
            MountPlan::Share {
                index: 2,
                source: host.join("hosts"),
                kind: SourceKind::File,
                recursive: false,
                readonly: true,
            },
            MountPlan::SandboxShm { index: 3 },
        ];
        assert_eq!(share.bind("c1", &plans).unwrap(), 2);
        let export = share.export_dir();
        assert_eq!(
            std::fs::read(export.join("c1/1/keep")).unwrap(),
            b"keep",
            "the directory bind is in the export"
        );
        std::fs::write(export.join("c1/1/new"), b"from the guest").unwrap();
        assert_eq!(
            std::fs::read(host.join("data/new")).unwrap(),
            b"from the guest"
        );
        assert_eq!(
            std::fs::read(export.join("c1/2")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        let ro = std::fs::write(export.join("c1/2"), b"x").unwrap_err();
        assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");
        assert!(
            common_list(&paths.dir.join("staging")).is_empty(),
            "the staging binds are gone"
        );
        let top = std::fs::write(export.join("stray"), b"x").unwrap_err();
        assert_eq!(top.raw_os_error(), Some(libc::EROFS), "{top}");
        assert_eq!(
            std::fs::metadata(share.container_dir("c1").unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );

        share.unbind("c1");
        assert!(!share.container_dir("c1").unwrap().exists());
        assert!(host.join("data/keep").exists() && host.join("hosts").exists());
        assert!(
            mountinfo::mounts_below(&mountinfo::current(), &paths.dir.join("shared/c1")).is_empty()
        );

        share.bind("c2", &plans[..1]).unwrap();
        crate::persist::remove_dir(&paths.dir);
        assert!(!paths.dir.exists());
        assert!(
            host.join("data/keep").exists(),
            "removing the sandbox went through a bind"
        );
        assert!(mountinfo::mounts_below(&mountinfo::current(), dir.path()).is_empty());
    }

    #[test]
    fn a_failed_bind_undoes_the_earlier_ones() {
        let Some((dir, host, paths, share)) = prepared_share("data") else {
            return;
        };
        let plans = [
            MountPlan::Share {
                index: 0,
                source: host.clone(),
                kind: SourceKind::Dir,
                recursive: false,
                readonly: false,
            },
            MountPlan::Share {
                index: 1,
                source: dir.path().join("vanished"),
                kind: SourceKind::Dir,
                recursive: false,
                readonly: false,
            },
        ];
        let err = share.bind("c1", &plans).unwrap_err().to_string();
        assert!(err.contains("vanished"), "{err}");
        assert!(!share.container_dir("c1").unwrap().exists());
        assert!(host.exists());
        crate::persist::remove_dir(&paths.dir);
        assert!(mountinfo::mounts_below(&mountinfo::current(), dir.path()).is_empty());
    }
}
