//! `/proc/self/mountinfo`: the mount points below a directory (a sandbox's
//! staging mounts, matched by whole path components, so that pod `p1`'s
//! teardown never touches pod `p10`'s), and where cgroup v2 is mounted.

use std::path::{Path, PathBuf};

/// One line of mountinfo: the mount point (unescaped) and the file system type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: String,
    /// `ext4`, `cgroup2`, `overlay`, ...
    pub fs_type: String,
}

/// Parses mountinfo text; lines it does not understand are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mount_point = line.split(' ').nth(4)?;
            // The optional fields end at a lone "-"; the type follows it.
            let (_, after) = line.split_once(" - ")?;
            let fs_type = after.split(' ').next()?;
            Some(MountEntry {
                mount_point: unescape(mount_point),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// The current process's mounts (none if mountinfo cannot be read).
pub fn current() -> Vec<MountEntry> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Whether `mount_point` is `dir` itself or inside it, by whole components.
pub fn is_at_or_below(mount_point: &str, dir: &Path) -> bool {
    Path::new(mount_point).starts_with(dir)
}

/// The mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_below(entries: &[MountEntry], dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = entries
        .iter()
        .map(|e| e.mount_point.clone())
        .filter(|mp| is_at_or_below(mp, dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host), if it is.
pub fn cgroup2_mount(entries: &[MountEntry]) -> Option<PathBuf> {
    entries
        .iter()
        .find(|e| e.fs_type == "cgroup2")
        .map(|e| PathBuf::from(&e.mount_point))
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash.
pub fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:35 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
50 22 0:40 / /run/pulse/ns/p1/rootfs/c1 rw - overlay overlay rw
51 22 0:41 / /run/pulse/ns/p10/rootfs/c1 rw - overlay overlay rw
52 22 0:42 / /run/pulse/ns/p1 rw - tmpfs tmpfs rw
53 22 0:43 / /run/pulse/ns/p1/rootfs/with\\040space rw - overlay overlay rw
";

    #[test]
    fn a_pods_mounts_are_matched_by_whole_components() {
        let entries = parse(SAMPLE);
        let p1 = mounts_below(&entries, Path::new("/run/pulse/ns/p1"));
        assert_eq!(
            p1,
            [
                "/run/pulse/ns/p1/rootfs/with space",
                "/run/pulse/ns/p1/rootfs/c1",
                "/run/pulse/ns/p1",
            ],
            "p10's staging mount is not p1's"
        );
        let p10 = mounts_below(&entries, Path::new("/run/pulse/ns/p10"));
        assert_eq!(p10, ["/run/pulse/ns/p10/rootfs/c1"]);
        assert!(mounts_below(&entries, Path::new("/run/pulse/ns/p")).is_empty());
    }

    #[test]
    fn the_cgroup2_mount_is_found_by_type() {
        assert_eq!(
            cgroup2_mount(&parse(SAMPLE)),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount(&parse(&SAMPLE.replace("cgroup2", "tmpfs"))),
            None
        );
    }
}
