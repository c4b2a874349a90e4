//! The agent's container API end to end: a pulse-agent on a unix socket,
//! busybox containers, as root on this machine.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    add_mount, ctx, process_json, seccomp_refusing_mkdir, status_of, user, TestAgent,
    STORAGE_ROOTFS,
};
use pulse_protocols::containers::*;
use pulse_protocols::health::CheckRequest;
use pulse_protocols::sandbox::DestroySandboxRequest;
use ttrpc::Code;

#[tokio::test]
async fn create_start_output_and_exit_code() {
    let agent = TestAgent::start().await;
    let id = "c1";
    let rootfs = agent.rootfs("rootfs");
    let spec = agent.spec(&rootfs, &["sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    let pid = agent.create(id, &spec).await.expect("create");
    assert!(pid > 0);
    let started = agent.start_container(id).await.expect("start");
    assert_eq!(started, pid);
    assert_eq!(agent.read_all(id, "", false).await, "hello\n");
    assert_eq!(agent.read_all(id, "", true).await, "oops\n");
    let status = agent.wait(id, "").await;
    assert_eq!((status.exit_status, status.signal, status.pid), (3, 0, pid));
    // A second start of a finished container is refused.
    let (code, msg) = status_of(agent.start_container(id).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    agent.remove(id, false).await.expect("remove");
    let (code, _) = status_of(agent.wait_err(id).await);
    assert_eq!(code, Code::NOT_FOUND);
}

#[tokio::test]
async fn spec_environment_cwd_and_user() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let mut spec = agent.spec(
        &rootfs,
        &["sh", "-c", "echo $GREETING; pwd; id -u; id -g; hostname"],
    );
    let process = spec.process_mut().as_mut().unwrap();
    process.set_env(Some(vec![
        "PATH=/bin".to_string(),
        "GREETING=hi there".to_string(),
    ]));
    process.set_cwd("/home/user".into());
    process.set_user(user(1000, 1000));
    spec.set_hostname(Some("box".to_string()));
    agent.create_and_start("env", &spec).await;
    assert_eq!(
        agent.output("env", "").await,
        "hi there\n/home/user\n1000\n1000\nbox\n"
    );
}

#[tokio::test]
async fn exec_while_running_then_kill() {
    let agent = TestAgent::start().await;
    let id = "runner";
    let pid = agent.run(id, &["sleep", "1000"]).await;

    agent
        .exec(
            id,
            "e1",
            &["sh", "-c", "echo from-exec; echo $$ >&2; exit 5"],
            false,
        )
        .await
        .expect("exec");
    assert_eq!(agent.read_all(id, "e1", false).await, "from-exec\n");
    // In the container's pid namespace the exec'd shell is not pid 1.
    let inner_pid: u32 = agent.read_all(id, "e1", true).await.trim().parse().unwrap();
    assert!(inner_pid > 1);
    assert_eq!(agent.wait(id, "e1").await.exit_status, 5);

    let listed = agent
        .containers
        .list_processes(
            ctx(),
            &ListProcessesRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        listed
            .processes
            .iter()
            .any(|p| p.pid == pid && p.command == "sleep"),
        "{listed:?}"
    );
    let listed = agent.list().await;
    assert_eq!(listed.containers[0].status, "running");
    assert_eq!(listed.containers[0].exec_ids, vec!["e1".to_string()]);

    // A second exec with the same id is refused.
    let (code, _) = status_of(agent.exec(id, "e1", &["true"], false).await.unwrap_err());
    assert_eq!(code, Code::ALREADY_EXISTS);

    agent.signal(id, "", libc::SIGKILL).await.expect("kill");
    let status = agent.wait(id, "").await;
    assert_eq!((status.exit_status, status.signal), (137, 9));
    // Signalling a process that already ended is not an error.
    agent
        .signal(id, "", libc::SIGKILL)
        .await
        .expect("kill again");
    let (code, msg) = status_of(agent.exec(id, "e2", &["true"], false).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    agent.remove(id, false).await.expect("remove");
}

#[tokio::test]
async fn signal_is_delivered_to_a_handler() {
    let agent = TestAgent::start().await;
    let id = "trap";
    agent
        .run(
            id,
            &[
                "sh",
                "-c",
                "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
            ],
        )
        .await;
    assert!(agent.read_until(id, "", "ready").await.contains("ready"));
    agent.signal(id, "", libc::SIGTERM).await.expect("signal");
    assert!(agent.read_all(id, "", false).await.contains("got TERM"));
    assert_eq!(agent.wait(id, "").await.exit_status, 42);
}

#[tokio::test]
async fn terminal_mode() {
    let agent = TestAgent::start().await;
    let id = "tty";
    let rootfs = agent.rootfs("rootfs");
    let mut spec = agent.spec(&rootfs, &["sh"]);
    let process = spec.process_mut().as_mut().unwrap();
    process.set_terminal(Some(true));
    agent.create_and_start(id, &spec).await;
    let resize = ResizeTerminalRequest {
        container_id: id.into(),
        rows: 40,
        columns: 100,
        ..Default::default()
    };
    agent
        .containers
        .resize_terminal(ctx(), &resize)
        .await
        .expect("resize");
    agent
        .write_stdin(id, "", b"tty; stty size; exit 7\n")
        .await
        .expect("stdin");
    let out = agent.read_all(id, "", false).await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    assert_eq!(agent.wait(id, "").await.exit_status, 7);
    // A terminal merges stderr into stdout.
    assert_eq!(agent.read_all(id, "", true).await, "");

    // Resizing a process without a terminal is refused.
    agent.run("plain", &["true"]).await;
    let resize = ResizeTerminalRequest {
        container_id: "plain".into(),
        rows: 1,
        columns: 1,
        ..Default::default()
    };
    let err = agent
        .containers
        .resize_terminal(ctx(), &resize)
        .await
        .unwrap_err();
    assert_eq!(status_of(err).0, Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn exec_with_a_terminal() {
    let agent = TestAgent::start().await;
    let id = "host";
    agent.run(id, &["sleep", "1000"]).await;
    agent
        .exec(id, "t", &["sh", "-c", "tty"], true)
        .await
        .expect("exec");
    let out = agent.output(id, "t").await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    agent.remove(id, true).await.expect("forced remove");
}

#[tokio::test]
async fn stdin_is_passed_and_closed() {
    let agent = TestAgent::start().await;
    let id = "cat";
    agent.run(id, &["cat"]).await;
    assert_eq!(agent.write_stdin(id, "", b"line1\n").await.unwrap(), 6);
    agent.write_stdin(id, "", b"line2\n").await.unwrap();
    agent.close_stdin(id, "").await.expect("close");
    assert_eq!(agent.output(id, "").await, "line1\nline2\n");
    let (code, _) = status_of(agent.write_stdin(id, "", b"late").await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn two_containers_at_once() {
    let agent = TestAgent::start().await;
    let (a, b) = tokio::join!(
        agent.run("a", &["sh", "-c", "sleep 0.3; echo A"]),
        agent.run("b", &["sh", "-c", "echo B"])
    );
    assert_ne!(a, b);
    let (out_a, out_b) = tokio::join!(
        agent.read_all("a", "", false),
        agent.read_all("b", "", false)
    );
    assert_eq!((out_a.as_str(), out_b.as_str()), ("A\n", "B\n"));
    let (wa, wb) = tokio::join!(agent.wait("a", ""), agent.wait("b", ""));
    assert_eq!((wa.exit_status, wb.exit_status), (0, 0));
    let listed = agent.list().await;
    let ids: Vec<&str> = listed
        .containers
        .iter()
        .map(|c| c.container_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn pause_resume_stats_and_update() {
    let agent = TestAgent::start().await;
    let id = "p";
    agent.run(id, &["sleep", "1000"]).await;
    let containers = &agent.containers;
    let req = PauseContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    containers
        .pause_container(ctx(), &req)
        .await
        .expect("pause");
    let listed = agent.list().await;
    assert_eq!(listed.containers[0].status, "paused");
    let err = containers.pause_container(ctx(), &req).await.unwrap_err();
    assert_eq!(status_of(err).0, Code::FAILED_PRECONDITION);
    let req = ResumeContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    containers
        .resume_container(ctx(), &req)
        .await
        .expect("resume");

    let limit: u64 = 64 * 1024 * 1024;
    let resources = serde_json::json!({
        "memory": {"limit": limit},
        "pids": {"limit": 32}
    });
    let update = UpdateContainerRequest {
        container_id: id.into(),
        oci_resources_json: serde_json::to_vec(&resources).unwrap(),
        ..Default::default()
    };
    containers
        .update_container(ctx(), &update)
        .await
        .expect("update");
    let stats = containers
        .container_stats(
            ctx(),
            &ContainerStatsRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .expect("stats");
    assert_eq!(stats.memory_limit_bytes, limit);
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert_eq!(stats.pids_current, 1, "{stats:?}");
    assert_eq!(stats.pids_limit, 32, "{stats:?}");
    // The API speaks nanoseconds; cgroup v2 counts microseconds (v1's cpuacct nanoseconds).
    assert!(stats.cpu_usage_ns >= 1000, "{stats:?}");
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(stats.cpu_usage_ns % 1000, 0, "{stats:?}");
    }

    let bad = UpdateContainerRequest {
        oci_resources_json: b"[1,2]".to_vec(),
        ..update
    };
    let err = containers.update_container(ctx(), &bad).await.unwrap_err();
    assert_eq!(status_of(err).0, Code::INVALID_ARGUMENT);
    // Removing a running container needs force.
    let (code, _) = status_of(agent.remove(id, false).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    agent.remove(id, true).await.expect("forced remove");
}

#[tokio::test]
async fn rootfs_from_storages() {
    let agent = TestAgent::start().await;
    let image = agent.rootfs("image");
    std::fs::create_dir(image.join("scratch")).unwrap();
    let script = "ls /bin/busybox; ls /scratch; df /scratch | tail -1";
    let spec = agent.spec(Path::new(STORAGE_ROOTFS), &["sh", "-c", script]);
    let storages = vec![
        Storage {
            source: StorageSource::STORAGE_SOURCE_GUEST_PATH.into(),
            locator: image.display().to_string(),
            options: vec!["ro".into()],
            target: "rootfs".into(),
            ..Default::default()
        },
        Storage {
            source: StorageSource::STORAGE_SOURCE_TMPFS.into(),
            options: vec!["size=1m".into()],
            target: "rootfs/scratch".into(),
            ..Default::default()
        },
    ];
    agent
        .create_on("st", &spec, storages)
        .await
        .expect("create with storages");
    agent.start_container("st").await.unwrap();
    let out = agent.output("st", "").await;
    assert!(out.starts_with("/bin/busybox\n"), "{out:?}");
    assert!(out.contains("tmpfs"), "{out:?}");
    agent.remove("st", false).await.unwrap();
    // The storages are unmounted with the container.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&agent.dir().display().to_string()),
        "{mounts}"
    );

    let missing = Storage {
        source: StorageSource::STORAGE_SOURCE_BLOCK_SERIAL.into(),
        locator: "no-such-serial".into(),
        fs_type: "ext4".into(),
        target: "rootfs".into(),
        ..Default::default()
    };
    let err = agent
        .create_on("st2", &spec, vec![missing])
        .await
        .unwrap_err();
    let (code, msg) = status_of(err);
    assert_eq!(code, Code::NOT_FOUND);
    assert!(msg.contains("no-such-serial"), "{msg}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    // A container that keeps running through all of it.
    agent.run("survivor", &["sleep", "1000"]).await;

    // Unknown container and exec ids.
    let (code, msg) = status_of(agent.start_container("ghost").await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    assert_eq!(msg, "container \"ghost\" not found");
    let (code, _) = status_of(agent.signal("ghost", "", 9).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    let (code, _) = status_of(agent.remove("ghost", true).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    let (code, msg) = status_of(agent.signal("survivor", "nope", 9).await.unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    assert_eq!(msg, "exec \"nope\" not found in container \"survivor\"");
    let (code, _) = status_of(
        agent
            .exec("ghost", "x", &["true"], false)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::NOT_FOUND);

    // Malformed and unsupported specs.
    let (code, msg) = status_of(
        agent
            .create_with("m", b"{nope".to_vec(), vec![])
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(msg.starts_with("not a valid OCI runtime spec"), "{msg}");
    let mut spec = agent.spec(&rootfs, &["true"]);
    spec.set_version("2.0.0".into());
    let (code, msg) = status_of(agent.create("u", &spec).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        msg.contains("unsupported OCI spec") && msg.contains("2.0.0"),
        "{msg}"
    );
    let (code, msg) = status_of(
        agent
            .create_with("bad/id", b"{}".to_vec(), vec![])
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(msg.contains("contains '/'"), "{msg}");

    // A rootfs that does not exist.
    let spec = agent.spec(&agent.dir().join("no-rootfs"), &["true"]);
    let (code, msg) = status_of(agent.create("r", &spec).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        msg.contains("no-rootfs") && msg.contains("does not exist"),
        "{msg}"
    );

    // A command that is not found.
    let spec = agent.spec(&rootfs, &["/bin/no-such-command"]);
    let (_, msg) = status_of(agent.create("nf", &spec).await.unwrap_err());
    assert!(msg.contains("no-such-command"), "{msg}");
    let (_, msg) = status_of(
        agent
            .exec("survivor", "nf", &["no-such-command"], false)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("no-such-command"), "{msg}");

    // A second create with the same id.
    let spec = agent.spec(&rootfs, &["true"]);
    let (code, msg) = status_of(agent.create("survivor", &spec).await.unwrap_err());
    assert_eq!(code, Code::ALREADY_EXISTS);
    assert_eq!(msg, "container \"survivor\" already exists");

    // A huge read request.
    let req = ReadOutputRequest {
        container_id: "survivor".into(),
        max_bytes: u32::MAX,
        ..Default::default()
    };
    let (code, msg) = status_of(agent.containers.read_stdout(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(
        msg.contains("max_bytes must be between 1 and 1048576"),
        "{msg}"
    );
    // A signal number that is not one.
    let (code, _) = status_of(agent.signal("survivor", "", 1000).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);

    // Failed creates left nothing behind, and the agent still serves.
    let listed = agent.list().await;
    assert_eq!(listed.containers.len(), 1);
    assert_eq!(listed.containers[0].status, "running");
    agent
        .health
        .check(ctx(), &CheckRequest::default())
        .await
        .expect("health");
    agent.run("after", &["echo", "still here"]).await;
    assert_eq!(agent.read_all("after", "", false).await, "still here\n");
    agent
        .exec("survivor", "ok", &["true"], false)
        .await
        .expect("exec still works");
    assert_eq!(agent.wait("survivor", "ok").await.exit_status, 0);
}

#[tokio::test]
async fn destroy_sandbox_removes_every_container() {
    let agent = TestAgent::start().await;
    agent.run("one", &["sleep", "1000"]).await;
    agent.run("two", &["sleep", "1000"]).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        agent
            .sandbox
            .destroy_sandbox(ctx(), &DestroySandboxRequest::default()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.removed_containers, 2);
    assert!(!resp.powering_off, "not PID 1 here");
    let listed = agent.list().await;
    assert!(listed.containers.is_empty());
}

#[tokio::test]
async fn spec_mounts_and_resources_are_applied() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let shared = agent.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("note"), "shared file\n").unwrap();
    let script = "cat /data/note; echo written > /data/out";
    let mut spec = agent.spec_json(&rootfs, &["sh", "-c", script]);
    let data = serde_json::json!({
        "destination": "/data",
        "type": "bind",
        "source": shared,
        "options": ["rbind", "rw"]
    });
    add_mount(&mut spec, data);
    let limit: u64 = 48 * 1024 * 1024;
    spec["linux"]["resources"] = serde_json::json!({
        "memory": {"limit": limit},
        "pids": {"limit": 20}
    });
    agent.create("m", &spec).await.expect("create");
    let stats = agent
        .containers
        .container_stats(
            ctx(),
            &ContainerStatsRequest {
                container_id: "m".into(),
                ..Default::default()
            },
        )
        .await
        .expect("stats");
    assert_eq!((stats.memory_limit_bytes, stats.pids_limit), (limit, 20));
    agent.start_container("m").await.unwrap();
    assert_eq!(agent.output("m", "").await, "shared file\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "written\n"
    );
}

/// As under runc, no signal is ignored or blocked in a container's processes
/// (the agent's own Rust runtime ignores SIGPIPE): `yes` in a closed pipe
/// dies of SIGPIPE instead of reporting a broken pipe.
#[tokio::test]
async fn container_processes_start_with_default_signals() {
    const SCRIPT: &str = "grep -E '^Sig(Ign|Blk):' /proc/self/status; yes | head -n 1";
    const EXPECTED: &str = "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ny\n";
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let spec = agent.spec(
        &rootfs,
        &["sh", "-c", &format!("{SCRIPT}; exec sleep 1000")],
    );
    agent.create_and_start("sigs", &spec).await;
    assert_eq!(agent.read_until("sigs", "", "y\n").await, EXPECTED);

    agent
        .exec("sigs", "e1", &["sh", "-c", SCRIPT], false)
        .await
        .expect("exec");
    assert_eq!(agent.read_all("sigs", "e1", false).await, EXPECTED);
    assert_eq!(agent.read_all("sigs", "e1", true).await, "");
    agent.remove("sigs", true).await.expect("remove");
}

/// As under runc, a working directory that does not exist is created in the
/// rootfs (0755, the container's root owns it), and a symlink on the way
/// cannot lead it out of the rootfs.
#[tokio::test]
async fn a_missing_working_directory_is_created() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let outside = agent.dir().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // The link's target exists both on this host and in the rootfs: the
    // rootfs's must be the one used.
    let inside = rootfs.join(outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    std::os::unix::fs::symlink(&outside, rootfs.join("link")).unwrap();
    for (id, cwd, expected) in [
        (
            "deep",
            "/nonexistent/dir",
            "/nonexistent/dir\n755 0 /nonexistent/dir\n755 0 /nonexistent\n",
        ),
        ("link", "/link/made", ""),
    ] {
        let script = "pwd; stat -c '%a %u %n' /nonexistent/dir /nonexistent 2>/dev/null";
        let mut spec = agent.spec(&rootfs, &["sh", "-c", script]);
        let process = spec.process_mut().as_mut().unwrap();
        process.set_cwd(cwd.into());
        process.set_user(user(1000, 1000));
        agent.create_and_start(id, &spec).await;
        let out = agent.read_all(id, "", false).await;
        if !expected.is_empty() {
            assert_eq!(out, expected);
        }
        agent.wait(id, "").await;
    }
    assert!(!outside.join("made").exists(), "created outside the rootfs");
    assert!(inside.join("made").is_dir());
}

/// A working directory below a mount destination is created in the mounted filesystem (runc
/// makes it after the mounts), not in the rootfs underneath, and belongs to the container's root.
#[tokio::test]
async fn a_missing_working_directory_below_a_mount_is_created_in_the_mount() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let script = "pwd; stat -c '%a %u %n' . ..; grep ' /scratch ' /proc/mounts | cut -d' ' -f3";
    let mut spec = agent.spec_json(&rootfs, &["sh", "-c", script]);
    spec["process"]["cwd"] = "/scratch/./a/b".into();
    spec["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    add_mount(&mut spec, scratch_tmpfs());
    agent.create_and_start("below", &spec).await;
    assert_eq!(
        agent.output("below", "").await,
        "/scratch/a/b\n755 0 .\n755 0 ..\ntmpfs\n"
    );
    assert!(
        !rootfs.join("scratch/a").exists(),
        "made in the rootfs under the mount"
    );
}

/// `ctr run --mount type=tmpfs,dst=/scratch` gives a mount without a source;
/// runc mounts a tmpfs there with an empty source, which `/proc/mounts` shows.
#[tokio::test]
async fn a_tmpfs_mount_without_a_source() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let script =
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f1,3; echo x > /scratch/f; cat /scratch/f";
    let mut spec = agent.spec_json(&rootfs, &["sh", "-c", script]);
    add_mount(&mut spec, scratch_tmpfs());
    agent.create_and_start("tmp", &spec).await;
    assert_eq!(agent.output("tmp", "").await, " tmpfs\nx\n");
}

/// The environment is the spec's list in its order, as runc gives it to
/// execve: a repeated name keeps its last value at its last place, and HOME
/// comes last when the spec has none.
#[tokio::test]
async fn the_environment_keeps_the_spec_order() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    // `env` itself, not a shell: busybox sh passes on its variables in hash order.
    let mut spec = agent.spec(&rootfs, &["env"]);
    let process = spec.process_mut().as_mut().unwrap();
    let env = [
        "PATH=/bin",
        "ZED=1",
        "ALPHA=2",
        "MID=a=b",
        "ALPHA=4",
        "HOME=/root",
    ];
    process.set_env(Some(env.map(String::from).to_vec()));
    agent.create_and_start("env", &spec).await;
    assert_eq!(
        agent.output("env", "").await,
        "PATH=/bin\nZED=1\nMID=a=b\nALPHA=4\nHOME=/root\n"
    );

    agent.run("runner", &["sleep", "1000"]).await;
    agent
        .exec("runner", "e1", &["env"], false)
        .await
        .expect("exec");
    assert_eq!(
        agent.read_all("runner", "e1", false).await,
        "PATH=/bin\nHOME=/root\n"
    );
    agent.remove("runner", true).await.expect("remove");
}

/// A profile that refuses mkdir with EPERM, as Kubernetes' RuntimeDefault and `ctr run
/// --seccomp` give one: the container runs in seccomp filter mode (`Seccomp: 2`, one filter,
/// like runc) and mkdir fails, with and without no_new_privileges (libcontainer loads the
/// filter before the capabilities go in one case, just before the exec in the other).
#[tokio::test]
async fn a_seccomp_profile_is_enforced() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let script = "grep -E '^Seccomp(_filters)?:' /proc/self/status | tr -d '\\t '; \
                  mkdir /tmp/blocked 2>&1 || echo refused";
    for (id, no_new_privileges) in [("sc-nnp", true), ("sc-caps", false)] {
        let mut spec = agent.spec_json(&rootfs, &["sh", "-c", script]);
        spec["process"]["noNewPrivileges"] = serde_json::json!(no_new_privileges);
        spec["linux"]["seccomp"] = seccomp_refusing_mkdir();
        agent.create_and_start(id, &spec).await;
        let out = agent.output(id, "").await;
        assert!(out.contains("Seccomp:2\n"), "{id}: {out}");
        assert!(out.contains("Seccomp_filters:1\n"), "{id}: {out}");
        assert!(out.contains("Operation not permitted"), "{id}: {out}");
        assert!(out.contains("refused"), "{id}: {out}");
    }
}

/// A process exec'd into a container is confined by the container's profile, as under `runc
/// exec`, with and without noNewPrivileges, and has its own capabilities in the end (without
/// noNewPrivileges the agent lends it CAP_SYS_ADMIN for the load alone). libcontainer's exec
/// left the profile out.
#[tokio::test]
async fn an_exec_is_confined_by_the_containers_seccomp_profile() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let id = "sc-exec";
    let mut spec = agent.spec_json(&rootfs, &["sleep", "1000"]);
    spec["linux"]["seccomp"] = seccomp_refusing_mkdir();
    agent.create_and_start(id, &spec).await;
    let script = "grep -E '^(Seccomp(_filters)?|Cap(Prm|Eff|Bnd)|NoNewPrivs):' /proc/self/status \
                  | tr -d '\\t '; mkdir /tmp/blocked 2>&1 || echo refused";
    // CAP_CHOWN (bit 0) and CAP_KILL (bit 5).
    let caps = serde_json::json!(["CAP_CHOWN", "CAP_KILL"]);
    for (exec_id, no_new_privileges) in [("x-nnp", true), ("x-caps", false)] {
        let mut process = process_json(&["sh", "-c", script]);
        process["noNewPrivileges"] = no_new_privileges.into();
        process["capabilities"] = serde_json::json!({
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": [], "ambient": []
        });
        agent
            .exec_process(id, exec_id, process)
            .await
            .expect("exec");
        let out = agent.output(id, exec_id).await;
        for line in [
            "Seccomp:2",
            "Seccomp_filters:1",
            "CapPrm:0000000000000021",
            "CapEff:0000000000000021",
            "CapBnd:0000000000000021",
            &format!("NoNewPrivs:{}", u8::from(no_new_privileges)),
            "Operation not permitted",
            "refused",
        ] {
            assert!(out.contains(line), "{exec_id}: no {line:?} in {out}");
        }
    }
    agent.kill_and_remove(id).await;
}

/// An exec whose working directory does not exist in the container fails naming it (runc's
/// exec fails there too); libcontainer's own error only said that a syscall failed.
#[tokio::test]
async fn an_exec_into_a_missing_working_directory_names_it() {
    let agent = TestAgent::start().await;
    let id = "cwd-exec";
    agent.run(id, &["sleep", "1000"]).await;
    let mut process = process_json(&["pwd"]);
    process["cwd"] = "/nonexistent/dir".into();
    let (code, msg) = status_of(agent.exec_process(id, "x1", process).await.unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("/nonexistent/dir"), "{msg}");
    agent.kill_and_remove(id).await;
}

/// A profile the guest cannot honour (SCMP_ACT_NOTIFY: a listener on the host) fails the
/// create with a reason that says seccomp: never a container without its filter.
#[tokio::test]
async fn a_seccomp_profile_that_cannot_be_applied_is_a_clear_error() {
    let agent = TestAgent::start().await;
    let rootfs = agent.rootfs("rootfs");
    let mut spec = agent.spec_json(&rootfs, &["true"]);
    spec["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_NOTIFY",
        "architectures": ["SCMP_ARCH_X86_64"]
    });
    let created = agent.create("sc-bad", &spec).await;
    let err = match created {
        Err(e) => e,
        Ok(_) => agent
            .start_container("sc-bad")
            .await
            .expect_err("a container started without its seccomp filter"),
    };
    assert!(
        format!("{err:?}").to_lowercase().contains("seccomp"),
        "{err:?}"
    );
}

/// A tmpfs at /scratch, as `ctr run --mount type=tmpfs,dst=/scratch` gives (no source).
fn scratch_tmpfs() -> serde_json::Value {
    serde_json::json!({
        "destination": "/scratch",
        "type": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777"]
    })
}
