//! A container's rootfs without a copy (`rootfs.mode = "shared"`, the default with a virtio-fs
//! share) and its fallback (`"copy"`), end to end through containerd 1.6 and ctr: the image's
//! layers as runc shows them (whiteouts, opaque directories), writes that stay with their
//! container and never reach the image, a writable layer that fills up with ENOSPC, and a shim
//! killed in the middle of a start that leaves nothing behind. Backend as the containerd suite
//! (`PULSE_TEST_BACKEND`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, Env, IMAGE};

/// The image with three layers: busybox, then one with files, then one that removes some.
const LAYERED: &str = "docker.io/library/pulse-layered:latest";
/// What the image shows at `/`: prints the same under runc and Pulse.
const LOOK: &str = "ls /data; test -e /gone && echo gone-is-there; cat /etc/motd; \
     ls /data/keep; stat -c '%a %u:%g' / /data; readlink /bin/sh";
const LOOK_EXPECTED: &str = "b\nkeep\nv2\nx\n755 0:0\n750 0:0\nbusybox\n";

fn shim() -> String {
    common::shim_binary().display().to_string()
}

/// Writes the pulse config of `env` with `[rootfs]` set to `rootfs`.
fn configure(env: &Env, rootfs: &str) {
    env.write_config("", "");
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), format!("{config}[rootfs]\n{rootfs}\n")).unwrap();
}

/// Builds and imports [`LAYERED`]: layer 2 adds `/data/{a,keep/x}`, `/gone` and `/etc/motd`
/// (v1); layer 3 makes `/data` opaque with `/data/{b,keep/x}` in it, removes `/gone` and
/// rewrites `/etc/motd` (v2), and makes `/data` 0750.
fn import_layered(env: &Env) {
    let dir = env.dir.path();
    let (two, three) = (dir.join("layer2"), dir.join("layer3"));
    for d in [
        two.join("data/keep"),
        two.join("etc"),
        three.join("data/keep"),
        three.join("etc"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(two.join("data/a"), "a\n").unwrap();
    std::fs::write(two.join("data/keep/x"), "x1\n").unwrap();
    std::fs::write(two.join("gone"), "gone\n").unwrap();
    std::fs::write(two.join("etc/motd"), "v1\n").unwrap();
    std::fs::write(three.join("data/.wh..wh..opq"), "").unwrap();
    std::fs::write(three.join("data/b"), "b\n").unwrap();
    std::fs::write(three.join("data/keep/x"), "x2\n").unwrap();
    std::fs::write(three.join(".wh.gone"), "").unwrap();
    std::fs::write(three.join("etc/motd"), "v2\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(three.join("data"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let args = [LAYERED.as_ref(), two.as_os_str(), three.as_os_str()];
    env.import_busybox(&dir.join("layered.tar"), &args);
}

/// `ctr run --rm` of `image` with `runtime`; (exit code, stdout, stderr).
fn run(
    env: &Env,
    runtime: &str,
    image: &str,
    id: &str,
    script: &str,
) -> (Option<i32>, String, String) {
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        image,
        id,
        "sh",
        "-c",
        script,
    ]);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The snapshotter's directories of the env's containerd (every layer and upper dir).
fn snapshots(env: &Env) -> PathBuf {
    env.dir
        .path()
        .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots")
}

/// Files named `name` anywhere below `dir` (not following links or other mounts).
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-xdev", "-name", name])
        .output()
        .unwrap();
    text(&out.stdout).lines().map(PathBuf::from).collect()
}

/// Lines of the shim's log (in containerd's) that say how rootfs were made.
fn rootfs_log_lines(env: &Env) -> Vec<String> {
    env.log()
        .lines()
        .filter(|l| l.contains("rootfs image shared") || l.contains("rootfs disk attached"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_shared_rootfs_shows_the_layers_as_runc_and_keeps_writes_apart() {
    let (_one, env) = start_env!();
    let snapshots_before = snapshot_names(&env);
    import_layered(&env);
    let runc = run(&env, "io.containerd.runc.v2", LAYERED, "r1", LOOK);
    assert_eq!(runc, (Some(0), LOOK_EXPECTED.into(), String::new()), "runc");
    let pulse = run(&env, &shim(), LAYERED, "p1", LOOK);
    assert_eq!(pulse, runc, "{}", env.log());
    let shared = rootfs_log_lines(&env);
    assert!(
        shared
            .iter()
            .any(|l| l.contains("rootfs image shared") && l.contains("layers=4")),
        "not shared as a view of 4 layers (the snapshot's upper dir and the image's 3): {shared:?}"
    );

    // A container's writes (a new file, a changed image file, a removed one) stay its own.
    let write = "echo mine > /mine; echo changed > /etc/motd; rm /data/b; cat /etc/motd; ls /data";
    let (code, out, err) = run(&env, &shim(), LAYERED, "p2", write);
    assert_eq!((code, out.as_str()), (Some(0), "changed\nkeep\n"), "{err}");
    let (code, out, err) = run(
        &env,
        &shim(),
        LAYERED,
        "p3",
        "cat /etc/motd; ls /data; test -e /mine && echo mine-is-there || echo clean",
    );
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "v2\nb\nkeep\nclean\n"),
        "{err}"
    );
    // Nothing reached the image's layers or any snapshot on the host.
    let snaps = snapshots(&env);
    assert!(
        find_named(&snaps, "mine").is_empty(),
        "a write reached a snapshot"
    );
    let motds: Vec<String> = find_named(&snaps, "motd")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        motds.len() >= 2 && motds.iter().all(|m| m == "v1\n" || m == "v2\n"),
        "{motds:?}"
    );
    env.assert_no_leaks();
    // Removing the image frees its snapshots, as with runc: Pulse holds none of them.
    let out = env.ctr(&["images", "rm", "--sync", LAYERED]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(snapshot_names(&env), snapshots_before);
}

/// The names in `ctr snapshots ls`.
fn snapshot_names(env: &Env) -> Vec<String> {
    let out = env.ctr(&["snapshots", "ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut names: Vec<String> = text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Two containers of one image in one pod (one VM) see their own writes only.
#[test]
fn two_containers_of_one_image_in_one_pod_see_their_own_writes() {
    let (_one, env) = start_env!();
    for (id, kind) in [("pod1", "sandbox"), ("app1", "container")] {
        let pod = common::pod_options(kind, "pod1");
        let script = format!("echo {id} > /who; echo {id} > /etc/passwd; sleep 1000");
        let cmd = ["sh", "-c", &script];
        env.run_detached(id, &pod.each_ref().map(String::as_str), &cmd);
    }
    for id in ["pod1", "app1"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = env.ctr(&[
                "tasks",
                "exec",
                "--exec-id",
                "look",
                id,
                "cat",
                "/who",
                "/etc/passwd",
            ]);
            let seen = text(&out.stdout);
            if seen == format!("{id}\n{id}\n") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} sees {seen:?} ({})",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // One pod, one shim.
    env.the_shim();
    for id in ["app1", "pod1"] {
        env.kill_and_delete(id);
    }
    env.assert_no_leaks();
}

/// A container that fills its writable layer gets ENOSPC; the host's file stays at the
/// configured size, and the next container starts with all of it again.
#[test]
fn a_full_writable_layer_is_enospc_in_the_container_only() {
    let (_one, env) = start_env!();
    configure(&env, "writable_mib = 32");
    let fill = "dd if=/dev/zero of=/fill bs=1M count=64 2>&1 | grep -o 'No space left on device' | head -n 1; \
                rm /fill; echo after > /after; cat /after";
    let (code, out, err) = run(&env, &shim(), IMAGE, "full1", fill);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "No space left on device\nafter\n"),
        "{err}\n{}",
        env.log()
    );
    let (code, out, err) = run(
        &env,
        &shim(),
        IMAGE,
        "full2",
        "dd if=/dev/zero of=/fill bs=1M count=16 2>/dev/null && echo fits",
    );
    assert_eq!((code, out.as_str()), (Some(0), "fits\n"), "{err}");
    env.assert_no_leaks();
}

/// `rootfs.mode = "copy"` (the fallback) still gives the image as runc shows it.
#[test]
fn the_copy_fallback_shows_the_same_rootfs() {
    let (_one, env) = start_env!();
    configure(&env, "mode = \"copy\"");
    import_layered(&env);
    let pulse = run(&env, &shim(), LAYERED, "c1", LOOK);
    assert_eq!(
        pulse,
        (Some(0), LOOK_EXPECTED.into(), String::new()),
        "{}",
        env.log()
    );
    let lines = rootfs_log_lines(&env);
    assert!(
        lines.iter().any(|l| l.contains("rootfs disk attached"))
            && !lines.iter().any(|l| l.contains("rootfs image shared")),
        "{lines:?}"
    );
    env.assert_no_leaks();
}

/// The shim killed (SIGKILL) while a container's image is being shared: containerd's cleanup
/// leaves no mount or file behind, the snapshots are intact, and the next start works.
#[test]
fn a_shim_killed_in_the_middle_of_a_start_leaves_nothing_and_the_next_start_works() {
    let (_one, env) = start_env!();
    let state = env.state_dir();
    let mut ctr = env.ctr_cmd(&["run", "--rm", "--runtime", &shim(), IMAGE, "k1", "true"]);
    let mut child = ctr.spawn().unwrap();
    // Kill as soon as the image is mounted in the pod's share.
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed = loop {
        if env.mounts().iter().any(|m| m.contains("/mounts/k1/rootfs")) {
            let shim = env
                .pod_processes()
                .into_iter()
                .find(|(_, c)| common::is_shim(c));
            if let Some((pid, _)) = shim {
                let _ = common::send_signal(pid, nix::sys::signal::Signal::SIGKILL);
                break true;
            }
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        killed,
        "never saw the image mounted under {}",
        state.display()
    );
    let _ = child.wait();
    let _ = env.ctr(&["tasks", "delete", "k1"]);
    let _ = env.ctr(&["containers", "delete", "k1"]);
    env.assert_no_leaks();
    let (code, out, err) = run(&env, &shim(), IMAGE, "k2", "cat /etc/passwd");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "root:x:0:0:root:/root:/bin/sh\n"),
        "{err}"
    );
    env.assert_no_leaks();
}
