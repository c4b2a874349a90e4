//! Facts about the guest: kernel, memory, CPUs, cgroups.

use std::fs;
use std::path::Path;

use pulse_protocols::sandbox::GuestDetails;

/// Reads uname, /proc/meminfo, the CPU sets and the cgroup layout.
pub fn details() -> std::io::Result<GuestDetails> {
    let uts = nix::sys::utsname::uname()?;
    let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let cpus_online = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(0);
    Ok(GuestDetails {
        kernel_name: text(uts.sysname()),
        kernel_release: text(uts.release()),
        kernel_version: text(uts.version()),
        machine: text(uts.machine()),
        hostname: text(uts.nodename()),
        memory_total_bytes: meminfo_bytes(&meminfo, "MemTotal").unwrap_or(0),
        memory_available_bytes: meminfo_bytes(&meminfo, "MemAvailable").unwrap_or(0),
        cpus_online: u32::try_from(cpus_online).unwrap_or(u32::MAX),
        cpus_present: fs::read_to_string("/sys/devices/system/cpu/present")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cgroup_mode: cgroup_mode(Path::new("/sys/fs/cgroup")).to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        cmdline: fs::read_to_string("/proc/cmdline")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// A /proc/meminfo value ("MemTotal:  24576000 kB") in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name != key {
            return None;
        }
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        Some(match parts.next() {
            Some("kB") => value * 1024,
            _ => value,
        })
    })
}

/// "v2" when the unified hierarchy is mounted at the cgroup root, "hybrid"
/// when it sits beside v1 controllers, "v1" otherwise.
pub fn cgroup_mode(root: &Path) -> &'static str {
    if root.join("cgroup.controllers").exists() {
        "v2"
    } else if root.join("unified/cgroup.controllers").exists() {
        "hybrid"
    } else {
        "v1"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_values_in_bytes() {
        let text = "MemTotal:       2048 kB\nMemFree:  10 kB\nHugePages_Total:       3\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(2048 * 1024));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Some(3));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), None);
    }

    #[test]
    fn details_of_this_machine() {
        let d = details().unwrap();
        assert_eq!(d.kernel_name, "Linux");
        assert!(d.memory_total_bytes > 0);
        assert!(d.cpus_online >= 1);
    }
}
