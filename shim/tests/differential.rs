//! The differential suite: the same OCI case run by runc (containerd's `io.containerd.runc.v2`
//! and Debian's runc) and by Pulse (`io.containerd.pulse.v2`), through the same private
//! containerd and the same `ctr run --rm`, and the two outcomes (exit code, stdout, stderr)
//! compared after a small, explicit normalisation ([`normalise`]: the container id, and a
//! terminal's `\r\n`).
//!
//! A case is `ctr run` flags and a command for the busybox image, or, for what ctr 1.6 has no
//! flag for (user, hostname, rlimits, pids), an edit of ctr's default spec run with
//! `ctr run --config` on an unpacked busybox tree. The cases come in areas, one test each; every
//! Pulse case of an area is a container of one pod (one VM, booted once): a sandbox container
//! started first, the cases joined to it by the CRI annotations.
//!
//! Where Pulse differs from runc by design (the VM's own kernel, memory and CPUs, what Pulse
//! cannot carry into the VM yet) the case lists the difference ([`Expected`], with why); the
//! report prints every one with both sides, and nothing else may differ.
//! `docs/oci-support.md` lists the same differences.
//!
//! `PULSE_DIFF_CASES=name,name` runs only those cases; `PULSE_DIFF_VERBOSE=1` prints what both
//! printed for the cases that agree too.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{text, Env, IMAGE};
use serde_json::{json, Value};

const POD: &str = "diffpod";
const RUNC: &str = "io.containerd.runc.v2";
const PULSE: &str = "io.containerd.pulse.v2";
/// The longest a case may take under one runtime.
const CASE_LIMIT: Duration = Duration::from_secs(180);

/// What may differ in a case, and why. Each is printed with both sides when the suite runs.
#[derive(Clone, Copy)]
enum Diff {
    /// Lines (of stdout or stderr) that contain this text are not compared.
    Lines(&'static str),
    /// This text is taken out of both stdouts before they are compared.
    Text(&'static str),
    /// The whole stdout is not compared.
    Stdout,
    /// stdout has the same lines, in an order that may differ.
    LineOrder,
    /// runc runs the case; Pulse fails the create, naming what it cannot do with this text.
    /// (No case expects it since bind mounts reach the guest through virtio-fs.)
    #[allow(dead_code)]
    PulseFails(&'static str),
    /// Both refuse the case with the same exit status; the error text is each runtime's own, and
    /// Pulse's names the cause with this text.
    ErrorText(&'static str),
}

#[derive(Clone, Copy)]
struct Expected {
    diff: Diff,
    why: &'static str,
}

type SpecEdit = fn(&mut Value);

#[derive(Clone)]
struct Case {
    name: &'static str,
    /// `ctr run` flags.
    flags: Vec<String>,
    /// Run with `ctr run --config`: ctr's default spec, the busybox tree as root, `cmd` as the
    /// process, then this edit.
    spec: Option<SpecEdit>,
    cmd: Vec<String>,
    stdin: Option<Vec<u8>>,
    /// `ctr run -t` inside script(1), which gives ctr the terminal it needs.
    tty: bool,
    /// Signals sent with `ctr tasks kill` once stdout shows `ready`, 2 s apart.
    kill: Vec<&'static str>,
    /// `ctr tasks exec` flags: the case runs `cmd` as an exec in a container that runs
    /// `sleep` (started with `flags` or `spec`), not as the container's process.
    exec: Option<Vec<String>>,
    expected: Vec<Expected>,
}

fn case(name: &'static str, cmd: &[&str]) -> Case {
    Case {
        name,
        flags: Vec::new(),
        spec: None,
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        tty: false,
        kill: Vec::new(),
        exec: None,
        expected: Vec::new(),
    }
}

/// A case whose command is a shell script.
fn sh(name: &'static str, script: &str) -> Case {
    case(name, &["sh", "-c", script])
}

impl Case {
    fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|s| s.to_string()));
        self
    }
    fn spec(mut self, edit: SpecEdit) -> Self {
        self.spec = Some(edit);
        self
    }
    fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }
    fn tty(mut self) -> Self {
        self.tty = true;
        self
    }
    fn kill(mut self, signals: &[&'static str]) -> Self {
        self.kill = signals.to_vec();
        self
    }
    fn exec(mut self, flags: &[&str]) -> Self {
        self.exec = Some(flags.iter().map(|s| s.to_string()).collect());
        self
    }
    fn differs(mut self, diff: Diff, why: &'static str) -> Self {
        self.expected.push(Expected { diff, why });
        self
    }
}

/// The container's cgroup limits in cgroup v2 terms, read from either version: runc here runs on
/// the host's hierarchy (v1 on these machines, v2 in the nested rig's L1), Pulse on the guest's
/// (v2). `cpu.weight` on v1 is runc's conversion of `cpu.shares`. Needs the cgroup mount
/// ([`CGROUP_MOUNT`]).
const CGROUP_PROBE: &str = r#"
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
  [ -e "$d/cgroup.procs" ] || d=/sys/fs/cgroup
  echo "memory.max $(cat $d/memory.max)"
  echo "cpu.max $(cat $d/cpu.max)"
  echo "cpu.weight $(cat $d/cpu.weight)"
  echo "pids.max $(cat $d/pids.max)"
else
  m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
  [ "$m" = 9223372036854771712 ] && m=max
  echo "memory.max $m"
  q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
  [ "$q" = -1 ] && q=max
  echo "cpu.max $q $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
  s=$(cat /sys/fs/cgroup/cpu/cpu.shares)
  echo "cpu.weight $((1 + ((s - 2) * 9999) / 262142))"
  echo "pids.max $(cat /sys/fs/cgroup/pids/pids.max)"
fi
"#;

/// ctr's default spec mounts no cgroup filesystem: the cgroup cases ask for one, as CRI does.
const CGROUP_MOUNT: &str =
    "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev";

fn spec_user_1000(spec: &mut Value) {
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000]});
}

fn spec_umask_077(spec: &mut Value) {
    spec["process"]["user"] = json!({"uid": 0, "gid": 0, "umask": 0o077});
}

fn spec_user_1000_missing_cwd(spec: &mut Value) {
    spec_user_1000(spec);
    spec["process"]["cwd"] = json!("/home/app/work");
}

fn spec_env_duplicates(spec: &mut Value) {
    spec["process"]["env"] = json!(["PATH=/bin", "A=1", "B=2", "A=3", "C=4"]);
}

fn spec_env_without_equals(spec: &mut Value) {
    spec["process"]["env"] = json!(["PATH=/bin", "FOO"]);
}

fn spec_env_without_path(spec: &mut Value) {
    spec["process"]["env"] = json!(["A=1"]);
}

fn spec_env_empty_name(spec: &mut Value) {
    spec["process"]["env"] = json!(["PATH=/bin", "=x"]);
}

fn spec_hostname(spec: &mut Value) {
    spec["hostname"] = json!("diff-host");
}

fn spec_rlimits(spec: &mut Value) {
    spec["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 8192},
        {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 1048576},
        {"type": "RLIMIT_MEMLOCK", "soft": 65536, "hard": 65536},
        {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 16777216},
        {"type": "RLIMIT_SIGPENDING", "soft": 500, "hard": 600},
        {"type": "RLIMIT_MSGQUEUE", "soft": 4096, "hard": 8192},
        {"type": "RLIMIT_NICE", "soft": 0, "hard": 0},
        {"type": "RLIMIT_CPU", "soft": 1000, "hard": 2000}
    ]);
}

fn spec_pids_limit(spec: &mut Value) {
    spec["linux"]["resources"]["pids"] = json!({"limit": 42});
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
        "options": ["ro", "nosuid", "noexec", "nodev"]
    }));
}

/// Exit codes, signals and stdio.
fn process_cases() -> Vec<Case> {
    vec![
        case("exit-0", &["true"]),
        case("exit-1", &["false"]),
        sh("exit-3", "exit 3"),
        sh("exit-255", "exit 255"),
        sh(
            "child-killed-by-sigterm",
            r#"sh -c 'kill -TERM $$'; echo child=$?"#,
        ),
        sh(
            "child-killed-by-sigkill",
            r#"sh -c 'kill -KILL $$'; echo child=$?"#,
        ),
        sh(
            "sigpipe-is-default",
            "(yes; echo yes-exit=$? >&2) | head -n 1",
        ),
        // PID 1 of a PID namespace gets no signal it has no handler for (SIGKILL aside).
        sh(
            "pid1-ignores-sigterm-then-sigkill",
            "echo ready; exec sleep 1000",
        )
        .kill(&["SIGTERM", "SIGKILL"]),
        sh(
            "pid1-traps-sigterm",
            r#"trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 1; done"#,
        )
        .kill(&["SIGTERM"]),
        case(
            "signal-state-of-pid1",
            &["grep", "-E", "^Sig(Blk|Ign|Cgt)", "/proc/self/status"],
        ),
        sh(
            "signal-state-under-sh",
            "grep -E '^Sig(Blk|Ign|Cgt)' /proc/self/status",
        ),
        sh(
            "stdout-and-stderr",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'no newline'",
        ),
        sh("large-stdout-and-stderr", "seq 1 30000; seq 1 8000 >&2"),
        sh("stdin-to-eof", "cat; echo eof").stdin(b"line one\nline two\nlast".to_vec()),
        sh("large-stdin", "wc -c; echo eof").stdin(
            (0..20000)
                .flat_map(|i| format!("{i:09}\n").into_bytes())
                .collect(),
        ),
        // The reader starts late: stdin must not end before all of it went through.
        sh("stdin-read-late", "sleep 3; wc -c; echo eof").stdin(
            (0..12000)
                .flat_map(|i| format!("{i:09}\n").into_bytes())
                .collect(),
        ),
        sh(
            "tty",
            "tty; [ -t 0 ] && echo stdin-is-a-tty; [ -t 1 ] && echo stdout-is-a-tty; \
             echo to-stderr >&2; sleep 1; exit 5",
        )
        .tty(),
        case("missing-executable", &["/nonexistent"]).differs(
            Diff::ErrorText("/nonexistent"),
            "the error text of a failed start is each runtime's own",
        ),
        case("not-executable", &["/etc/passwd"]).differs(
            Diff::ErrorText("/etc/passwd"),
            "the error text of a failed start is each runtime's own",
        ),
    ]
}

/// Users, environment, working directory, hostname.
fn identity_cases() -> Vec<Case> {
    vec![
        case("id-default", &["id"]),
        sh(
            "user-1000-with-groups",
            "id; grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status",
        )
        .spec(spec_user_1000),
        sh("umask-077", "umask; touch /tmp/f; stat -c %a /tmp/f").spec(spec_umask_077),
        // `env` itself prints the environment in execve's order (a shell would reorder it).
        case("env", &["env"]).flags(&["--env", "Z_LAST=1", "--env", "A_FIRST=2", "--env", "M=3"]),
        // ctr appends a repeated --env name a second time.
        case("env-repeated-name", &["env"])
            .flags(&[
                "--env", "Z=1", "--env", "A=2", "--env", "Z=3", "--env", "M=4",
            ])
            .differs(Diff::LineOrder, ENV_DUPLICATES),
        case("env-repeated-name-in-the-spec", &["env"])
            .spec(spec_env_duplicates)
            .differs(Diff::LineOrder, ENV_DUPLICATES),
        sh("missing-cwd-is-created", "pwd; stat -c '%a %u:%g' . ..")
            .flags(&["--cwd", "/nonexistent/dir"]),
        sh("missing-cwd-below-a-mount", "pwd; stat -c '%a %u:%g' . ..").flags(&[
            "--mount",
            "type=tmpfs,dst=/scratch",
            "--cwd",
            "/scratch/a/b",
        ]),
        case("no-path-program-by-its-path", &["/bin/env"]).spec(spec_env_without_path),
        case("no-path-program-by-name", &["env"])
            .spec(spec_env_without_path)
            .differs(
                Diff::ErrorText("'env' not found"),
                "the error text of a failed start is each runtime's own",
            ),
        case("env-entry-without-equals", &["env"])
            .spec(spec_env_without_equals)
            .differs(Diff::ErrorText("\"FOO\""), ENV_INVALID),
        case("env-entry-with-an-empty-name", &["env"])
            .spec(spec_env_empty_name)
            .differs(Diff::ErrorText("\"=x\""), ENV_INVALID),
        sh(
            "missing-cwd-of-a-user",
            "pwd; id -u; stat -c '%a %u:%g' . ..",
        )
        .spec(spec_user_1000_missing_cwd),
        sh("hostname", "hostname; cat /proc/sys/kernel/hostname").spec(spec_hostname),
        case("hostname-unset", &["hostname"]).differs(
            Diff::Stdout,
            "a spec without a hostname: runc's container keeps the host's name, Pulse's the \
             VM's (the pod's id)",
        ),
    ]
}

/// An env entry that is not `NAME=value`: both refuse the container.
const ENV_INVALID: &str = "an env entry that is not NAME=value fails the container; each runtime \
    words the error itself";

/// A name the spec's env gives twice.
const ENV_DUPLICATES: &str = "a name given twice keeps its last value; runc 1.1 (Debian \
    bookworm's, the reference here) keeps it at the first place, runc 1.2 and later and Pulse at \
    the last";

/// Paths of the default masked and read-only lists that Pulse's guest kernel does not have
/// (`guest/kernel/pulse-microvm.config`): runc masks or write-protects them where the host's
/// kernel has them (the nested rig's Debian L1 has most); in the VM there is nothing to hide.
const ABSENT_IN_THE_VM: &[(&str, &str)] = &[
    (
        "/proc/acpi ",
        "the VM's kernel has no ACPI: no /proc/acpi to mask",
    ),
    (
        "/proc/keys ",
        "the VM's kernel has no keyrings (CONFIG_KEYS): no /proc/keys to mask",
    ),
    (
        "/proc/kcore ",
        "the VM's kernel has no /proc/kcore (CONFIG_PROC_KCORE) to mask",
    ),
    (
        "/proc/scsi ",
        "the VM's kernel has no SCSI: no /proc/scsi to mask",
    ),
    (
        "/proc/asound ",
        "the VM's kernel has no sound: no /proc/asound to mask",
    ),
    (
        "/proc/latency_stats ",
        "the VM's kernel has no LATENCYTOP: nothing to mask",
    ),
    (
        "/proc/sysrq-trigger ",
        "the VM's kernel has no magic SysRq (CONFIG_MAGIC_SYSRQ): no /proc/sysrq-trigger to make \
         read-only",
    ),
];

impl Case {
    /// A tmpfs's `inode64` option, which one kernel shows and another does not.
    fn tmpfs_inode64(self) -> Self {
        self.differs(Diff::Text(",inode64"), TMPFS_INODE64)
    }

    /// The lines of the paths in [`ABSENT_IN_THE_VM`] may differ.
    fn absent_in_the_vm(mut self) -> Self {
        for (path, why) in ABSENT_IN_THE_VM {
            self = self.differs(Diff::Lines(path), why);
        }
        self
    }
}

/// tmpfs shows `inode64` among its mount options on kernels built with CONFIG_TMPFS_INODE64
/// (Debian's, the nested rig's L1), and not on others (Pulse's guest kernel, this host's).
const TMPFS_INODE64: &str = "a tmpfs's inode64 option is shown by kernels built with \
    CONFIG_TMPFS_INODE64 (Debian's 6.1, the nested rig's L1) and not by Pulse's guest kernel";

const MASKED: &str = "/proc/acpi /proc/asound /proc/kcore /proc/keys /proc/latency_stats \
                      /proc/timer_list /proc/timer_stats /proc/sched_debug /proc/scsi /sys/firmware";

/// Mounts, the rootfs, masked and read-only paths.
fn filesystem_cases(bind_source: &Path) -> Vec<Case> {
    let bind = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        bind_source.display()
    );
    let probe_scratch = "grep ' /scratch ' /proc/mounts; stat -c '%a' /scratch; \
                         touch /scratch/f && echo writable";
    vec![
        sh("default-mounts", "cut -d' ' -f2-4 /proc/mounts")
            .differs(
                Diff::Lines("/ overlay "),
                "the rootfs: runc's is containerd's overlay snapshot, Pulse's an ext4 disk made \
             from it",
            )
            .differs(
                Diff::Lines("/ ext4 "),
                "the rootfs: runc's is containerd's overlay snapshot, Pulse's an ext4 disk made \
             from it",
            )
            .absent_in_the_vm()
            .tmpfs_inode64(),
        sh("tmpfs-without-source", probe_scratch)
            .flags(&["--mount", "type=tmpfs,dst=/scratch"])
            .tmpfs_inode64(),
        sh("tmpfs-with-source-and-options", probe_scratch)
            .flags(&[
                "--mount",
                "type=tmpfs,src=tmpfs,dst=/scratch,options=size=2m:mode=1770:noexec:nosuid",
            ])
            .tmpfs_inode64(),
        sh(
            "read-only-rootfs",
            "touch /x; echo rc=$?; touch /run/x && echo run-is-writable; \
             grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
        )
        .flags(&["--read-only"]),
        sh(
            "bind-mount",
            "ls /data; cat /data/file; touch /data/x; echo rc=$?; \
             grep ' /data ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1",
        )
        .flags(&["--mount", &bind]),
        sh(
            "masked-paths",
            &format!(
                "for p in {MASKED}; do \
                   if [ -d $p ]; then echo \"$p dir entries=$(ls -A $p | wc -l)\"; \
                   elif [ -e $p ]; then echo \"$p file bytes=$(cat $p 2>/dev/null | wc -c)\"; \
                   else echo \"$p absent\"; fi; done"
            ),
        )
        .absent_in_the_vm(),
        sh(
            "read-only-paths",
            "for p in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger; do \
               [ -e $p ] || { echo \"$p absent\"; continue; }; \
               echo \"$p $(grep \" $p \" /proc/mounts | cut -d' ' -f4 | cut -d, -f1)\"; done; \
             echo x > /proc/sys/kernel/domainname; echo rc=$?",
        )
        .absent_in_the_vm(),
        sh(
            "devices",
            "for d in /dev/* /dev/pts/*; do stat -c '%n %F %t:%T %a' $d; done",
        )
        .differs(
            Diff::Lines("/dev/core "),
            "/dev/core is a link to /proc/kcore, made where the kernel has one (the nested \
             rig's L1 kernel); Pulse's guest kernel has none (CONFIG_PROC_KCORE)",
        ),
    ]
}

/// The limits a spec leaves unset come from the process that starts the container: runc's from
/// containerd's (the host's), Pulse's from the guest agent's (the VM kernel's defaults).
const RLIMIT_BY_MEMORY: &str = "a limit the spec leaves unset is inherited: under runc from \
    containerd, under Pulse from the guest agent; the kernel sizes the default NPROC and \
    SIGPENDING limits by the machine's memory";

/// rlimits, capabilities, seccomp, no_new_privs.
fn privilege_cases() -> Vec<Case> {
    let caps = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status";
    vec![
        case("rlimits-default", &["cat", "/proc/self/limits"])
            .differs(Diff::Lines("Max processes "), RLIMIT_BY_MEMORY)
            .differs(Diff::Lines("Max pending signals "), RLIMIT_BY_MEMORY),
        // Every limit the spec sets is the spec's; the pending signals it sets too.
        case("rlimits-from-the-spec", &["cat", "/proc/self/limits"]).spec(spec_rlimits),
        sh("capabilities-default", caps),
        sh("capabilities-added", caps).flags(&[
            "--cap-add",
            "CAP_SYS_ADMIN",
            "--cap-add",
            "CAP_SYS_PTRACE",
        ]),
        sh(
            "capabilities-dropped",
            &format!("{caps}; chown 1 /tmp; echo rc=$?"),
        )
        .flags(&["--cap-drop", "CAP_CHOWN", "--cap-drop", "CAP_NET_RAW"]),
        sh("capabilities-privileged", caps).flags(&["--privileged"]),
        sh(
            "no-new-privs-default",
            "grep ^NoNewPrivs: /proc/self/status",
        ),
        sh("no-new-privs-off", "grep ^NoNewPrivs: /proc/self/status").flags(&["--allow-new-privs"]),
        sh(
            "seccomp-off",
            "grep -E '^Seccomp(_filters)?:' /proc/self/status",
        ),
        sh(
            "seccomp-default-profile",
            "grep -E '^Seccomp(_filters)?:' /proc/self/status; unshare -U true; echo unshare=$?",
        )
        .flags(&["--seccomp"]),
    ]
}

const CPU_WEIGHT: &str = "cpu.weight from the spec's CPU shares (ctr always sets some, 1024 by \
    default): runc 1.1 converts linearly (1024 -> 39, 512 -> 20; the probe applies the same \
    conversion to a cgroup v1 host's cpu.shares), Pulse's libcgroups as runc 1.3.2 and crun 1.23 \
    and later do (1024 -> 100, the cgroup v2 default; 512 -> 59); a spec without shares: the \
    kernel's defaults, 1024 shares and weight 100";

/// cgroup limits and the OOM killer.
fn cgroup_cases() -> Vec<Case> {
    let cg = |name: &'static str, flags: &[&str]| {
        sh(name, CGROUP_PROBE)
            .flags(&["--mount", CGROUP_MOUNT])
            .flags(flags)
            .differs(Diff::Lines("cpu.weight "), CPU_WEIGHT)
    };
    vec![
        cg("cgroup-defaults", &[]),
        cg("cgroup-memory-limit", &["--memory-limit", "67108864"]),
        cg(
            "cgroup-cpu-quota-and-period",
            &["--cpu-quota", "50000", "--cpu-period", "100000"],
        ),
        cg("cgroup-cpus", &["--cpus", "0.5"]),
        cg("cgroup-cpu-shares", &["--cpu-shares", "512"]),
        sh("cgroup-pids-limit", CGROUP_PROBE)
            .spec(spec_pids_limit)
            .differs(Diff::Lines("cpu.weight "), CPU_WEIGHT),
        // dd's 128 MiB buffer, filled from /dev/zero, in a container that may use 32 MiB.
        case(
            "oom-kill",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
        )
        .flags(&["--memory-limit", "33554432"]),
    ]
}

/// Processes added with `ctr tasks exec`.
fn exec_cases() -> Vec<Case> {
    let status =
        "grep -E '^(Sig(Blk|Ign|Cgt)|Cap(Prm|Eff|Bnd)|NoNewPrivs|Seccomp):' /proc/self/status";
    vec![
        sh(
            "exec-exit-code-and-stdio",
            "echo exec-out; echo exec-err >&2; exit 4",
        )
        .exec(&[]),
        case("exec-env", &["env"])
            .flags(&["--env", "FROM_RUN=1"])
            .exec(&[]),
        sh("exec-cwd", "pwd").exec(&["--cwd", "/tmp"]),
        case("exec-missing-cwd", &["pwd"])
            .exec(&["--cwd", "/nonexistent"])
            .differs(
                Diff::ErrorText("/nonexistent"),
                "the error text of a failed exec is each runtime's own",
            ),
        sh("exec-user", "id").exec(&["--user", "1000"]),
        sh("exec-process-state", status).exec(&[]),
        sh("exec-process-state-with-seccomp-and-caps", status)
            .flags(&["--seccomp", "--cap-drop", "CAP_CHOWN"])
            .exec(&[]),
        // Without no_new_privs loading the filter takes CAP_SYS_ADMIN, which the process does not
        // keep.
        sh(
            "exec-process-state-with-seccomp-without-no-new-privs",
            status,
        )
        .flags(&["--seccomp", "--allow-new-privs"])
        .exec(&[]),
        sh(
            "exec-user-with-seccomp-without-no-new-privs",
            &format!("id; {status}"),
        )
        .flags(&["--seccomp", "--allow-new-privs"])
        .exec(&["--user", "1000"]),
        sh(
            "exec-tty",
            // ctr resizes the exec's terminal once it started: a process gone by then makes
            // ctr log an error.
            "tty; [ -t 0 ] && echo stdin-is-a-tty; echo to-stderr >&2; sleep 1; exit 6",
        )
        .tty()
        .exec(&[]),
        sh(
            "exec-sees-the-containers-pid-namespace",
            "ps -o comm >/tmp/ps; sort /tmp/ps; cat /proc/1/comm",
        )
        .exec(&[]),
    ]
}

/// What is the VM's own: its kernel, its memory, its CPUs.
fn machine_cases() -> Vec<Case> {
    vec![
        case("kernel-name-and-machine", &["uname", "-sm"]),
        case("kernel-release", &["uname", "-r"]).differs(
            Diff::Stdout,
            "the kernel is the VM's own (Pulse's guest kernel), not the host's",
        ),
        sh("memory-size", "grep MemTotal /proc/meminfo").differs(
            Diff::Stdout,
            "the memory is the VM's (vm.memory_mib), not the host's",
        ),
        case("cpu-count", &["nproc"]).differs(
            Diff::Stdout,
            "the CPUs are the VM's (vm.vcpus), not the host's",
        ),
        // The guest sets kernel.dmesg_restrict as Debian's kernels have it.
        sh(
            "kernel-log-without-cap-syslog",
            "dmesg >/dev/null; echo dmesg=$?",
        ),
        sh(
            "kernel-log",
            "dmesg | grep -c . >/dev/null && echo has-lines",
        )
        .flags(&["--cap-add", "CAP_SYSLOG"]),
        sh("kernel-log-first-line", "dmesg | head -n 1 | cut -c16-40")
            .flags(&["--cap-add", "CAP_SYSLOG"])
            .differs(
                Diff::Stdout,
                "the kernel log is the VM kernel's own: its messages are not the host's",
            ),
        sh("date", "date -u +%Y-%m-%d"),
    ]
}

/// What one runtime did with one case.
#[derive(Debug, Clone, Default)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct Suite<'a> {
    env: &'a Env,
    /// ctr's default spec (`ctr oci spec`).
    default_spec: Value,
    /// The unpacked busybox image, copied for each `--config` case.
    tree: PathBuf,
    work: PathBuf,
    /// `--config` cases made so far (their trees and spec files are numbered).
    runs: AtomicUsize,
}

impl Suite<'_> {
    fn pulse_annotations() -> Vec<String> {
        [
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            &format!("io.kubernetes.cri.sandbox-id={POD}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The `ctr` arguments of `case` under `runtime` as container `id`.
    fn ctr_args(&self, case: &Case, runtime: &str, id: &str) -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
        args.extend(["--runtime".into(), runtime.into()]);
        if case.tty {
            args.push("-t".into());
        }
        if let Some(edit) = case.spec {
            let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
            let tree = self.work.join(format!("tree-{n}"));
            let status = Command::new("cp")
                .arg("-a")
                .arg(&self.tree)
                .arg(&tree)
                .status()
                .unwrap();
            assert!(status.success());
            let mut spec = self.default_spec.clone();
            spec["root"] = json!({"path": tree, "readonly": false});
            spec["process"]["args"] = json!(case.cmd);
            spec["process"]["env"] = json!(["PATH=/bin"]);
            spec["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", common::NS));
            edit(&mut spec);
            if runtime == PULSE {
                spec["annotations"] = json!({
                    "io.kubernetes.cri.container-type": "container",
                    "io.kubernetes.cri.sandbox-id": POD,
                });
            }
            let file = self.work.join(format!("spec-{n}.json"));
            std::fs::write(&file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
            args.extend(["--config".into(), file.display().to_string(), id.into()]);
            return args;
        }
        args.extend(case.flags.iter().cloned());
        if runtime == PULSE {
            args.extend(Self::pulse_annotations());
        }
        args.push(IMAGE.into());
        args.push(id.into());
        args.extend(case.cmd.iter().cloned());
        args
    }

    fn run(&self, case: &Case, runtime: &str, id: &str) -> Outcome {
        let started = Instant::now();
        let mut args = self.ctr_args(case, runtime, id);
        if let Some(exec_flags) = &case.exec {
            // The container sleeps, detached; the case is an exec in it.
            let sleeping = Case {
                cmd: vec!["sleep".into(), "100000".into()],
                tty: false,
                ..case.clone()
            };
            let mut run = self.ctr_args(&sleeping, runtime, id);
            run[1] = "-d".into();
            let refs: Vec<&str> = run.iter().map(String::as_str).collect();
            let out = self.env.ctr(&refs);
            if !out.status.success() {
                return Outcome {
                    code: out.status.code(),
                    stdout: text(&out.stdout),
                    stderr: format!("(starting the container) {}", text(&out.stderr)),
                    took: started.elapsed(),
                };
            }
            self.env.wait_status(id, "RUNNING");
            args = vec![
                "tasks".into(),
                "exec".into(),
                "--exec-id".into(),
                "x1".into(),
            ];
            if case.tty {
                args.push("-t".into());
            }
            args.extend(exec_flags.iter().cloned());
            args.push(id.into());
            args.extend(case.cmd.iter().cloned());
        }
        let mut outcome = if case.tty {
            let line = std::iter::once("ctr".to_string())
                .chain(["--address".into(), self.env.sock().display().to_string()])
                .chain(["--namespace".into(), common::NS.into()])
                .chain(args)
                .map(|a| quote(&a))
                .collect::<Vec<_>>()
                .join(" ");
            let mut cmd = Command::new("script");
            cmd.args(["-qec", &line, "/dev/null"]);
            self.spawn(cmd, None, &[], id)
        } else {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let cmd = self.env.ctr_cmd(&refs);
            self.spawn(cmd, case.stdin.as_deref(), &case.kill, id)
        };
        if case.exec.is_some() {
            remove(self.env, id);
        }
        outcome.took = started.elapsed();
        outcome
    }

    /// Runs `cmd`, feeding `stdin`; with `kill`, sends those signals to task `id` once stdout
    /// shows `ready`.
    fn spawn(&self, mut cmd: Command, stdin: Option<&[u8]>, kill: &[&str], id: &str) -> Outcome {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ctr");
        if let Some(input) = stdin {
            // Only once the task runs: ctr closes the task's stdin when its own ends, but only
            // once it holds the task (its NewTask returned); an end that comes earlier is lost,
            // and the task would wait for ever.
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_vec();
            let mut ls = self.env.ctr_cmd(&["tasks", "ls"]);
            let id = id.to_string();
            std::thread::spawn(move || {
                let deadline = Instant::now() + CASE_LIMIT;
                while Instant::now() < deadline {
                    let listed = ls.output().map(|o| text(&o.stdout)).unwrap_or_default();
                    if listed.lines().any(|l| {
                        l.split_whitespace().next() == Some(id.as_str()) && l.contains("RUNNING")
                    }) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = pipe.write_all(&input);
            });
        }
        let collect = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let sink = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + CASE_LIMIT;
        let mut problem = String::new();
        if !kill.is_empty() {
            while !text(&stdout.lock().unwrap()).contains("ready\n") {
                if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                    problem = "(never printed ready)".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if problem.is_empty() {
                for (i, signal) in kill.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_secs(2));
                    }
                    let out = self.env.ctr(&["tasks", "kill", "--signal", signal, id]);
                    if !out.status.success() {
                        problem.push_str(&format!("(kill {signal}: {})", text(&out.stderr).trim()));
                    }
                }
            }
        }
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                problem.push_str(&format!("(timed out after {CASE_LIMIT:?})"));
                remove(self.env, id);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end with the pipes (script(1)'s children may hold them a moment longer).
        std::thread::sleep(Duration::from_millis(50));
        let stdout = text(&stdout.lock().unwrap());
        let mut stderr = text(&stderr.lock().unwrap());
        stderr.push_str(&problem);
        Outcome {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
            took: Duration::ZERO,
        }
    }
}

/// Removes container `id` and its task, whatever state they are in (runc keeps its state under
/// /run/containerd/runc/NAMESPACE, beyond the environment's own directory).
fn remove(env: &Env, id: &str) {
    let _ = env.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
    env.wait_not_running(id);
    let _ = env.ctr(&["tasks", "delete", id]);
    let _ = env.ctr(&["containers", "delete", id]);
}

/// The normalisation, all of it: the container id becomes `<id>`; in a terminal's output
/// `\r\n` becomes `\n`, and `^@` goes: the terminal's echo of the byte script(1) sends when
/// its own (empty) stdin ends, which lands wherever it happens to arrive.
fn normalise(o: &Outcome, id: &str, tty: bool) -> Outcome {
    let fix = |s: &str| {
        let s = s.replace(id, "<id>");
        if tty {
            s.replace("\r\n", "\n").replace("^@", "")
        } else {
            s
        }
    };
    Outcome {
        code: o.code,
        stdout: fix(&o.stdout),
        stderr: fix(&o.stderr),
        took: o.took,
    }
}

enum Verdict {
    Same,
    /// Differences the case expects, one line each.
    Expected(Vec<String>),
    Unexpected(String),
}

/// The note `label: runc ..., pulse ...` on one stream expected to differ, with what each wrote
/// in it, which is then cleared in both so that the rest of the comparison leaves it out.
fn set_aside(label: &str, runc: &mut String, pulse: &mut String) -> String {
    let note = format!("{label}: runc {:?}, pulse {:?}", runc.trim(), pulse.trim());
    runc.clear();
    pulse.clear();
    note
}

fn show(o: &Outcome) -> String {
    format!(
        "exit {:?}\n    stdout: {:?}\n    stderr: {:?}",
        o.code, o.stdout, o.stderr
    )
}

fn compare(case: &Case, runc: &Outcome, pulse: &Outcome) -> Verdict {
    let mut notes = Vec::new();
    let mut runc = runc.clone();
    let mut pulse = pulse.clone();
    for e in &case.expected {
        match e.diff {
            Diff::PulseFails(what) => {
                return if runc.code == Some(0)
                    && pulse.code != Some(0)
                    && pulse.stderr.contains(what)
                {
                    Verdict::Expected(vec![format!(
                        "Pulse refuses it ({}): {:?}",
                        e.why,
                        pulse.stderr.trim()
                    )])
                } else {
                    Verdict::Unexpected(format!(
                        "expected runc to run it and Pulse to fail naming {what:?}\n  runc:  {}\n  pulse: {}",
                        show(&runc),
                        show(&pulse)
                    ))
                };
            }
            Diff::ErrorText(what) => {
                if runc.code == pulse.code && pulse.code != Some(0) && pulse.stderr.contains(what) {
                    let label = format!("error text ({})", e.why);
                    notes.push(set_aside(&label, &mut runc.stderr, &mut pulse.stderr));
                } else {
                    return Verdict::Unexpected(format!(
                        "expected both to fail alike, Pulse naming {what:?}\n  runc:  {}\n  pulse: {}",
                        show(&runc),
                        show(&pulse)
                    ));
                }
            }
            Diff::Text(text) => {
                let (r, p) = (runc.stdout.contains(text), pulse.stdout.contains(text));
                if r != p {
                    notes.push(format!(
                        "{text:?} ({}): in runc's output {r}, in Pulse's {p}",
                        e.why
                    ));
                }
                runc.stdout = runc.stdout.replace(text, "");
                pulse.stdout = pulse.stdout.replace(text, "");
            }
            Diff::Stdout => {
                let label = format!("stdout ({})", e.why);
                notes.push(set_aside(&label, &mut runc.stdout, &mut pulse.stdout));
            }
            Diff::LineOrder => {
                if runc.stdout != pulse.stdout {
                    notes.push(format!(
                        "line order ({}): runc {:?}, pulse {:?}",
                        e.why,
                        runc.stdout.trim(),
                        pulse.stdout.trim()
                    ));
                }
                for o in [&mut runc, &mut pulse] {
                    let mut lines: Vec<&str> = o.stdout.lines().collect();
                    lines.sort_unstable();
                    o.stdout = lines.join("\n");
                }
            }
            Diff::Lines(pattern) => {
                let removed = |s: &mut String| {
                    let (gone, kept): (Vec<&str>, Vec<&str>) =
                        s.lines().partition(|l| l.contains(pattern));
                    let gone = gone.join(" | ");
                    *s = kept.join("\n");
                    gone
                };
                let r = [removed(&mut runc.stdout), removed(&mut runc.stderr)];
                let p = [removed(&mut pulse.stdout), removed(&mut pulse.stderr)];
                if r != p {
                    notes.push(format!(
                        "lines with {pattern:?} ({}): runc {:?}, pulse {:?}",
                        e.why,
                        r.join(" ").trim(),
                        p.join(" ").trim()
                    ));
                }
            }
        }
    }
    if runc.code == pulse.code && runc.stdout == pulse.stdout && runc.stderr == pulse.stderr {
        if notes.is_empty() {
            Verdict::Same
        } else {
            Verdict::Expected(notes)
        }
    } else {
        Verdict::Unexpected(format!(
            "  runc:  {}\n  pulse: {}{}",
            show(&runc),
            show(&pulse),
            if notes.is_empty() {
                String::new()
            } else {
                format!(
                    "\n  (expected differences, set aside: {})",
                    notes.join("; ")
                )
            }
        ))
    }
}

/// Unpacks the busybox image the harness imported (its OCI layout tarball) into `dir`.
fn unpack_busybox(env: &Env, dir: &Path) {
    let layout = env.dir.path().join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(env.dir.path().join("busybox.tar"))
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(status.success());
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    std::fs::create_dir_all(dir).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let status = Command::new("tar")
            .arg("-xf")
            .arg(blob(layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Every case, by area (one test each: a pod each, and a test of the nested rig's stays short).
fn all_cases(bind_source: &Path) -> Vec<(&'static str, Vec<Case>)> {
    vec![
        ("processes", process_cases()),
        ("identity", identity_cases()),
        ("filesystems", filesystem_cases(bind_source)),
        ("privileges", privilege_cases()),
        ("cgroups", cgroup_cases()),
        ("exec", exec_cases()),
        ("machine", machine_cases()),
    ]
}

#[test]
fn runc_and_pulse_agree_on_processes_signals_and_stdio() {
    require_env!();
    differential("processes");
}

#[test]
fn runc_and_pulse_agree_on_users_env_cwd_and_hostname() {
    require_env!();
    differential("identity");
}

#[test]
fn runc_and_pulse_agree_on_mounts_the_rootfs_and_masked_paths() {
    require_env!();
    differential("filesystems");
}

#[test]
fn runc_and_pulse_agree_on_rlimits_capabilities_seccomp_and_no_new_privs() {
    require_env!();
    differential("privileges");
}

#[test]
fn runc_and_pulse_agree_on_cgroup_limits_and_the_oom_killer() {
    require_env!();
    differential("cgroups");
}

#[test]
fn runc_and_pulse_agree_on_exec() {
    require_env!();
    differential("exec");
}

#[test]
fn runc_and_pulse_differ_only_by_the_machine() {
    require_env!();
    differential("machine");
}

/// Runs the cases of `area` under runc and Pulse and fails on any difference the cases do not
/// list.
fn differential(area: &str) {
    let bind_source = tempfile::tempdir().unwrap();
    std::fs::write(bind_source.path().join("file"), "from the host\n").unwrap();
    let areas = all_cases(bind_source.path());
    let mut names: Vec<&str> = areas
        .iter()
        .flat_map(|(_, cases)| cases.iter().map(|c| c.name))
        .collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "case names must be unique");
    let verbose = std::env::var_os("PULSE_DIFF_VERBOSE").is_some();
    let only: Option<Vec<String>> = std::env::var("PULSE_DIFF_CASES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    for name in only.iter().flatten() {
        assert!(
            names.contains(&name.as_str()),
            "PULSE_DIFF_CASES: no case {name:?}"
        );
    }
    let cases: Vec<Case> = areas
        .into_iter()
        .find(|(a, _)| *a == area)
        .expect("an area")
        .1
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|n| n == c.name)))
        .collect();
    if cases.is_empty() {
        eprintln!("differential {area}: no case chosen (PULSE_DIFF_CASES)");
        return;
    }

    let _one = common::serial();
    let started = Instant::now();
    let env = Env::start();
    let work = env.dir.path().join("diff");
    std::fs::create_dir_all(&work).unwrap();
    let tree = work.join("busybox");
    unpack_busybox(&env, &tree);
    let out = env.ctr(&["oci", "spec"]);
    assert!(out.status.success(), "ctr oci spec: {}", text(&out.stderr));
    let default_spec: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The pod: its sandbox container boots the VM once; every Pulse case joins it.
    let boot = Instant::now();
    let out = env.ctr(&[
        "run",
        "-d",
        "--runtime",
        PULSE,
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        &format!("io.kubernetes.cri.sandbox-id={POD}"),
        IMAGE,
        POD,
        "sleep",
        "100000",
    ]);
    env.assert_exit(&out, 0);
    env.wait_status(POD, "RUNNING");
    let boot = boot.elapsed();

    let suite = Suite {
        env: &env,
        default_spec,
        tree,
        work,
        runs: AtomicUsize::new(0),
    };
    // runc's run and Pulse's of a case go side by side (their containers are independent); in
    // the nested rig, where everything is emulated, that halves the suite's time.
    // PULSE_DIFF_SERIAL=1 runs them one after the other.
    let serial = std::env::var_os("PULSE_DIFF_SERIAL").is_some();
    let (mut same, mut expected, mut unexpected) = (0, 0, Vec::new());
    let (mut runc_time, mut pulse_time) = (Duration::ZERO, Duration::ZERO);
    let mut report = String::new();
    // Ids of this run alone: runc's state outlives a containerd that was stopped mid-case.
    let dir_name = env.dir.path().file_name().unwrap().to_string_lossy();
    let run = dir_name.trim_start_matches("pt").to_string();
    let mut flaky = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // Both runtimes' run of the case and their comparison; `again` marks a second try.
        let attempt = |again: &str| {
            let runc_id = format!("r{i}{again}-{}-{run}", case.name);
            let pulse_id = format!("p{i}{again}-{}-{run}", case.name);
            let (runc, pulse) = if serial {
                (
                    suite.run(case, RUNC, &runc_id),
                    suite.run(case, PULSE, &pulse_id),
                )
            } else {
                std::thread::scope(|s| {
                    let runc = s.spawn(|| suite.run(case, RUNC, &runc_id));
                    let pulse = suite.run(case, PULSE, &pulse_id);
                    (runc.join().expect("the runc side panicked"), pulse)
                })
            };
            let verdict = compare(
                case,
                &normalise(&runc, &runc_id, case.tty),
                &normalise(&pulse, &pulse_id, case.tty),
            );
            (runc, pulse, runc_id, verdict)
        };
        let (mut runc, mut pulse, mut runc_id, mut verdict) = attempt("");
        if let Verdict::Unexpected(details) = &verdict {
            // A difference must show twice: under load either side can lose a short
            // process's output once (containerd 1.6's `ctr task exec` does, with runc too).
            let first = format!("{}: first run differed:\n{details}", case.name);
            let second = attempt("a");
            if !matches!(second.3, Verdict::Unexpected(_)) {
                eprintln!("FLAKY     {first}");
                flaky.push(first);
            }
            (runc, pulse, runc_id, verdict) = second;
        }
        runc_time += runc.took;
        pulse_time += pulse.took;
        let timing = format!(
            "runc {:.1}s, pulse {:.1}s",
            runc.took.as_secs_f64(),
            pulse.took.as_secs_f64()
        );
        let line = match verdict {
            Verdict::Same => {
                same += 1;
                let mut line = format!("same      {} ({timing})", case.name);
                if verbose {
                    line.push_str(&format!(
                        "\n  both:  {}",
                        show(&normalise(&runc, &runc_id, case.tty))
                    ));
                }
                line
            }
            Verdict::Expected(notes) => {
                expected += 1;
                let mut line = format!("expected  {} ({timing})", case.name);
                for n in notes {
                    line.push_str(&format!("\n            {n}"));
                }
                line
            }
            Verdict::Unexpected(details) => {
                unexpected.push(case.name);
                format!("DIFFERS   {} ({timing})\n{details}", case.name)
            }
        };
        eprintln!("{line}");
        report.push_str(&line);
        report.push('\n');
    }

    let leftover = text(&env.ctr(&["containers", "ls", "-q"]).stdout);
    for id in leftover.split_whitespace() {
        remove(&env, id);
    }
    let leftover: Vec<&str> = leftover
        .split_whitespace()
        .filter(|id| *id != POD)
        .collect();
    env.assert_no_leaks();
    let summary = format!(
        "differential {area} ({} backend): {} cases: {same} same, {expected} with expected \
         differences, {} unexpected, {} agreed only on a second run; runc {:.0}s, pulse {:.0}s \
         (VM boot {:.0}s), test {:.0}s",
        common::backend(),
        cases.len(),
        unexpected.len(),
        flaky.len(),
        runc_time.as_secs_f64(),
        pulse_time.as_secs_f64(),
        boot.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    assert!(leftover.is_empty(), "containers left: {leftover:?}");
    assert!(
        unexpected.is_empty(),
        "runc and Pulse differ in {unexpected:?}:\n{report}\n{summary}"
    );
}
