//! What kubelet makes on the host for a pod's volumes before it sends their mounts in
//! `ContainerConfig.mounts`, made here the way kubelet makes it:
//!
//! - the pod's directory `<root>/pods/<uid>/` with `volumes/kubernetes.io~<plugin>/<name>/`;
//! - ConfigMaps and Secrets written like kubelet's AtomicWriter: the payload in a timestamped
//!   directory `..2026_12_05_00_10_00.<n>`, a `..data` symlink to it, and each key a symlink
//!   `<key> -> ..data/<key>`; an update writes a new timestamped directory and swaps `..data`
//!   with one rename(2) of a new symlink, so a reader sees either all old or all new files;
//!   a Secret's directory is a tmpfs of its own;
//! - the termination-message file `containers/<name>/<8 hex digits>`, empty, mode 0666;
//! - the pod's managed `/etc/hosts` (`etc-hosts`), for a pod on the pod network.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of the symlink to the current payload directory.
pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// A pod's directory below kubelet's root.
pub struct PodDir {
    pub dir: PathBuf,
}

impl PodDir {
    /// `<root>/pods/<uid>`, created.
    pub fn create(root: &Path, uid: &str) -> io::Result<PodDir> {
        let dir = root.join("pods").join(uid);
        std::fs::create_dir_all(&dir)
            .map_err(|e| annotate(e, format!("creating {}", dir.display())))?;
        Ok(PodDir { dir })
    }

    /// The directory of volume `name` of `plugin` (`configmap`, `secret`, `empty-dir`),
    /// created (0777 for an emptyDir, as kubelet makes it, so any container user can write).
    pub fn volume(&self, plugin: &str, name: &str) -> io::Result<PathBuf> {
        let dir = self
            .dir
            .join("volumes")
            .join(format!("kubernetes.io~{plugin}"))
            .join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| annotate(e, format!("creating {}", dir.display())))?;
        if plugin == "empty-dir" {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        }
        Ok(dir)
    }

    /// A Secret's volume: its directory with a tmpfs mounted on it (kubelet keeps Secrets off
    /// the node's disks). [`unmount`] takes it down.
    pub fn secret_volume(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.volume("secret", name)?;
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=1m,mode=0755"),
        )
        .map_err(|e| annotate(e.into(), format!("mounting a tmpfs on {}", dir.display())))?;
        Ok(dir)
    }

    /// The empty file kubelet mounts at the container's `terminationMessagePath`.
    pub fn termination_log(&self, container: &str) -> io::Result<PathBuf> {
        let dir = self.dir.join("containers").join(container);
        std::fs::create_dir_all(&dir)
            .map_err(|e| annotate(e, format!("creating {}", dir.display())))?;
        let path = dir.join(format!("{:08x}", nanos_low32()));
        std::fs::File::create(&path)
            .map_err(|e| annotate(e, format!("creating {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(path)
    }

    /// kubelet's hosts file for a pod on the pod network: localhost, the IPv6 names, and the
    /// pod's address with its hostname.
    pub fn etc_hosts(&self, pod_ip: &str, hostname: &str) -> io::Result<(PathBuf, String)> {
        let text = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             {pod_ip}\t{hostname}\n"
        );
        let path = self.dir.join("etc-hosts");
        std::fs::write(&path, &text)
            .map_err(|e| annotate(e, format!("writing {}", path.display())))?;
        Ok((path, text))
    }
}

/// Unmounts a volume's tmpfs.
pub fn unmount(dir: &Path) -> io::Result<()> {
    nix::mount::umount(dir).map_err(|e| annotate(e.into(), format!("unmounting {}", dir.display())))
}

fn annotate(e: io::Error, context: String) -> io::Error {
    io::Error::new(e.kind(), format!("{context}: {e}"))
}

/// The low 32 bits of the time in nanoseconds: a name that differs from one call to the next.
fn nanos_low32() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    u32::try_from(nanos & u128::from(u32::MAX)).unwrap()
}

/// `..YYYY_MM_DD_HH_MM_SS.<n>` in UTC, the name AtomicWriter gives a payload directory (its
/// suffix is a temporary directory's random part: here the nanoseconds and a counter).
pub fn timestamped_name(now: SystemTime, n: u32) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_date(i64::try_from(secs / 86_400).unwrap());
    let s = secs % 86_400;
    format!(
        "..{y:04}_{mo:02}_{d:02}_{:02}_{:02}_{:02}.{}{n}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_nanos()
    )
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
fn civil_date(days: i64) -> (i64, i64, i64) {
    // Counted in 400-year eras starting on 0000-03-01, so that the leap day ends a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `payload` (key, content) into `dir` as kubelet's AtomicWriter does, replacing what
/// an earlier write put there: a new timestamped directory, `..data` swapped to it by one
/// rename, a `<key> -> ..data/<key>` symlink for each new key, the symlinks of keys that went
/// removed, the old directory removed. Returns the new directory's name.
pub fn atomic_write(dir: &Path, payload: &[(&str, &str)]) -> io::Result<String> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for (key, _) in payload {
        assert!(
            !key.is_empty() && !key.contains('/') && !key.starts_with(".."),
            "a payload key of this helper is one plain file name: {key:?}"
        );
    }
    let old = std::fs::read_link(dir.join(DATA)).ok();
    let name = timestamped_name(
        SystemTime::now(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    );
    let ts_dir = dir.join(&name);
    std::fs::create_dir(&ts_dir)
        .map_err(|e| annotate(e, format!("creating {}", ts_dir.display())))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (key, content) in payload {
        let file = ts_dir.join(key);
        std::fs::write(&file, content)
            .map_err(|e| annotate(e, format!("writing {}", file.display())))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&name, &tmp).map_err(|e| annotate(e, format!("linking {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(DATA))
        .map_err(|e| annotate(e, format!("renaming {} to {DATA}", tmp.display())))?;
    for (key, _) in payload {
        let visible = dir.join(key);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new(DATA).join(key), &visible)
                .map_err(|e| annotate(e, format!("linking {}", visible.display())))?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().to_string();
        if !file_name.starts_with("..") && !payload.iter().any(|(k, _)| *k == file_name) {
            std::fs::remove_file(entry.path())
                .map_err(|e| annotate(e, format!("removing {}", entry.path().display())))?;
        }
    }
    if let Some(old) = old {
        let old = dir.join(old);
        std::fs::remove_dir_all(&old)
            .map_err(|e| annotate(e, format!("removing {}", old.display())))?;
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamped_names_are_utc_dates() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(timestamped_name(at(0, 0), 0), "..1970_01_01_00_00_00.00");
        // 2000-02-29 (a leap day of a year divisible by 400) 12:34:56.
        assert_eq!(
            timestamped_name(at(951_827_696, 5), 7),
            "..2000_02_29_12_34_56.57"
        );
        // 2026-12-05 00:10:00 UTC.
        assert_eq!(
            timestamped_name(at(1_796_429_400, 123), 1),
            "..2026_12_05_00_10_00.1231"
        );
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(civil_date(365 + 365 + 59), (1972, 2, 29));
    }

    #[test]
    fn atomic_writes_swap_data_and_keep_the_visible_names_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let first = atomic_write(d, &[("a", "1"), ("b", "2")]).unwrap();
        assert!(first.starts_with("..") && d.join(&first).is_dir());
        assert_eq!(std::fs::read_link(d.join(DATA)).unwrap(), Path::new(&first));
        assert_eq!(
            std::fs::read_link(d.join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(std::fs::read_to_string(d.join("b")).unwrap(), "2");

        let second = atomic_write(d, &[("a", "10"), ("c", "3")]).unwrap();
        assert_ne!(first, second);
        assert!(!d.join(&first).exists(), "the old payload directory goes");
        assert!(!d.join(DATA_TMP).exists());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "10");
        assert_eq!(std::fs::read_to_string(d.join("c")).unwrap(), "3");
        assert!(
            std::fs::symlink_metadata(d.join("b")).is_err(),
            "a key that went is no longer visible"
        );
        let mut names = crate::common::list_dir(d);
        names.sort();
        assert_eq!(names, [second.as_str(), DATA, "a", "c"]);
    }
}
