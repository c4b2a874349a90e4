//! A container whose rootfs is a block device found by its serial: an ext4
//! image on a loop device, named in a sysfs tree the agent is pointed at
//! (loop devices have no serial of their own; virtio-blk disks do).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{unique, TestAgent};
use pulse_protocols::containers::{Storage, StorageSource};

/// Detaches the loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn rootfs_on_a_block_device_found_by_serial() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    common::make_busybox_rootfs(&tree);
    fs::write(tree.join("hello.txt"), "from the disk\n").unwrap();
    let image = work.path().join("disk.img");
    run(Command::new("truncate").args(["-s", "32M"]).arg(&image));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image));
    let device = Loop(run(Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&image)));
    let name = Path::new(&device.0)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    // The sysfs the agent reads: this loop device carries our serial.
    let serial = unique("disk");
    let fake_root = work.path().join("root");
    fs::create_dir_all(fake_root.join("sys/block").join(&name)).unwrap();
    fs::write(
        fake_root.join("sys/block").join(&name).join("serial"),
        &serial,
    )
    .unwrap();

    let root_arg = fake_root.display().to_string();
    let agent = TestAgent::start_with(
        Command::new(common::agent_binary()),
        &["--report-root", &root_arg],
    )
    .await;
    let spec = agent.spec(Path::new(common::STORAGE_ROOTFS), &["cat", "/hello.txt"]);
    let storage = Storage {
        source: StorageSource::STORAGE_SOURCE_BLOCK_SERIAL.into(),
        locator: serial.clone(),
        fs_type: "ext4".into(),
        options: vec!["nodev".into()],
        target: "rootfs".into(),
        ..Default::default()
    };
    agent
        .create_on("disk", &spec, vec![storage])
        .await
        .expect("create on the block device");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(&device.0), "{} is mounted", device.0);
    agent.start_container("disk").await.unwrap();
    assert_eq!(agent.output("disk", "").await, "from the disk\n");
    agent.remove("disk", false).await.unwrap();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&device.0), "{} is unmounted", device.0);
}
