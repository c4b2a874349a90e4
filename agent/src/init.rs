//! PID 1 duties: the guest's filesystems, stdio, hostname, power-off.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {fstype} on {target}: {err}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        err: Errno,
    },
    #[error("creating {0}: {1}")]
    Dir(&'static str, #[source] std::io::Error),
    #[error("moving off the initramfs: {0}: {1}")]
    Switch(&'static str, String),
}

/// The flags of the kernel's own filesystems (no set-uid, device or program files on them).
const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What a PID 1 mounts, in order: (fstype, target, flags, data).
const MOUNTS: &[(&str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", MsFlags::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    (
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    ("cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, ""),
];

/// Where the new root is assembled on the initramfs before the move.
const NEW_ROOT: &str = "/.pulse-root";

/// Whether `/` is the kernel's initial root filesystem (the initramfs, fstype
/// `rootfs` in mountinfo). pivot_root(2) cannot move that mount, so no
/// container could pivot out of it.
fn root_is_initramfs() -> Result<bool, InitError> {
    fs::create_dir_all("/proc").map_err(|e| InitError::Dir("/proc", e))?;
    // The flags of MOUNTS' /proc entry: setup_guest keeps this mount.
    match mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None::<&str>,
    ) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(err) => {
            return Err(InitError::Mount {
                fstype: "proc",
                target: "/proc",
                err,
            })
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| InitError::Switch("reading /proc/self/mountinfo", e.to_string()))?;
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER".
    Ok(mountinfo.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let mount_point = fields.nth(4);
        let fstype = fields.skip_while(|f| *f != "-").nth(1);
        mount_point == Some("/") && fstype == Some("rootfs")
    }))
}

/// As PID 1 on the initramfs: moves the guest onto a fresh tmpfs root, as
/// switch_root(8) does, and re-executes the agent there, so that containers
/// can pivot_root. Returns `Ok(())` when `/` is already a real mount; does
/// not return when it moved.
pub fn leave_initramfs() -> Result<(), InitError> {
    if !root_is_initramfs()? {
        return Ok(());
    }
    let fail = |what: &'static str| move |e: Errno| InitError::Switch(what, e.to_string());
    fs::create_dir_all(NEW_ROOT).map_err(|e| InitError::Dir(NEW_ROOT, e))?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|err| InitError::Mount {
        fstype: "tmpfs",
        target: NEW_ROOT,
        err,
    })?;
    fs::copy("/proc/self/exe", Path::new(NEW_ROOT).join("init"))
        .map_err(|e| InitError::Switch("copying the agent", e.to_string()))?;
    // Once covered, the old root's files stay in memory for good: drop the
    // agent's copy there (the running image lives on until the exec).
    if let Ok(exe) = std::env::current_exe() {
        let _ = fs::remove_file(exe);
    }
    let _ = nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH);
    nix::unistd::chdir(NEW_ROOT).map_err(fail("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("moving the new root onto /"))?;
    nix::unistd::chroot(".").map_err(fail("chroot"))?;
    nix::unistd::chdir("/").map_err(fail("chdir /"))?;
    let mut args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_vec()).ok())
        .collect();
    if args.is_empty() {
        args.push(c"/init".into());
    }
    match nix::unistd::execv(c"/init", &args) {
        Ok(never) => match never {},
        Err(e) => Err(fail("exec /init")(e)),
    }
}

/// Controllers handed down to the containers' cgroups.
const CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids", "hugetlb"];

/// Mounts the guest's filesystems (already-mounted ones are kept), makes
/// sure fds 0-2 are open, and enables the cgroup controllers.
pub fn setup_guest() -> Result<(), InitError> {
    for (fstype, target, flags, data) in MOUNTS {
        fs::create_dir_all(target).map_err(|e| InitError::Dir(target, e))?;
        let data = (!data.is_empty()).then_some(*data);
        match mount(Some(*fstype), *target, Some(*fstype), *flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(err) => {
                return Err(InitError::Mount {
                    fstype,
                    target,
                    err,
                })
            }
        }
    }
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    ensure_stdio();
    enable_controllers(Path::new("/sys/fs/cgroup"));
    set_sysctls(Path::new("/proc/sys"));
    Ok(())
}

/// Kernel settings of the guest.
/// `kernel.dmesg_restrict`: the kernel log is CAP_SYSLOG's alone, as with Debian's and
/// Ubuntu's kernels (a container without it gets EPERM from `dmesg`, as under runc there).
/// `kernel.printk` 7: the shim boots the guest `quiet` (every byte of a boot log on the UART
/// is an exit to the VMM), and once the agent runs the console is back at the kernel's
/// default level: the OOM killer's `oom-kill:` lines (KERN_INFO), which the shim reads from
/// the console to publish OOM events, must reach it.
pub const SYSCTLS: &[(&str, &str)] = &[("kernel/dmesg_restrict", "1"), ("kernel/printk", "7")];

/// Writes [`SYSCTLS`] below `proc_sys` (one write each; a failure is logged, not fatal).
pub fn set_sysctls(proc_sys: &Path) {
    for (key, value) in SYSCTLS {
        if let Err(e) = fs::write(proc_sys.join(key), value) {
            tracing::warn!("sysctl {key} = {value}: {e}");
        }
    }
}

/// Points any closed fd among 0-2 at /dev/console or /dev/null:
/// libcontainer and std assume they are open.
fn ensure_stdio() {
    for fd in 0..=2 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
            continue;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .or_else(|_| {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        if let Ok(file) = file {
            if file.as_raw_fd() != fd {
                // SAFETY: dup2 onto a closed standard fd; `file` stays owned and is closed on drop.
                unsafe { libc::dup2(file.as_raw_fd(), fd) };
            } else {
                std::mem::forget(file);
            }
        }
    }
}

/// Enables each available controller for the root's children (one write
/// each: an unavailable controller must not stop the others).
pub fn enable_controllers(root: &Path) {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for c in CONTROLLERS {
        if available.split_whitespace().any(|a| a == *c) {
            if let Err(e) = fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::warn!("enabling cgroup controller {c}: {e}");
            }
        }
    }
}

/// What to do with the guest once the sandbox is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShutdownAction {
    /// Power off (ACPI or the VMM's own exit path).
    Poweroff,
    /// Reboot; with `reboot=t` and a VMM that exits on reset, this ends the VM.
    Reboot,
}

/// Ends the guest. Only returns on failure.
pub fn shutdown(action: ShutdownAction) -> Errno {
    nix::unistd::sync();
    let mode = match action {
        ShutdownAction::Poweroff => RebootMode::RB_POWER_OFF,
        ShutdownAction::Reboot => RebootMode::RB_AUTOBOOT,
    };
    match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctls_are_written_and_a_missing_one_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("kernel")).unwrap();
        fs::write(dir.path().join("kernel/dmesg_restrict"), "0").unwrap();
        set_sysctls(dir.path());
        assert_eq!(
            fs::read_to_string(dir.path().join("kernel/dmesg_restrict")).unwrap(),
            "1"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("kernel/printk")).unwrap(),
            "7"
        );
        set_sysctls(&dir.path().join("nowhere"));
    }
}
