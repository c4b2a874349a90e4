//! Creating a container's missing working directory inside its rootfs.
//!
//! runc creates `process.cwd` (mode 0755, as the container's root, before
//! the user switch) when it does not exist; libcontainer only chdirs and
//! fails. With a user namespace the new directories belong to the host ids
//! that the container's root maps to. The agent creates it in the rootfs before the container is
//! created. Every lookup resolves inside the rootfs (`RESOLVE_IN_ROOT`): a
//! symlink, absolute or with `..`, is followed as the container would see
//! it and can never reach the agent's own filesystem.
//!
//! A working directory at or below a mount destination (a tmpfs, a bind) lies
//! in a filesystem that exists only once libcontainer has mounted it: there
//! the agent adds a `createContainer` hook instead, which libcontainer runs in
//! the container's mount namespace after the mounts and before `pivot_root`:
//! the agent binary again ([`MAKE_CWD_SUBCOMMAND`]), as the container's root,
//! creating the directory in the mounted tree (runc does it at the same point).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{HookBuilder, LinuxIdMapping, LinuxNamespaceType, Spec};

/// The hidden subcommand that makes the agent binary the working directory hook:
/// `__make-cwd ROOTFS CWD`.
pub const MAKE_CWD_SUBCOMMAND: &str = "__make-cwd";

/// The mode runc gives a working directory it creates.
const CWD_MODE: libc::mode_t = 0o755;

/// Host ids for the directories the agent creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The host ids of the container's root when it has a user namespace that
/// maps it; None (the agent's own root) otherwise.
pub fn container_root_owner(spec: &Spec) -> Option<Owner> {
    let linux = spec.linux().as_ref()?;
    let user_namespace = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == LinuxNamespaceType::User);
    if !user_namespace {
        return None;
    }
    Some(Owner {
        uid: host_id_of_root(linux.uid_mappings())?,
        gid: host_id_of_root(linux.gid_mappings())?,
    })
}

fn host_id_of_root(mappings: &Option<Vec<LinuxIdMapping>>) -> Option<u32> {
    mappings
        .iter()
        .flatten()
        .find(|m| m.container_id() == 0 && m.size() > 0)
        .map(|m| m.host_id())
}

/// Creates `cwd` and its missing parents inside `rootfs` (owned by `owner`
/// when given); an existing directory is left as it is.
pub fn create_missing_cwd(rootfs: &Path, cwd: &Path, owner: Option<Owner>) -> io::Result<()> {
    let root = open_dir(rootfs)?;
    let mut prefix = PathBuf::new();
    for component in cwd.components() {
        let name = match component {
            Component::Normal(name) => name,
            // The root is where the walk starts; `.` and `..` resolve (in
            // the rootfs) to directories that exist already.
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir => {
                prefix.push("..");
                continue;
            }
        };
        let parent = open_in_root(&root, &prefix)?;
        prefix.push(name);
        if make_dir_at(&parent, Path::new(name))? {
            if let Some(owner) = owner {
                chown_at(&parent, Path::new(name), owner)?;
            }
        }
    }
    // The whole path must now be a directory (not a file or a dangling link).
    open_in_root(&root, &prefix).map(drop)
}

/// Whether the process's working directory is at or below one of the spec's mount
/// destinations (other than `/`), so that it can only be made once the mounts exist.
pub fn is_below_a_mount(spec: &Spec) -> bool {
    let Some(process) = spec.process() else {
        return false;
    };
    let cwd = lexical(process.cwd());
    spec.mounts().iter().flatten().any(|m| {
        let destination = lexical(m.destination());
        destination.components().count() > 1 && cwd.starts_with(&destination)
    })
}

/// A path with `.` dropped and `..` applied, as a prefix test needs it (symlinks are left to
/// the in-root walk).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Adds the `createContainer` hook that creates the working directory once the container's
/// mounts exist (see the module's comment). The hook runs as the container's root, so the
/// directories belong to it, user namespace or not.
pub fn add_make_cwd_hook(spec: &mut Spec, rootfs: &Path) -> io::Result<()> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let text = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))
    };
    let hook = HookBuilder::default()
        // The init process's own binary: the agent's (libcontainer clones it from the helper).
        .path("/proc/self/exe")
        .args(vec![
            "pulse-agent".to_string(),
            MAKE_CWD_SUBCOMMAND.to_string(),
            text(rootfs)?,
            text(process.cwd())?,
        ])
        .timeout(30i64)
        .build()
        .map_err(io::Error::other)?;
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    let mut create = hooks.create_container().clone().unwrap_or_default();
    create.push(hook);
    hooks.set_create_container(Some(create));
    spec.set_hooks(Some(hooks));
    Ok(())
}

/// The hook's main: `__make-cwd ROOTFS CWD`. Exit status 0 when the directory exists after it.
pub fn make_cwd_hook_main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let [rootfs, cwd] = args.as_slice() else {
        eprintln!("pulse-agent {MAKE_CWD_SUBCOMMAND}: expected ROOTFS CWD");
        return 2;
    };
    match create_missing_cwd(Path::new(rootfs), Path::new(cwd), None) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "creating the working directory {}: {e}",
                Path::new(cwd).display()
            );
            1
        }
    }
}

/// Checks that `cwd` is a directory of the tree below `root` (a container's `/proc/PID/root`:
/// its rootfs with its mounts), resolved as the container resolves it.
pub fn check_dir_in(root: &Path, cwd: &Path) -> io::Result<()> {
    open_in_root(&open_dir(root)?, cwd).map(drop)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    // SAFETY: open takes a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd as libc::c_long)
}

/// openat2's `struct open_how` (libc's cannot be built outside libc).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens directory `path` of the tree below `root`, resolved as if `root`
/// were `/`.
fn open_in_root(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    let relative = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c_relative = c_path(relative)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads the NUL-terminated path and `how` (with its
    // size), both alive for the call, and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_relative.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    owned(fd)
}

/// mkdir `name` in `parent`: true if made, false if it exists already.
fn make_dir_at(parent: &OwnedFd, name: &Path) -> io::Result<bool> {
    let c_name = c_path(name)?;
    // SAFETY: mkdirat takes a directory fd we own and a NUL-terminated name.
    let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c_name.as_ptr(), CWD_MODE) };
    if rc == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        e => Err(e),
    }
}

fn chown_at(parent: &OwnedFd, name: &Path, owner: Owner) -> io::Result<()> {
    let c_name = c_path(name)?;
    // SAFETY: fchownat takes a directory fd we own and a NUL-terminated name;
    // AT_SYMLINK_NOFOLLOW: the entry itself (just made), never a link's target.
    let rc = unsafe {
        libc::fchownat(
            parent.as_raw_fd(),
            c_name.as_ptr(),
            owner.uid,
            owner.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel's fds are ints, widened to the syscall's long.
    #[allow(clippy::cast_possible_truncation)]
    let fd = fd as RawFd;
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn creates_missing_directories_with_mode_0755() {
        let root = tempfile::tempdir().unwrap();
        create_missing_cwd(root.path(), Path::new("/a/b/../c"), None).unwrap();
        for dir in ["a", "a/b", "a/c"] {
            let meta = std::fs::metadata(root.path().join(dir)).unwrap();
            assert!(meta.is_dir(), "{dir}");
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                0o755 & !umask(),
                "{dir}"
            );
        }
        // Existing directories are fine.
        create_missing_cwd(root.path(), Path::new("/a/b"), None).unwrap();
        create_missing_cwd(root.path(), Path::new("/"), None).unwrap();
    }

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("abs")).unwrap();
        symlink("../../../..", root.path().join("up")).unwrap();
        // The link's target is looked up in the rootfs, where it is missing.
        assert!(create_missing_cwd(root.path(), Path::new("/abs/made"), None).is_err());
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        create_missing_cwd(root.path(), Path::new("/abs/made"), None).unwrap();
        create_missing_cwd(root.path(), Path::new("/up/x/../../y"), None).unwrap();
        assert!(!outside.path().join("made").exists());
        assert!(inside.join("made").is_dir());
        assert!(root.path().join("x").is_dir() && root.path().join("y").is_dir());
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), "").unwrap();
        assert!(create_missing_cwd(root.path(), Path::new("/file"), None).is_err());
        assert!(create_missing_cwd(root.path(), Path::new("/file/sub"), None).is_err());
    }

    #[test]
    fn new_directories_get_the_owner_existing_ones_keep_theirs() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("old")).unwrap();
        let owner = Owner {
            uid: 100_000,
            gid: 100_001,
        };
        create_missing_cwd(root.path(), Path::new("/old/new"), Some(owner)).unwrap();
        let ids = |p: &str| {
            let meta = std::fs::metadata(root.path().join(p)).unwrap();
            (meta.uid(), meta.gid())
        };
        assert_eq!(ids("old"), (0, 0));
        assert_eq!(ids("old/new"), (100_000, 100_001));
    }

    #[test]
    fn the_owner_is_the_host_id_of_the_containers_root() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {
                "namespaces": [{"type": "mount"}],
                "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [
                    {"containerID": 1, "hostID": 5, "size": 1},
                    {"containerID": 0, "hostID": 200000, "size": 65536}
                ]
            }
        }))
        .unwrap();
        // Without a user namespace the mappings do not apply.
        assert_eq!(container_root_owner(&spec), None);
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap();
        namespaces.push(serde_json::from_value(serde_json::json!({"type": "user"})).unwrap());
        linux.set_namespaces(Some(namespaces));
        assert_eq!(
            container_root_owner(&spec),
            Some(Owner {
                uid: 100_000,
                gid: 200_000
            })
        );
    }

    /// The process's umask, read without changing it (other tests run in parallel).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }
}
