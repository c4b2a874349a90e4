//! End to end: Debian's containerd 1.6 and ctr, the busybox image, the shim
//! by absolute path and by runtime name, a guest under QEMU (TCG here) or,
//! with `PULSE_TEST_BACKEND=embedded`, under the shim's own VMM (VT-x/AMD-V:
//! `make test` runs that inside the nested rig).

mod common;
#[path = "containerd/ctr_cni.rs"]
mod ctr_cni;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::net::mgmt_get;
use common::{text, Env, IMAGE};

#[test]
fn run_rm_prints_the_output_and_returns_the_exit_code() {
    let (_one, env) = start_env!();
    let out = env.run_rm(
        "rm1",
        &[],
        &[
            "sh",
            "-c",
            "echo hello from pulse; echo to-stderr >&2; exit 7",
        ],
    );
    env.assert_exit(&out, 7);
    common::assert_contains(&out.stdout, "hello from pulse");
    common::assert_contains(&out.stderr, "to-stderr");
    env.assert_no_leaks();

    // By runtime name: containerd finds containerd-shim-pulse-v2 on its PATH.
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.pulse.v2",
        IMAGE,
        "rm2",
        "cat",
        "/etc/passwd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("root:x:0:0"));
    env.assert_no_leaks();
}

/// A CPU limit (CFS bandwidth), a memory limit and CPU shares land in the container's cgroup
/// in the guest, every cgroup v2 file runc and kubelet write is there, and `--seccomp`
/// (containerd's default profile, as Kubernetes' RuntimeDefault) is loaded: filter mode, one
/// filter, as runc shows it. (What a profile refuses is the agent tests' subject.)
#[test]
fn limits_every_cgroup_controller_and_the_seccomp_profile_reach_the_guest() {
    let (_one, env) = start_env!();
    let out = env.run_rm(
        "cg1",
        &[
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "--cpu-shares",
            "512",
            "--memory-limit",
            "67108864",
            "--seccomp",
            // ctr's default spec has no cgroup mount (runc's containers see an empty
            // /sys/fs/cgroup too); kubelet's containers get this one.
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev",
        ],
        &[
            "sh",
            "-c",
            "d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); \
             echo max=$(cat $d/cpu.max) mem=$(cat $d/memory.max); \
             echo controllers=$(cat $d/cgroup.controllers); \
             for f in cpu.weight cpu.max cpuset.cpus cpuset.mems memory.high memory.swap.max \
                      pids.max io.max io.weight cpu.pressure; do \
               [ -e $d/$f ] || echo missing=$f; done; \
             grep -E '^Seccomp(_filters)?:' /proc/self/status | tr -d '\\t '; \
             echo vcpus=$(grep -c ^processor /proc/cpuinfo) \
               memtotal_mib=$(( $(sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo) / 1024 ))",
        ],
    );
    let printed = text(&out.stdout);
    env.assert_exit(&out, 0);
    assert!(printed.contains("max=50000 100000"), "{printed}");
    assert!(printed.contains("mem=67108864"), "{printed}");
    let controllers = printed
        .lines()
        .find_map(|l| l.strip_prefix("controllers="))
        .unwrap_or_default();
    for c in ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "controller {c} not delegated: {printed}"
        );
    }
    assert!(!printed.contains("missing="), "{printed}");
    assert!(printed.contains("Seccomp:2\n"), "{printed}");
    assert!(printed.contains("Seccomp_filters:1\n"), "{printed}");
    // A pod of one is sized by its own limits (pod::size_vm): the configured 1 vCPU plus the
    // half CPU's whole one (at most the host's CPUs), 256 MiB plus the 64 MiB limit.
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        printed.contains(&format!("vcpus={} ", 2.min(host_cpus))),
        "{printed}"
    );
    let memtotal: u64 = printed
        .split("memtotal_mib=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {printed}"));
    // MemTotal is the VM's memory less what the kernel keeps for itself.
    assert!(
        (256..=320).contains(&memtotal),
        "a 320 MiB VM shows {memtotal} MiB: {printed}"
    );
    env.assert_no_leaks();
}

/// `ctr --mount` of a host path.
fn bind_arg(src: &std::path::Path, dst: &str, options: &str) -> String {
    format!(
        "type=bind,src={},dst={dst},options={options}",
        src.display()
    )
}

/// Mounts below this environment's state directory, as /proc/self/mountinfo lists them.
fn share_mounts(env: &Env) -> Vec<String> {
    let state = env.state_dir();
    env.mounts()
        .into_iter()
        .filter(|m| std::path::Path::new(m).starts_with(&state))
        .collect()
}

/// `ctr run --rm` of `true` as container `id`, which must fail: what it said on stderr.
fn run_refused(env: &Env, id: &str, extra: &[&str]) -> String {
    let out = env.run_rm(id, extra, &["true"]);
    assert!(!out.status.success(), "container {id} ran");
    text(&out.stderr)
}

/// `ctr tasks exec` of `script` (`sh -c`) in container `id` as exec `exec_id`.
fn exec_script(env: &Env, id: &str, exec_id: &str, script: &str) -> std::process::Output {
    env.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        exec_id,
        id,
        "sh",
        "-c",
        script,
    ])
}

/// Runs `script` in container `id` (`sh -c`); returns (exit code, stdout + stderr).
fn exec_sh(env: &Env, id: &str, exec_id: &str, script: &str) -> (Option<i32>, String) {
    let out = exec_script(env, id, exec_id, script);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// [`exec_sh`] of a `script` that must exit 0: what it printed.
fn exec_ok(env: &Env, id: &str, exec_id: &str, script: &str) -> String {
    let (code, said) = exec_sh(env, id, exec_id, script);
    assert_eq!(code, Some(0), "{said}");
    said
}

/// A ConfigMap volume as kubelet writes it: `..data` -> a timestamped directory, `key` ->
/// `..data/key`; each update writes a new directory and swaps `..data` with a rename.
fn configmap_write(dir: &std::path::Path, generation: u32, value: &str) {
    let version = format!("..2026_12_04_{generation}");
    std::fs::create_dir_all(dir.join(&version)).unwrap();
    std::fs::write(dir.join(&version).join("key"), value).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("key").exists() {
        std::os::unix::fs::symlink("..data/key", dir.join("key")).unwrap();
    }
    if generation > 1 {
        std::fs::remove_dir_all(dir.join(format!("..2026_12_04_{}", generation - 1))).unwrap();
    }
}

/// Host paths reach the containers through the pod's virtio-fs share: a directory bind the
/// container writes and the host reads, a read-only directory bind (a write fails with EROFS),
/// a file bind (as /etc/hosts), a ConfigMap-like directory whose `..data` swap on the host is
/// seen in the container within seconds, containerd's CRI pod /dev/shm as the pod's own tmpfs
/// in the guest; a bind of a socket fails that container's create by name and leaves the pod
/// running; after a kill -9 of the shim and containerd's cleanup nothing is left (no
/// virtiofsd, no bind mount, no socket).
#[test]
fn bind_mounts_reach_the_guest_through_virtio_fs_and_leave_nothing() {
    let (_one, env) = start_env!();
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    std::fs::create_dir_all(h.join("data")).unwrap();
    std::fs::write(h.join("data/in"), "from-host\n").unwrap();
    std::fs::create_dir_all(h.join("rodir")).unwrap();
    std::fs::write(h.join("rodir/r"), "read-only\n").unwrap();
    std::fs::write(
        h.join("hosts"),
        "127.0.0.1 localhost\n10.1.2.3 pulse-test-host\n",
    )
    .unwrap();
    configmap_write(&h.join("cm"), 1, "v1");
    let shm = h.join("io.containerd.grpc.v1.cri/sandboxes/vfs1/shm");
    std::fs::create_dir_all(&shm).unwrap();
    let mounts = [
        bind_arg(&h.join("data"), "/data", "rbind:rw"),
        bind_arg(&h.join("rodir"), "/ro", "rbind:ro"),
        bind_arg(&h.join("hosts"), "/etc/hosts", "rbind:ro"),
        bind_arg(&h.join("cm"), "/cm", "rbind:ro"),
        bind_arg(&shm, "/dev/shm", "rbind:rw"),
    ];
    let pod = common::pod_options("sandbox", "vfs1");
    let mut extra = pod.each_ref().map(String::as_str).to_vec();
    for m in &mounts {
        extra.extend_from_slice(&["--mount", m]);
    }
    env.run_detached("vfs1", &extra, &["sleep", "1000"]);
    let procs = env.pod_processes();
    assert!(
        procs.iter().any(|(_, c)| c.contains("virtiofsd")),
        "no virtiofsd: {procs:?}"
    );
    assert!(
        share_mounts(&env).len() >= 4,
        "the binds are in the pod's share: {:?}",
        share_mounts(&env)
    );

    // A read-write directory: the container reads the host's file, the host reads the
    // container's.
    let in_vfs1 = |exec_id: &str, script: &str| exec_ok(&env, "vfs1", exec_id, script);
    let said = in_vfs1("rw", "cat /data/in && echo from-guest > /data/out && sync");
    assert!(said.contains("from-host"), "{said}");
    assert_eq!(
        std::fs::read_to_string(h.join("data/out")).unwrap(),
        "from-guest\n"
    );
    // A read-only directory: readable, a write fails with EROFS.
    let (code, said) = exec_sh(&env, "vfs1", "ro", "cat /ro/r; echo x > /ro/w");
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("read-only") && said.contains("Read-only file system"),
        "{said}"
    );
    assert!(!h.join("rodir/w").exists());
    // A file, as containerd binds /etc/hosts.
    let said = in_vfs1("hosts", "cat /etc/hosts");
    assert!(said.contains("10.1.2.3 pulse-test-host"), "{said}");
    // The pod's /dev/shm is a tmpfs in the guest, not the host's directory.
    let said = in_vfs1(
        "shm",
        "echo s > /dev/shm/x && grep ' /dev/shm ' /proc/mounts",
    );
    assert!(said.contains("tmpfs"), "{said}");
    assert!(
        common::list_dir(&shm).is_empty(),
        "the guest's shm reached the host"
    );
    // A ConfigMap update: the new value shows within a few seconds.
    let (_, said) = exec_sh(&env, "vfs1", "cm1", "cat /cm/key");
    assert_eq!(said.trim(), "v1");
    configmap_write(&h.join("cm"), 2, "v2");
    let swapped = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (_, said) = exec_sh(&env, "vfs1", &format!("cm-{n}"), "cat /cm/key");
        if said.trim() == "v2" {
            break;
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(5),
            "the ConfigMap update did not reach the container in 5 s: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "ConfigMap update seen after {:?} ({n} reads)",
        swapped.elapsed()
    );

    // A file the host rewrites in place (same inode, as a hostPath file or /etc/hosts is): the
    // container reads the new text within a few seconds (the guest re-validates what it cached).
    std::fs::write(h.join("data/in"), "rewritten on the host, longer\n").unwrap();
    let rewritten = Instant::now();
    loop {
        n += 1;
        let (_, said) = exec_sh(&env, "vfs1", &format!("in-{n}"), "cat /data/in");
        if said.contains("rewritten on the host, longer") {
            break;
        }
        assert!(
            rewritten.elapsed() < Duration::from_secs(5),
            "the host's rewrite did not reach the container in 5 s: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("in-place rewrite seen after {:?}", rewritten.elapsed());

    // A second container of the pod shares the pod's /dev/shm (and binds the same file).
    let shm_mount = bind_arg(&shm, "/dev/shm", "rbind:rw");
    let hosts_mount = bind_arg(&h.join("hosts"), "/etc/hosts", "rbind:ro");
    let member = common::pod_options("container", "vfs1");
    let mut extra = member.each_ref().map(String::as_str).to_vec();
    extra.extend_from_slice(&["--mount", &shm_mount, "--mount", &hosts_mount]);
    let out = env.run_rm(
        "vfs-shm",
        &extra,
        &["sh", "-c", "cat /dev/shm/x /etc/hosts"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("s\n127.0.0.1 localhost"),
        "{}",
        text(&out.stdout)
    );
    let _ = env.ctr(&["containers", "delete", "vfs-shm"]);
    assert!(
        !share_mounts(&env).iter().any(|m| m.contains("vfs-shm")),
        "the second container's binds went with it: {:?}",
        share_mounts(&env)
    );

    // A socket cannot be shared: this container's create fails by name, the pod goes on.
    let sock = h.join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let before = share_mounts(&env);
    let sock_mount = bind_arg(&sock, "/run/agent.sock", "rbind:rw");
    let mut extra = member.each_ref().map(String::as_str).to_vec();
    extra.extend_from_slice(&["--mount", &sock_mount]);
    let out = env.run_rm("vfs-sock", &extra, &["true"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "mount /run/agent.sock: the host path {} cannot reach the VM: it is a socket",
            sock.display()
        )),
        "{err}"
    );
    let _ = env.ctr(&["containers", "delete", "vfs-sock"]);
    assert_eq!(share_mounts(&env), before, "the failed create left binds");
    let (code, said) = exec_sh(&env, "vfs1", "after", "cat /data/out");
    assert_eq!(code, Some(0), "the pod still runs: {said}");

    // kill -9 of the shim: containerd's `delete` removes what it left.
    env.kill_9_the_shim();
    env.delete_after_its_shim("vfs1");
    env.assert_no_leaks();
    assert!(share_mounts(&env).is_empty());
    // The host's files are intact.
    assert_eq!(
        std::fs::read_to_string(h.join("data/out")).unwrap(),
        "from-guest\n"
    );
    assert!(h.join("rodir/r").exists() && h.join("cm/..data").exists());
}

/// A pod whose container binds a host file ends cleanly through `ctr run --rm`: the binds, the
/// share, virtiofsd and its socket go with the container and the pod.
#[test]
fn a_file_bind_goes_with_its_pod() {
    let (_one, env) = start_env!();
    let host = tempfile::tempdir().unwrap();
    let hosts = host.path().join("hosts");
    std::fs::write(&hosts, "10.9.8.7 bound-by-pulse\n").unwrap();
    let mount = bind_arg(&hosts, "/etc/hosts", "rbind:ro");
    let out = env.run_rm("vfs2", &["--mount", &mount], &["cat", "/etc/hosts"]);
    env.assert_exit(&out, 0);
    common::assert_contains(&out.stdout, "10.9.8.7 bound-by-pulse");
    env.assert_no_leaks();
    assert!(share_mounts(&env).is_empty());
    assert!(hosts.exists());
}

#[test]
fn detached_container_exec_tty_kill_delete() {
    let (_one, env) = start_env!();
    env.run_sleeping("d1");

    let out = exec_script(&env, "d1", "e1", "echo exec-out; exit 4");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("exec-out"));

    // A terminal: ctr needs one itself, script(1) gives it a pty.
    let ctr_line = format!(
        "ctr --address {} --namespace {} tasks exec -t --exec-id e2 d1 tty",
        env.sock().display(),
        common::NS
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &ctr_line, "/dev/null"])
        .stdin(Stdio::null());
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "tty said: {:?} {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let out = env.ctr(&["tasks", "ps", "d1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    env.kill_and_delete("d1");
    env.assert_no_leaks();
}

#[test]
fn a_two_container_pod_shares_one_shim_and_one_vm() {
    let (_one, env) = start_env!();
    for (id, kind) in [("pod1", "sandbox"), ("app1", "container")] {
        let pod = common::pod_options(kind, "pod1");
        env.run_detached(id, &pod.each_ref().map(String::as_str), &["sleep", "1000"]);
    }

    let procs = env.pod_processes();
    let count = |what: &str| procs.iter().filter(|(_, c)| c.contains(what)).count();
    let shims = procs.iter().filter(|(_, c)| common::is_shim(c)).count();
    assert_eq!(shims, 1, "{procs:?}");
    let qemus = if common::embedded() { 0 } else { 1 };
    assert_eq!(count("qemu-system"), qemus, "{procs:?}");
    // Both see the same guest: the VM's hostname is the pod's id.
    let out = env.ctr(&["tasks", "exec", "--exec-id", "h", "app1", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "pod1", "{}", text(&out.stderr));

    for id in ["app1", "pod1"] {
        env.kill_and_delete(id);
    }
    env.assert_no_leaks();
}

/// `ctr events` of a test's containerd, written to a file.
struct Events {
    ctr: std::process::Child,
    file: std::path::PathBuf,
}

impl Events {
    fn record(env: &Env) -> Events {
        let file = env.dir.path().join("events.txt");
        let mut ctr = env.ctr_cmd(&["events"]);
        ctr.stdout(std::fs::File::create(&file).unwrap())
            .stderr(Stdio::null());
        let ctr = ctr.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Events { ctr, file }
    }

    /// Waits up to 20 s until every one of `wanted` was seen, then stops `ctr events`; what
    /// it saw.
    fn until(mut self, wanted: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let seen = loop {
            let seen = std::fs::read_to_string(&self.file).unwrap_or_default();
            if wanted.iter().all(|w| seen.contains(w)) || Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = self.ctr.kill();
        let _ = self.ctr.wait();
        seen
    }
}

#[test]
fn ctr_events_shows_the_task_events() {
    let (_one, env) = start_env!();
    let events = Events::record(&env);

    env.run_sleeping("ev1");
    let out = env.ctr(&["tasks", "exec", "--exec-id", "x", "ev1", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.ctr(&["tasks", "kill", "--signal", "SIGKILL", "ev1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.wait_status("ev1", "STOPPED");
    let out = env.ctr(&["tasks", "delete", "ev1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let wanted = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let seen = events.until(&wanted);
    for w in wanted {
        assert!(seen.contains(w), "no {w} in:\n{seen}");
    }
    let _ = env.ctr(&["containers", "delete", "ev1"]);
    env.assert_no_leaks();
}

#[test]
fn kill_9_of_the_shim_then_delete_leaves_nothing() {
    let (_one, env) = start_env!();
    env.run_sleeping("k1");
    env.assert_private("k1");
    // The VM's processes run in the pod's cgroup, not in containerd's.
    if let Some(cgroups) = env.cgroup_dir() {
        let pod_cgroup = cgroups.join(common::NS).join("k1");
        let members = std::fs::read_to_string(pod_cgroup.join("cgroup.procs")).unwrap();
        let vm: Vec<(u32, String)> = env
            .pod_processes()
            .into_iter()
            .filter(|(_, c)| {
                // The pod's network namespace holder (`ctr run`: the pod's own namespace).
                c.contains(common::NETNS_HOLDER)
                    || if common::embedded() {
                        // The VMM is the shim itself; virtiofsd and its sandboxed child.
                        c.contains("containerd-shim-pulse-v2") || c.contains("virtiofsd")
                    } else {
                        c.contains("qemu-system")
                            || c.contains("vhost-device-vsock")
                            || c.contains("virtiofsd")
                    }
            })
            .collect();
        // qemu: QEMU, vhost-device-vsock, virtiofsd and its sandboxed child; the holder.
        assert_eq!(vm.len(), if common::embedded() { 4 } else { 5 }, "{vm:?}");
        for (pid, cmd) in &vm {
            assert!(
                members.lines().any(|l| l.trim() == pid.to_string()),
                "{cmd} ({pid}) is not in {}: {members}",
                pod_cgroup.display()
            );
        }
    }
    env.kill_9_the_shim();
    // containerd notices the dead shim and runs `containerd-shim-pulse-v2 delete`.
    env.delete_after_its_shim("k1");
    env.assert_no_leaks();
}

#[test]
fn a_guest_that_never_answers_is_a_clear_error_and_leaves_nothing() {
    let (_one, env) = start_env!();
    // The agent serves a unix socket inside the guest instead of vsock (the
    // later PULSE_AGENT_LISTEN= replaces the shim's in init's environment):
    // it never announces itself and never answers.
    // Long enough for the agent to start and say why it will not announce itself: the
    // embedded backend in the nested rig boots under two levels of emulation.
    let limit = if common::embedded() { 20 } else { 5 };
    env.write_config(
        "kernel_params = \"PULSE_AGENT_LISTEN=unix:///run/nowhere.sock\"",
        &format!("connect_timeout_ms = {}", limit * 1000),
    );
    let started = Instant::now();
    let err = run_refused(&env, "silent", &[]);
    assert!(
        err.contains("the guest agent did not announce itself")
            && err.contains(&format!("within {limit}s")),
        "{err}"
    );
    assert!(
        err.contains("--ready-port is for vsock only"),
        "the agent ran, on the unix socket: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    env.assert_no_leaks();
}

#[test]
fn a_missing_kernel_and_a_broken_config_are_clear_errors() {
    let (_one, env) = start_env!();
    let text_config = std::fs::read_to_string(env.config_path()).unwrap();
    let (kernel, _) = common::guest_image().unwrap();
    std::fs::write(
        env.config_path(),
        text_config.replace(&format!("{kernel:?}"), "\"/nonexistent/vmlinux\""),
    )
    .unwrap();
    let err = run_refused(&env, "nokernel", &[]);
    assert!(
        err.contains("vm.kernel") && err.contains("/nonexistent/vmlinux"),
        "{err}"
    );
    env.assert_no_leaks();

    std::fs::write(env.config_path(), "[vm]\nvcpus = \"two\"\n").unwrap();
    let err = run_refused(&env, "badconfig", &[]);
    assert!(
        err.contains("pulse.toml") && err.contains("line 2"),
        "{err}"
    );
    env.assert_no_leaks();
}

/// Checks the Prometheus text exposition format, line by line; returns the
/// samples as (name, labels, value).
/// One Prometheus sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    let is_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap();
            let name = words
                .next()
                .unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(is_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = words.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
                assert!(typed.insert(name.to_string()), "two TYPE lines for {name}");
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(is_name(key), "bad label name {key:?} in {line:?}");
                    // The value runs to the next unescaped quote.
                    let mut end = None;
                    let mut escaped = false;
                    for (i, c) in after.char_indices() {
                        match (c, escaped) {
                            ('\\', false) => escaped = true,
                            ('"', false) => {
                                end = Some(i);
                                break;
                            }
                            _ => escaped = false,
                        }
                    }
                    let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                    labels.push((key.to_string(), after[..end].to_string()));
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        assert!(
            typed.contains(name),
            "{name} has no TYPE line before its samples"
        );
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `ctr tasks metrics --format json`, parsed.
fn task_metrics(env: &Env, id: &str) -> serde_json::Value {
    let out = env.ctr(&["tasks", "metrics", "--format", "json", id]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        env.log()
            .lines()
            .filter(|l| l.contains("metrics") || l.contains("stats"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// containerd's task API on the pod's shim socket: Update with an OCI
/// LinuxResources (ctr 1.6 has no `tasks update`).
fn update_memory_limit(env: &Env, id: &str, bytes: u64) {
    let bundle = env
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(common::NS)
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).expect("the shim's address");
    let resources = serde_json::json!({ "memory": { "limit": bytes } });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use containerd_shim_protos::api::UpdateTaskRequest;
        use containerd_shim_protos::protobuf::well_known_types::any::Any;
        use containerd_shim_protos::protobuf::MessageField;
        let client = ttrpc::r#async::Client::connect(address.trim())
            .await
            .expect("connect");
        let task = containerd_shim_protos::shim_async::TaskClient::new(client);
        let req = UpdateTaskRequest {
            id: id.into(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
                ..Default::default()
            }),
            ..Default::default()
        };
        task.update(ttrpc::context::with_timeout(30_000_000_000), &req)
            .await
            .expect("Update");
    });
}

/// Seconds since the Unix epoch on the host.
fn host_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The container's wall clock and a new file's mtime against the host's clock: a guest that
/// kept 1970, or fell behind, is off by years or by minutes. 2 s of slack for rounding and the
/// trip.
fn assert_guest_clock_is_the_hosts(env: &Env, id: &str, exec_id: &str) {
    let before = host_now();
    let script = "touch /tmp/clock && date -u +%s && stat -c %Y /tmp/clock";
    let out = exec_script(env, id, exec_id, script);
    let after = host_now();
    let printed = text(&out.stdout);
    let times: Vec<u64> = printed
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(times.len(), 2, "{printed}{}", text(&out.stderr));
    for t in times {
        assert!(
            t + 2 >= before && t <= after + 2,
            "the guest says {t}, the host's clock went from {before} to {after}"
        );
    }
}

#[test]
fn pause_resume_metrics_update_and_the_management_socket() {
    let (_one, env) = start_env!();
    env.run_sleeping("pm1");
    assert_guest_clock_is_the_hosts(&env, "pm1", "clock-at-start");

    // Pause freezes the container's cgroup in the guest; resume thaws it.
    let out = env.ctr(&["tasks", "pause", "pm1"]);
    assert!(out.status.success(), "pause: {}", text(&out.stderr));
    env.wait_status("pm1", "PAUSED");
    let out = env.ctr(&["tasks", "exec", "--exec-id", "p", "pm1", "true"]);
    assert!(
        !out.status.success(),
        "exec into a paused container must fail"
    );
    // Paused for a while: the guest's clock must not stop with the container.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = env.ctr(&["tasks", "resume", "pm1"]);
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    env.wait_status("pm1", "RUNNING");
    let out = env.ctr(&["tasks", "exec", "--exec-id", "r", "pm1", "echo", "thawed"]);
    assert_eq!(text(&out.stdout).trim(), "thawed", "{}", text(&out.stderr));
    assert_guest_clock_is_the_hosts(&env, "pm1", "clock-after-resume");

    // Stats: cgroup v2 metrics from the guest.
    let m = task_metrics(&env, "pm1");
    assert!(m["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{m}");
    assert!(m["memory"]["usage"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["cpu"].is_object(), "{m}");
    let table = env.ctr(&["tasks", "metrics", "pm1"]);
    assert!(
        text(&table.stdout).contains("memory.usage"),
        "{}",
        text(&table.stdout)
    );

    // Update: a memory limit, seen in the next stats.
    update_memory_limit(&env, "pm1", 48 << 20);
    let m = task_metrics(&env, "pm1");
    assert_eq!(m["memory"]["usage_limit"].as_u64(), Some(48 << 20), "{m}");

    // The management socket: /metrics (Prometheus text), /report (JSON, both views).
    let socket = env.state_dir().join(common::NS).join("pm1/mgmt.sock");
    let (status, body) = mgmt_get(&socket, "/metrics");
    assert!(status.contains("200"), "{status}: {body}");
    let samples = parse_prometheus(&body);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert_eq!(value("pulse_guest_report_up"), 1.0, "{body}");
    assert_eq!(value("pulse_host_vcpus"), 1.0);
    let guest_irqs: Vec<_> = samples
        .iter()
        .filter(|(n, _, _)| n == "pulse_guest_interrupts_total")
        .collect();
    // One series per vector and queue: under QEMU (no MSI) each device has its legacy line,
    // under the embedded VMM each queue its MSI.
    assert!(guest_irqs.len() >= 5, "vsock + 4 block slots:\n{body}");
    for (_, labels, _) in &guest_irqs {
        for key in ["device", "vector", "queue", "role", "irq"] {
            assert!(label(labels, key).is_some(), "{key} missing in {labels:?}");
        }
    }
    assert!(
        guest_irqs
            .iter()
            .any(|(_, l, v)| *v > 0.0 && label(l, "device").is_some()),
        "no interrupt counted:\n{body}"
    );
    let queues: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| n == "pulse_host_device_queues" && label(l, "kind") == Some("block"))
        .collect();
    assert_eq!(queues.len(), 4, "{body}");

    let (status, body) = mgmt_get(&socket, "/report");
    assert!(status.contains("200"), "{status}: {body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(report["sandbox"], "pm1");
    assert_eq!(report["host"]["backend"], common::backend());
    // vsock, 4 block slots and the virtio-fs share (devices.shared_fs).
    let devices = 6;
    assert_eq!(
        report["host"]["devices"].as_array().map(Vec::len),
        Some(devices),
        "{body}"
    );
    let guest_devices = report["guest"]["devices"]
        .as_array()
        .expect("guest devices");
    assert_eq!(guest_devices.len(), devices, "{body}");
    assert!(report["mismatches"].is_array(), "{body}");
    if common::embedded() {
        // The mission in one report: every device's queues on their own MSI, offered by the
        // VMM and in effect in the guest's driver, and the two views agree.
        assert_eq!(report["mismatches"], serde_json::json!([]), "{body}");
        for d in report["host"]["devices"].as_array().unwrap() {
            assert_eq!(d["msi"], true, "host device {d}");
            assert!(!d["interrupts"].as_array().unwrap().is_empty(), "{d}");
        }
        for d in guest_devices {
            assert_eq!(d["msiEnabled"], true, "guest device {d}");
        }
    }
    assert!(report.get("guest_error").is_none(), "{body}");
    let (status, _) = mgmt_get(&socket, "/nope");
    assert!(status.contains("404"), "{status}");

    env.kill_and_delete("pm1");
    env.assert_no_leaks();
}

#[test]
fn an_oom_kill_in_the_guest_is_an_oom_event_and_exit_137() {
    let (_one, env) = start_env!();
    let events = Events::record(&env);

    // dd allocates its 128 MiB block buffer and fills it from /dev/zero; the
    // container may use 32 MiB. (A 256 MiB buffer is refused by malloc in a
    // 256 MiB guest, before the cgroup limit matters: "dd: out of memory".)
    let out = env.run_rm(
        "oom1",
        &["--memory-limit", &(32u64 << 20).to_string()],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
    );
    env.assert_exit(&out, 137);
    let seen = events.until(&["/tasks/oom"]);
    let oom = seen
        .lines()
        .find(|l| l.contains("/tasks/oom"))
        .unwrap_or_else(|| panic!("no /tasks/oom in:\n{seen}"));
    assert!(oom.contains("oom1"), "{oom}");
    env.assert_no_leaks();
}

/// A guest kernel that panics under a running container (here a system-wide OOM with
/// `vm.panic_on_oom`, so the guest reboots and the VM stops) answers nothing, not even an
/// error: the shim sees its VM stop, the container is reported stopped (255) at once instead of
/// running for ever, the shim's log says why with the console's last lines, and the task and
/// its pod are deleted as usual, leaving nothing.
#[test]
fn a_guest_kernel_panic_stops_the_pods_tasks_and_says_why() {
    let (_one, env) = start_env!();
    env.write_config("kernel_params = \"sysctl.vm.panic_on_oom=1\"", "");
    env.run_sleeping("panic1");
    // No memory limit: busybox's tail keeps its one endless line of /dev/zero until the
    // guest has no memory left.
    let hog = exec_script(&env, "panic1", "hog", "tail /dev/zero");
    assert!(!hog.status.success(), "the hog ended well: {hog:?}");
    env.wait_status("panic1", "STOPPED");
    // The shim looks at its VM every 250 ms (the qemu backend's calls may end first: its
    // vsock socket closes with QEMU).
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let log = env.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("the VM stopped under the pod"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the shim did not say the VM stopped:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("{said}");
    assert!(
        said.contains("the guest kernel said: ")
            && said.contains("Kernel panic - not syncing: Out of memory"),
        "{said}"
    );
    assert!(said.contains("the guest console ends with"), "{said}");
    env.ctr_ok(&["tasks", "delete", "panic1"]);
    env.ctr_ok(&["containers", "delete", "panic1"]);
    env.assert_no_leaks();
}

#[test]
fn sigterm_to_the_shim_stops_the_pod_and_the_shim_exits() {
    let (_one, env) = start_env!();
    env.run_sleeping("t1");
    let pid = env.the_shim();
    let sandbox = env.state_dir().join(common::NS).join("t1");
    assert!(sandbox.join("mgmt.sock").exists());
    let started = Instant::now();
    common::send_signal(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // The shim exits by itself, having stopped the VM and removed its files.
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the shim still runs 30 s after SIGTERM\n{}",
            env.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the shim exited {:?} after SIGTERM", started.elapsed());
    assert!(!sandbox.exists(), "{} is left", sandbox.display());
    let vm: Vec<_> = env
        .pod_processes()
        .into_iter()
        .filter(|(_, c)| !common::is_shim(c))
        .collect();
    assert!(vm.is_empty(), "VM processes left: {vm:?}");
    assert!(
        env.log().contains("SIGTERM: stopping the pod"),
        "the shim logged no clean stop:\n{}",
        env.log()
    );
    env.delete_after_its_shim("t1");
    env.assert_no_leaks();
}

#[test]
fn a_pod_with_net_queues_gets_a_multi_queue_nic_on_its_own_tap_and_the_tap_goes() {
    let (_one, env) = start_env!();
    // Two vCPUs: the guest driver enables min(queue pairs, CPUs) pairs, and QEMU
    // detaches the tap queues the guest does not use.
    // And a virtio-console: QEMU writes it into a pipe it inherits as fd 3.
    env.write_config(
        "vcpus = 2\n[devices]\nnet_queues = 2\nvirtio_console = true",
        "",
    );
    env.run_sleeping("net1");
    // `ctr run` without --cni: the pod's own network namespace, held by the process whose
    // pid containerd sees (docs/networking.md); the NIC's tap is there, never on the host.
    let tap = "tap0_pulse";
    assert!(!std::path::Path::new("/sys/class/net").join(tap).exists());
    let holder = ctr_cni::task_pid(&env, "net1");
    let holder_ns = format!("/proc/{holder}/ns/net");
    env.assert_private("net1");
    let hvc = env.state_dir().join(common::NS).join("net1/hvc0.log");
    assert!(hvc.is_file(), "the shim's capped copy of hvc0");
    let queues = netns_sh(&holder_ns, &format!("ls /sys/class/net/{tap}/queues"));
    assert_eq!(
        queues
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .count(),
        2,
        "{queues}"
    );

    let socket = env.state_dir().join(common::NS).join("net1/mgmt.sock");
    let (_, body) = mgmt_get(&socket, "/report");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let host_net = common::net::host_devices(&report, "net");
    assert_eq!(host_net.len(), 1, "{body}");
    assert_eq!(host_net[0]["id"], tap);
    assert_eq!(host_net[0]["queues"], 4);
    let guest_net: Vec<_> = report["guest"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d.to_string().contains("\"net\""))
        .collect();
    assert_eq!(guest_net.len(), 1, "the guest sees one virtio-net: {body}");
    let mismatches = report["mismatches"].to_string();
    assert!(!mismatches.contains("net:"), "{mismatches}");
    // Nothing was added to the namespace: the guest's NIC stays down.
    let (code, out) = exec_sh(&env, "net1", "link", "cat /sys/class/net/eth0/operstate");
    assert_eq!((code, out.trim()), (Some(0), "down"), "{out}");

    env.kill_and_delete("net1");
    // The holder is one of the pod's processes: gone with its namespace and the tap.
    env.assert_no_leaks();
    assert!(
        !std::path::Path::new(&holder_ns).exists(),
        "the holder {holder} is left"
    );
}

/// `script` run by `sh` in network namespace `netns`, with a sysfs of that namespace.
fn netns_sh(netns: &str, script: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["unshare", "--mount", "sh", "-c"])
        .arg(format!("mount -t sysfs sysfs /sys && {script}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `ctr run --net-host` with pod networking on (docs/networking.md): a VM cannot share the
/// host's network, so the container is refused by name and nothing is left.
#[test]
fn a_host_network_container_is_refused_when_pod_networking_is_on() {
    let (_one, env) = start_env!();
    env.write_config("[devices]\nnet_queues = 1", "");
    let err = run_refused(&env, "hostnet1", &["--net-host"]);
    assert!(
        err.contains("it asks for the host's network, which a VM cannot share"),
        "{err}"
    );
    env.assert_no_leaks();
}

#[test]
fn the_embedded_backend_without_vt_x_is_a_clear_error_through_containerd() {
    require_env!();
    if pulse_shim::hypervisor::host_has_hw_virt() {
        eprintln!("SKIPPED: this host has VT-x/AMD-V: the embedded VM would boot Linux");
        return;
    }
    let _one = common::serial();
    let env = Env::start();
    env.write_config("[devices]\nnet_queues = 1", "connect_timeout_ms = 3000");
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        config.replace("backend = \"qemu\"", "backend = \"embedded\""),
    )
    .unwrap();
    let tap = pulse_shim::hypervisor::SandboxPaths::new(&env.state_dir(), common::NS, "emb1")
        .unwrap()
        .tap_name();
    let started = Instant::now();
    let err = run_refused(&env, "emb1", &[]);
    let took = started.elapsed();
    assert!(
        err.contains("starting the embedded VM")
            || err.contains("guest agent did not announce itself"),
        "{err}"
    );
    assert!(err.contains("guest agent"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    env.assert_no_leaks();
    assert!(!std::path::Path::new("/sys/class/net").join(&tap).exists());
}

/// Status, exec and kill, again and again on one pod: every call into the shim answers. (On the
/// embedded backend in the nested rig a second status call or the kill after it once never
/// returned: a Linux vsock driver that refills its receive ring without a doorbell, and a
/// device that never asked for one.)
#[test]
fn status_exec_and_kill_answer_again_and_again_on_one_pod() {
    let (_one, env) = start_env!();
    env.run_sleeping("rep1");
    let socket = env.state_dir().join(common::NS).join("rep1/mgmt.sock");
    for round in 0..6 {
        let (status, body) = mgmt_get(&socket, "/report");
        assert!(status.contains("200"), "round {round}: {status}: {body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert!(report.get("guest_error").is_none(), "round {round}: {body}");
        assert_eq!(
            report["mismatches"],
            serde_json::json!([]),
            "round {round}: {body}"
        );
        let (status, body) = mgmt_get(&socket, "/metrics");
        assert!(status.contains("200"), "round {round}: {status}: {body}");
        let id = format!("x{round}");
        let out = env.ctr(&["tasks", "exec", "--exec-id", &id, "rep1", "echo", &id]);
        assert_eq!(
            text(&out.stdout).trim(),
            id,
            "round {round}: {}",
            text(&out.stderr)
        );
    }
    env.kill_and_delete("rep1");
    env.assert_no_leaks();
}
