//! `pulse.toml`: how a sandbox's VM is built and how the shim talks to it.
//!
//! The file is found, in order, at the path in the runtime options
//! (`ConfigPath` of containerd's `runtimeoptions.v1.Options`), at `$PULSE_CONFIG`,
//! or at [`DEFAULT_CONFIG_PATH`]. Every key is optional; `configs/pulse.toml`
//! documents each one with its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration lives when nothing else names it.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pulse/pulse.toml";
/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "PULSE_CONFIG";
/// Where sandboxes keep their sockets, disk images and state by default.
pub const DEFAULT_STATE_DIR: &str = "/run/pulse";

/// Which VMM runs the sandbox's VM.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `pulse-vmm`, in the shim's own process.
    #[default]
    Embedded,
    /// QEMU's microvm machine in a child process, vsock through vhost-device-vsock.
    Qemu,
}

impl Backend {
    /// The name used in the configuration file and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Qemu => "qemu",
        }
    }
}

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when the host has hardware virtualization (vmx/svm) and /dev/kvm, TCG otherwise.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always the software emulator.
    Tcg,
}

/// How a container's rootfs reaches the guest (`rootfs.mode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// `shared` when the pod has its virtio-fs share (`devices.shared_fs`), `copy` otherwise.
    #[default]
    Auto,
    /// The image's layers, shared read-only through virtio-fs, under an overlay whose
    /// writable layer is a small disk of the container's own: nothing of the image is copied.
    Shared,
    /// The whole tree copied into an ext4 disk image per container (`mkfs.ext4 -d`): the
    /// fallback, also for snapshots that are not overlay layers.
    Copy,
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PulseConfig {
    /// `[hypervisor]`
    pub hypervisor: HypervisorConfig,
    /// `[vm]`
    pub vm: VmSection,
    /// `[devices]`
    pub devices: DevicesConfig,
    /// `[agent]`
    pub agent: AgentConfig,
    /// `[qemu]`
    pub qemu: QemuConfig,
    /// `[rootfs]`
    pub rootfs: RootfsConfig,
    /// `[shim]`
    pub shim: ShimSection,
}

/// `[hypervisor]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    /// `embedded` or `qemu`.
    pub backend: Backend,
    /// `embedded` only: each VMM thread runs under the seccomp filter of its kind
    /// (`docs/confinement.md`). Off only to debug the VMM; capabilities are dropped either way.
    pub seccomp: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            seccomp: true,
        }
    }
}

/// `[vm]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VmSection {
    /// The guest kernel (ELF vmlinux, or bzImage).
    pub kernel: PathBuf,
    /// The initramfs whose /init is pulse-agent.
    pub initramfs: PathBuf,
    /// vCPUs per sandbox.
    pub vcpus: u8,
    /// Guest memory per sandbox, MiB.
    pub memory_mib: u64,
    /// Appended to the kernel command line, after Pulse's own parameters (which include
    /// `quiet`: `loglevel=7` here shows the whole boot on the console log).
    pub kernel_params: String,
}

impl Default for VmSection {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from(pulse_protocols::DEFAULT_GUEST_KERNEL),
            initramfs: PathBuf::from(pulse_protocols::DEFAULT_GUEST_INITRAMFS),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
        }
    }
}

/// `[devices]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Empty block slots the VM boots with; each container's rootfs takes one.
    pub block_slots: usize,
    /// Queues of each virtio-blk device (0: one per vCPU).
    pub block_queues: u16,
    /// The most queue pairs of a pod's virtio-net cards (0: no network device); see
    /// [`crate::network`] for which cards a pod gets.
    pub net_queues: u16,
    /// Per-queue MSI (Pulse's virtio-mmio extension); off means the legacy interrupt line.
    pub msi: bool,
    /// A virtio-console (`hvc0` in the guest) writing to `<sandbox>/hvc0.log`.
    pub virtio_console: bool,
    /// A virtio-fs device (a virtiofsd per pod) that carries the containers' bind mounts of
    /// host paths into the guest; off: such a mount fails the create.
    pub shared_fs: bool,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            block_slots: 4,
            block_queues: 0,
            net_queues: 0,
            msi: true,
            virtio_console: false,
            shared_fs: true,
        }
    }
}

/// `[agent]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The guest vsock port the agent serves on.
    pub port: u32,
    /// How long the guest may take from VM start to an answering agent, ms.
    pub connect_timeout_ms: u64,
    /// Deadline of one agent request that is not meant to block, ms.
    pub request_timeout_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            port: pulse_protocols::DEFAULT_VSOCK_PORT,
            connect_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// `[qemu]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// The vhost-user vsock backend.
    pub vhost_vsock_binary: PathBuf,
    /// The vhost-user-fs backend (`devices.shared_fs`).
    pub virtiofsd_binary: PathBuf,
    /// `auto`, `kvm` or `tcg`.
    pub accel: Accel,
    /// Extra arguments appended to QEMU's command line.
    pub extra_args: Vec<String>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            vhost_vsock_binary: PathBuf::from("vhost-device-vsock"),
            virtiofsd_binary: PathBuf::from("virtiofsd"),
            accel: Accel::Auto,
            extra_args: Vec::new(),
        }
    }
}

/// `[rootfs]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RootfsConfig {
    /// `auto`, `shared` or `copy`.
    pub mode: RootfsMode,
    /// `shared`: the size of a container's writable layer (a sparse disk image: the host
    /// holds only what the container writes), MiB. What the container can write in all.
    pub writable_mib: u64,
    /// `copy`: free space added to a container's rootfs disk, MiB.
    pub free_mib: u64,
    /// `copy`: smallest rootfs disk, MiB.
    pub min_mib: u64,
    /// mkfs.ext4 (`copy`: run with `-d` on the container's mounted rootfs).
    pub mkfs: PathBuf,
}

impl RootfsConfig {
    /// The mode a pod uses: `auto` resolved by whether it has a virtio-fs share.
    pub fn mode_for(&self, has_shared_fs: bool) -> RootfsMode {
        match self.mode {
            RootfsMode::Auto if has_shared_fs => RootfsMode::Shared,
            RootfsMode::Auto => RootfsMode::Copy,
            m => m,
        }
    }
}

impl Default for RootfsConfig {
    fn default() -> Self {
        Self {
            mode: RootfsMode::Auto,
            writable_mib: 4096,
            free_mib: 64,
            min_mib: 32,
            mkfs: PathBuf::from("mkfs.ext4"),
        }
    }
}

/// `[shim]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShimSection {
    /// Sockets, disk images, console logs and state of the sandboxes.
    pub state_dir: PathBuf,
    /// The shim's log filter (tracing's env-filter syntax); `PULSE_LOG` overrides it.
    pub log_level: String,
    /// Keep the guest console log after the sandbox stops (for debugging).
    pub keep_console_log: bool,
    /// Size at which a guest console log (and a helper's log) is rotated, KiB.
    pub console_log_max_kib: u64,
    /// The pods' cgroups go under `<cgroup v2 mount>/<this>`; empty: no pod cgroups.
    pub cgroup_parent: PathBuf,
}

impl Default for ShimSection {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            log_level: "info".into(),
            keep_console_log: false,
            console_log_max_kib: 1024,
            cgroup_parent: PathBuf::from("pulse"),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("pulse config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("pulse config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's words, with the line.
        message: String,
    },
    /// A value out of range, or a file that is not there.
    #[error("pulse config {path}: {field}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// The key.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Where the configuration comes from, in order of precedence.
pub fn resolve_path(from_options: Option<&str>, env: Option<&str>) -> PathBuf {
    from_options
        .filter(|p| !p.is_empty())
        .or(env.filter(|p| !p.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

impl PulseConfig {
    /// Parses a file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: pulse_vmm::config::describe_toml_error(text, &e),
        })
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks ranges and that the guest image files exist.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        // A count in its range; `top` says what the largest is where the number does not.
        let in_range = |field, value: u64, range: std::ops::RangeInclusive<u64>, top: &str| {
            if range.contains(&value) {
                return Ok(());
            }
            let (lo, hi) = range.into_inner();
            Err(invalid(
                field,
                format!("must be {lo} to {hi}{top}, got {value}"),
            ))
        };
        in_range("vm.vcpus", self.vm.vcpus.into(), 1..=64, "")?;
        in_range("vm.memory_mib", self.vm.memory_mib, 64..=65536, "")?;
        for (field, file) in [
            ("vm.kernel", &self.vm.kernel),
            ("vm.initramfs", &self.vm.initramfs),
        ] {
            if !file.is_file() {
                return Err(invalid(
                    field,
                    format!("{} does not exist or is not a file", file.display()),
                ));
            }
        }
        let d = &self.devices;
        let slots = u64::try_from(d.block_slots).unwrap_or(u64::MAX);
        in_range("devices.block_slots", slots, 1..=16, "")?;
        in_range("devices.block_queues", d.block_queues.into(), 0..=64, "")?;
        in_range("devices.net_queues", d.net_queues.into(), 0..=16, "")?;
        if self.rootfs.mode == RootfsMode::Shared && !self.devices.shared_fs {
            return Err(invalid(
                "rootfs.mode",
                "\"shared\" needs devices.shared_fs = true (the layers reach the guest through it)"
                    .into(),
            ));
        }
        in_range(
            "rootfs.writable_mib",
            self.rootfs.writable_mib,
            16..=1 << 24,
            " (16 TiB)",
        )?;
        if self.agent.port == 0 {
            return Err(invalid("agent.port", "must not be 0".into()));
        }
        if self.agent.connect_timeout_ms == 0 || self.agent.request_timeout_ms == 0 {
            return Err(invalid(
                "agent.connect_timeout_ms",
                "timeouts must be positive".into(),
            ));
        }
        let log_kib = self.shim.console_log_max_kib;
        in_range("shim.console_log_max_kib", log_kib, 4..=1 << 20, " (1 GiB)")?;
        if !crate::cgroup::valid_parent(&self.shim.cgroup_parent) {
            return Err(invalid(
                "shim.cgroup_parent",
                format!(
                    "{} must be a relative path without \"..\"",
                    self.shim.cgroup_parent.display()
                ),
            ));
        }
        if !self.shim.state_dir.is_absolute() {
            return Err(invalid(
                "shim.state_dir",
                format!("{} is not absolute", self.shim.state_dir.display()),
            ));
        }
        Ok(())
    }

    /// Queues of each block device, with 0 resolved to one per vCPU.
    pub fn block_queues(&self) -> u16 {
        match self.devices.block_queues {
            0 => u16::from(self.vm.vcpus),
            n => n,
        }
    }

    /// The console log's rotation size, bytes.
    pub fn console_log_max_bytes(&self) -> u64 {
        self.shim.console_log_max_kib * 1024
    }

    /// The connect deadline.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.connect_timeout_ms)
    }

    /// The per-request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.request_timeout_ms)
    }
}

/// The `ConfigPath` out of a runtime options `Any`, when it is containerd's
/// `runtimeoptions.v1.Options` (`type_url = 1; config_path = 2;`, both strings).
pub fn config_path_from_options(type_url: &str, value: &[u8]) -> Option<String> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut rest = value;
    let mut found = None;
    while !rest.is_empty() {
        let (key, n) = read_varint(rest)?;
        rest = &rest[n..];
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let (_, n) = read_varint(rest)?;
                rest = &rest[n..];
            }
            2 => {
                let (len, n) = read_varint(rest)?;
                let len = usize::try_from(len).ok()?;
                let body = rest.get(n..n.checked_add(len)?)?;
                if field == 2 {
                    found = Some(String::from_utf8(body.to_vec()).ok()?);
                }
                rest = &rest[n + len..];
            }
            1 => rest = rest.get(8..)?,
            5 => rest = rest.get(4..)?,
            _ => return None,
        }
    }
    found
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_image(extra: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let initramfs = dir.path().join("initramfs.cpio.lz4");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initramfs, b"i").unwrap();
        let text = format!(
            "[vm]\nkernel = {:?}\ninitramfs = {:?}\n{extra}",
            kernel, initramfs
        );
        (dir, text)
    }

    #[test]
    fn the_shipped_file_parses_and_documents_every_key() {
        let text = include_str!("../../configs/pulse.toml");
        let parsed = PulseConfig::parse(text, Path::new("configs/pulse.toml")).unwrap();
        assert_eq!(parsed.hypervisor.backend, Backend::Embedded);
        // Every key of the schema appears in the shipped file (uncommented).
        let defaults = toml::Value::try_from(Defaults::default()).unwrap();
        let shipped: toml::Value = toml::from_str(text).unwrap();
        for (section, keys) in defaults.as_table().unwrap() {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    shipped.get(section).and_then(|s| s.get(key)).is_some(),
                    "configs/pulse.toml lacks [{section}] {key}"
                );
            }
        }
    }

    /// The schema's keys, as a serializable mirror used by the test above.
    #[derive(serde::Serialize, Default)]
    struct Defaults {
        hypervisor: std::collections::BTreeMap<&'static str, &'static str>,
        vm: std::collections::BTreeMap<&'static str, i32>,
        devices: std::collections::BTreeMap<&'static str, i32>,
        agent: std::collections::BTreeMap<&'static str, i32>,
        qemu: std::collections::BTreeMap<&'static str, i32>,
        rootfs: std::collections::BTreeMap<&'static str, i32>,
        shim: std::collections::BTreeMap<&'static str, i32>,
    }

    impl Defaults {
        fn default() -> Self {
            let keys = |names: &[&'static str]| names.iter().map(|n| (*n, 0)).collect();
            Self {
                hypervisor: [("backend", "embedded"), ("seccomp", "true")]
                    .into_iter()
                    .collect(),
                vm: keys(&[
                    "kernel",
                    "initramfs",
                    "vcpus",
                    "memory_mib",
                    "kernel_params",
                ]),
                devices: keys(&[
                    "block_slots",
                    "block_queues",
                    "net_queues",
                    "msi",
                    "virtio_console",
                    "shared_fs",
                ]),
                agent: keys(&["port", "connect_timeout_ms", "request_timeout_ms"]),
                qemu: keys(&[
                    "binary",
                    "vhost_vsock_binary",
                    "virtiofsd_binary",
                    "accel",
                    "extra_args",
                ]),
                rootfs: keys(&["mode", "writable_mib", "free_mib", "min_mib", "mkfs"]),
                shim: keys(&[
                    "state_dir",
                    "log_level",
                    "keep_console_log",
                    "console_log_max_kib",
                    "cgroup_parent",
                ]),
            }
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let (_dir, text) = with_image(
            "[hypervisor]\nbackend = \"qemu\"\n[devices]\nblock_slots = 2\nmsi = false\n[qemu]\naccel = \"tcg\"\n",
        );
        let c = PulseConfig::parse(&text, Path::new("t.toml")).unwrap();
        c.validate(Path::new("t.toml")).unwrap();
        assert_eq!(c.hypervisor.backend, Backend::Qemu);
        assert!(c.hypervisor.seccomp, "the filters are on unless turned off");
        let off =
            PulseConfig::parse("[hypervisor]\nseccomp = false\n", Path::new("t.toml")).unwrap();
        assert!(!off.hypervisor.seccomp);
        assert_eq!(c.qemu.accel, Accel::Tcg);
        assert_eq!((c.devices.block_slots, c.devices.msi), (2, false));
        assert_eq!(c.vm.vcpus, 1);
        assert_eq!(c.block_queues(), 1);
        assert_eq!(c.agent.port, 1024);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_line() {
        let path = Path::new("/etc/pulse/bad.toml");
        let err = PulseConfig::parse("[vm]\nvcpus = 2\nbogus = 1\n", path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bad.toml") && text.contains("line 3") && text.contains("bogus"),
            "{text}"
        );
        let err = PulseConfig::parse("[hypervisor]\nbackend = \"xen\"\n", path).unwrap_err();
        assert!(err.to_string().contains("xen"), "{err}");

        // Each invalid value is named by its key.
        for (extra, key) in [
            ("vcpus = 0\n", "vm.vcpus"),
            (
                "[shim]\nconsole_log_max_kib = 0\n",
                "shim.console_log_max_kib",
            ),
            (
                "[shim]\ncgroup_parent = \"../escape\"\n",
                "shim.cgroup_parent",
            ),
        ] {
            let (_dir, text) = with_image(extra);
            let c = PulseConfig::parse(&text, path).unwrap();
            let err = c.validate(path).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }

        let c = PulseConfig::parse("[vm]\nkernel = \"/nonexistent/vmlinux\"\n", path).unwrap();
        let err = c.validate(path).unwrap_err().to_string();
        assert!(
            err.contains("vm.kernel") && err.contains("/nonexistent/vmlinux"),
            "{err}"
        );

        let err = PulseConfig::load(Path::new("/nonexistent/pulse.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pulse.toml"), "{err}");
    }

    #[test]
    fn path_precedence() {
        assert_eq!(
            resolve_path(Some("/a.toml"), Some("/b.toml")),
            Path::new("/a.toml")
        );
        assert_eq!(
            resolve_path(Some(""), Some("/b.toml")),
            Path::new("/b.toml")
        );
        assert_eq!(resolve_path(None, None), Path::new(DEFAULT_CONFIG_PATH));
    }

    #[test]
    fn config_path_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url: "x", config_path: "/etc/p.toml" }
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/p.toml");
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &value).as_deref(),
            Some("/etc/p.toml")
        );
        assert_eq!(
            config_path_from_options("containerd.runc.v1.Options", &value),
            None
        );
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &[0x12, 50]),
            None
        );
    }
}
