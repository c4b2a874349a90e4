//! A container's rootfs as an overlay in the guest: the image's layers, read-only (the host
//! shares them through virtio-fs), under a writable layer on the container's own disk. The
//! container's writes stay on that disk; the layers are never written.

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::storage::StorageError;

/// Characters overlayfs's option parser gives a meaning to in a layer path (`:` separates
/// lower layers, `,` options, `\` escapes): refused rather than escaped.
const RESERVED: [char; 3] = [':', ',', '\\'];

/// What an overlay storage resolved to: absolute guest paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayPlan {
    /// The read-only layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer.
    pub upper: PathBuf,
    /// overlayfs's work directory (same filesystem as `upper`).
    pub work: PathBuf,
}

fn invalid(msg: String) -> StorageError {
    StorageError::Invalid(msg)
}

fn check_chars(what: &str, path: &str) -> Result<(), StorageError> {
    if path.is_empty() {
        return Err(invalid(format!("overlay {what} is empty")));
    }
    if let Some(c) = path
        .chars()
        .find(|c| RESERVED.contains(c) || c.is_control())
    {
        return Err(invalid(format!(
            "overlay {what} {path:?} contains {c:?}, which overlayfs options cannot carry"
        )));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(format!("overlay {what} {path:?} contains ..")));
    }
    Ok(())
}

/// `path` as an absolute guest path: absolute as it is, relative under `bundle`.
fn in_bundle(bundle: &Path, what: &str, path: &str) -> Result<PathBuf, StorageError> {
    check_chars(what, path)?;
    Ok(bundle.join(path))
}

impl OverlayPlan {
    /// Checks the storage's fields: at least one layer, each an absolute path of an existing
    /// directory; upper and work given.
    pub fn new(
        lowers: &[String],
        upper: &str,
        work: &str,
        bundle: &Path,
    ) -> Result<Self, StorageError> {
        if lowers.is_empty() {
            return Err(invalid("an overlay storage needs lower_dirs".into()));
        }
        // overlayfs's own limit on lower layers.
        if lowers.len() > 500 {
            return Err(invalid(format!(
                "an overlay of {} layers is more than overlayfs takes (500)",
                lowers.len()
            )));
        }
        let mut checked = Vec::with_capacity(lowers.len());
        for lower in lowers {
            check_chars("lower dir", lower)?;
            let path = PathBuf::from(lower);
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "overlay lower dir {lower:?} is not absolute"
                )));
            }
            if !path.is_dir() {
                return Err(invalid(format!(
                    "overlay lower dir {lower:?} is not a directory in the guest"
                )));
            }
            checked.push(path);
        }
        Ok(Self {
            lowers: checked,
            upper: in_bundle(bundle, "upper dir", upper)?,
            work: in_bundle(bundle, "work dir", work)?,
        })
    }

    /// The deepest directory every layer is below (`/` at worst): the overlay is mounted from
    /// there, so each layer is a short relative name and hundreds fit in one page of options.
    pub fn layers_parent(&self) -> PathBuf {
        let mut parent = self.lowers[0]
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        while !self.lowers.iter().all(|l| l.starts_with(&parent)) {
            if !parent.pop() {
                return PathBuf::from("/");
            }
        }
        parent
    }

    /// overlayfs's options, the layers relative to `parent`.
    pub fn options(&self, parent: &Path, extra: &str) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|l| {
                let name = l
                    .strip_prefix(parent)
                    .ok()
                    .filter(|rel| !rel.as_os_str().is_empty())
                    .map_or_else(|| l.display().to_string(), |r| r.display().to_string());
                // The trailing slash makes the kernel's lookup of a layer cross into what is
                // mounted there, mounting it first if it is an automount point (as a virtio-fs
                // submount is): overlayfs refuses an automount point itself.
                format!("{}/", name.trim_end_matches('/'))
            })
            .collect();
        // index=off: virtio-fs layers have no file handles to index by. volatile: the
        // writable disk is thrown away with the container, so its syncs buy nothing.
        let mut options = format!(
            "lowerdir={},upperdir={},workdir={},index=off,volatile",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        );
        if !extra.is_empty() {
            options.push(',');
            options.push_str(extra);
        }
        options
    }
}

/// Makes the upper and work directories (the upper one with the top layer's root mode and
/// owner, which the container's `/` then shows) and mounts the overlay on `target`.
pub fn mount_overlay(
    plan: &OverlayPlan,
    target: &Path,
    flags: MsFlags,
    extra: &str,
) -> Result<(), StorageError> {
    let top = std::fs::metadata(&plan.lowers[0])
        .map_err(|e| StorageError::MountPoint(plan.lowers[0].clone(), e))?;
    for dir in [&plan.upper, &plan.work] {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::MountPoint(dir.clone(), e))?;
    }
    std::fs::set_permissions(
        &plan.upper,
        std::fs::Permissions::from_mode(top.mode() & 0o7777),
    )
    .and_then(|()| chown(&plan.upper, Some(top.uid()), Some(top.gid())))
    .map_err(|e| StorageError::MountPoint(plan.upper.clone(), e))?;
    let parent = plan.layers_parent();
    let options = plan.options(&parent, extra);
    let target = target.to_path_buf();
    let why = |err| StorageError::Mount {
        source_desc: format!(
            "overlay of {} layers ({})",
            plan.lowers.len(),
            kernel_says("overlayfs").unwrap_or_else(|| format!("options {options}"))
        ),
        target: target.clone(),
        err,
    };
    // The mount runs on a thread of its own whose working directory is not shared with the
    // agent's other threads (unshare(CLONE_FS)), so it can chdir to the layers' parent.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(why)?;
                nix::unistd::chdir(&parent).map_err(why)?;
                mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    flags,
                    Some(options.as_str()),
                )
                .map_err(why)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(StorageError::Invalid(
                    "the overlay mount's thread panicked".into(),
                ))
            })
    })
}

/// The kernel's last log line that starts with `prefix` (overlayfs explains an EINVAL only
/// there), read from /dev/kmsg without waiting.
fn kernel_says(prefix: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut last = None;
    let mut record = vec![0u8; 8192];
    // One record per read; EAGAIN at the end. Bounded, whatever the log holds.
    for _ in 0..4096 {
        let n = match kmsg.read(&mut record) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&record[..n]);
        // "prio,seq,time,flags;message\n"
        if let Some((_, message)) = text.split_once(';') {
            let message = message.lines().next().unwrap_or("").trim();
            if message.starts_with(prefix) {
                last = Some(message.to_string());
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(lowers: &[&str]) -> OverlayPlan {
        OverlayPlan {
            lowers: lowers.iter().map(PathBuf::from).collect(),
            upper: "/b/rw/upper".into(),
            work: "/b/rw/work".into(),
        }
    }

    #[test]
    fn layers_are_named_from_their_common_parent() {
        let p = plan(&[
            "/run/pulse/shared/c/layers/0",
            "/run/pulse/shared/c/layers/1",
        ]);
        let parent = p.layers_parent();
        assert_eq!(parent, Path::new("/run/pulse/shared/c/layers"));
        assert_eq!(
            p.options(&parent, ""),
            "lowerdir=0/:1/,upperdir=/b/rw/upper,workdir=/b/rw/work,index=off,volatile"
        );
        let apart = plan(&["/x/a", "/y/b"]);
        assert_eq!(apart.layers_parent(), Path::new("/"));
        assert!(apart
            .options(Path::new("/"), "nosuid")
            .starts_with("lowerdir=x/a/:y/b/,"));
        let one = plan(&["/run/l"]);
        assert_eq!(one.layers_parent(), Path::new("/run"));
        assert!(one.options(Path::new("/run"), "").ends_with(",volatile"));
    }

    #[test]
    fn five_hundred_layers_fit_in_a_page_of_options() {
        let lowers: Vec<String> = (0..500)
            .map(|i| format!("/run/pulse/shared/{}/layers/{i}", "c".repeat(76)))
            .collect();
        let p = OverlayPlan {
            lowers: lowers.iter().map(PathBuf::from).collect(),
            upper: format!("/run/pulse/containers/{}/rw/upper", "c".repeat(76)).into(),
            work: format!("/run/pulse/containers/{}/rw/work", "c".repeat(76)).into(),
        };
        assert!(p.options(&p.layers_parent(), "").len() < 4096);
    }

    #[test]
    fn bad_layers_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        let layer = dir.path().display().to_string();
        let ok =
            OverlayPlan::new(std::slice::from_ref(&layer), "rw/upper", "rw/work", bundle).unwrap();
        assert_eq!(ok.upper, bundle.join("rw/upper"));
        for (lowers, upper, want) in [
            (vec![], "u", "needs lower_dirs"),
            (vec!["rel/dir".to_string()], "u", "not absolute"),
            (
                vec!["/nonexistent/layer".to_string()],
                "u",
                "not a directory",
            ),
            (vec!["/a:b".to_string()], "u", "contains ':'"),
            (vec![layer.clone()], "../u", "contains .."),
            (vec![layer.clone()], "u,x=y", "contains ','"),
        ] {
            let err = OverlayPlan::new(&lowers, upper, "w", bundle)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{lowers:?} {upper}: {err}");
        }
        let many = vec![layer; 501];
        let err = OverlayPlan::new(&many, "u", "w", bundle).unwrap_err();
        assert!(err.to_string().contains("501 layers"), "{err}");
    }
}
