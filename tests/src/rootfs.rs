//! Container root filesystems: a busybox tree, and ext4 images made from a
//! tree by `guest/image/mkext4.sh`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// Fills `root` with bin/busybox and one symlink per applet, /etc/passwd,
/// /etc/group and the usual mount points.
pub fn busybox_tree(root: &Path) -> Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static");
    }
    let bin = root.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(BUSYBOX, bin.join("busybox")).context("copying busybox")?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !bin.join(applet).exists() {
            symlink("busybox", bin.join(applet))?;
        }
    }
    for dir in ["proc", "sys", "dev", "tmp", "etc", "root", "run"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// `guest/image/mkext4.sh TREE IMAGE`: an ext4 image of `tree`.
pub fn ext4_image(tree: &Path, image: &Path) -> Result<()> {
    let script = crate::repo_root().join("guest/image/mkext4.sh");
    let out = Command::new(&script)
        .arg(tree)
        .arg(image)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
