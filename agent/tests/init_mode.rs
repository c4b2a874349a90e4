//! The agent as PID 1: run in fresh PID, mount and UTS namespaces (as the
//! initramfs's /init would run in a guest), it mounts the guest's
//! filesystems, sets the hostname, and ends the "guest" when the sandbox is
//! destroyed: reboot(2) in a PID namespace terminates its init with SIGINT.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use common::{agent_binary, ctx, TestAgent};
use pulse_protocols::health::VersionRequest;
use pulse_protocols::sandbox::{CreateSandboxRequest, DestroySandboxRequest};

#[tokio::test]
async fn pid1_sets_up_the_guest_and_powers_off_on_destroy() {
    let mut command = Command::new("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--kill-child",
        ])
        .arg(agent_binary());
    let mut agent = TestAgent::start_with(command, &["--hostname", "pulse-boot"]).await;

    let version = agent
        .health
        .version(ctx(), &VersionRequest::default())
        .await
        .unwrap();
    assert!(version.init_mode, "the agent should see itself as PID 1");

    let details = agent.guest_details().await;
    assert_eq!(details.hostname, "pulse-boot");
    // It mounted cgroup2 at /sys/fs/cgroup (this host has v1 there).
    assert_eq!(details.cgroup_mode, "v2");
    assert!(details.memory_total_bytes > 0);

    let create = CreateSandboxRequest {
        sandbox_id: "pod-1".into(),
        hostname: "pod-host".into(),
        ..Default::default()
    };
    agent.sandbox.create_sandbox(ctx(), &create).await.unwrap();
    let details = agent.guest_details().await;
    assert_eq!(details.hostname, "pod-host");
    assert_eq!(details.sandbox_id, "pod-1");

    // The pod's shared memory: a tmpfs of the size the shim asked for, once (a second
    // CreateSandbox finds it mounted).
    let agent_pid = children(agent.pid())[0];
    let shm = CreateSandboxRequest {
        sandbox_id: "pod-1".into(),
        shm_size_bytes: 1 << 20,
        ..Default::default()
    };
    agent.sandbox.create_sandbox(ctx(), &shm).await.unwrap();
    agent.sandbox.create_sandbox(ctx(), &shm).await.unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{agent_pid}/mountinfo")).unwrap();
    let shm_mounts: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/run/pulse/sandbox-shm"))
        .collect();
    assert_eq!(shm_mounts.len(), 1, "{mountinfo}");
    assert!(
        shm_mounts[0].contains(" - tmpfs ") && shm_mounts[0].contains("size=1024k"),
        "{}",
        shm_mounts[0]
    );
    // The virtio-fs share: a bad tag is refused, and without such a device the mount fails
    // by name (this "guest" has none).
    for (tag, wanted) in [
        ("bad tag", "must be 1 to 36 printable ASCII characters"),
        ("pulse-shared", "on /run/pulse/shared: "),
    ] {
        let err = agent
            .sandbox
            .create_sandbox(
                ctx(),
                &CreateSandboxRequest {
                    sandbox_id: "pod-1".into(),
                    shared_fs_tag: tag.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(wanted) && err.contains(tag), "{err}");
    }

    // Containers run under it (cgroup v2, the agent reaping as PID 1).
    agent.run("c", &["sh", "-c", "echo in-guest; exit 4"]).await;
    assert_eq!(agent.read_all("c", "", false).await, "in-guest\n");
    assert_eq!(agent.wait("c", "").await.exit_status, 4);
    agent.run("d", &["sleep", "1000"]).await;
    // Every helper and intermediate process was reaped: no child of the
    // agent is a zombie.
    assert!(
        !children(agent_pid).is_empty(),
        "the running container is a child of the agent"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let zombies: Vec<u32> = children(agent_pid)
            .into_iter()
            .filter(|pid| state(*pid) == Some('Z'))
            .collect();
        if zombies.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "zombies: {zombies:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let destroyed = agent
        .sandbox
        .destroy_sandbox(ctx(), &DestroySandboxRequest::default())
        .await
        .unwrap();
    assert!(destroyed.powering_off);
    assert_eq!(destroyed.removed_containers, 2);
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .expect("the PID 1 agent ended the namespace");
    // unshare passes on how its child ended: terminated by SIGINT.
    let by_sigint =
        status.signal() == Some(libc::SIGINT) || status.code() == Some(128 + libc::SIGINT);
    assert!(by_sigint, "{status:?}");
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}
