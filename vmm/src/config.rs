//! VM configuration: the settings of one microVM, from code, the command line or a TOML file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::boot::mptable::MAX_VCPUS;
use crate::boot::{check_cmdline, BootError, BootProtocol, KernelSource};
use crate::devices::block::{BlockConfig, DEFAULT_QUEUE_SIZE};
use crate::devices::console::ConsoleConfig;
use crate::devices::net::NetConfig;
use crate::devices::serial::SerialOutput;
use crate::devices::vsock::VsockConfig;
use crate::memory::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};

mod string_or_table;
pub(crate) use string_or_table::string_or_table;

/// Command line used when none is given: serial console, reboot by triple fault (which stops
/// the VM), no reboot loop after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1";
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// Settings of one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: KernelSource,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Serial port output.
    pub serial: SerialOutput,
    /// Entry convention.
    pub boot_protocol: BootProtocol,
    /// virtio-blk devices, in slot order.
    pub block: Vec<BlockConfig>,
    /// A virtio-vsock device, its host side a hybrid-vsock unix socket.
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices, each on a tap.
    pub net: Vec<NetConfig>,
    /// A virtio-console device (the guest's `hvc0`).
    pub console: Option<ConsoleConfig>,
    /// A virtio-fs device served by a vhost-user backend (virtiofsd) already listening on its
    /// socket; guest memory is then shared (one memfd) for the backend to map.
    pub fs: Option<crate::devices::fs::FsConfig>,
    /// Offer per-queue MSI on every virtio device (else the guest only finds legacy lines).
    pub msi: bool,
    /// Install the seccomp filter of each VMM thread's kind (see `docs/confinement.md`). On by
    /// default; off only to debug the VMM. Capabilities are dropped either way.
    pub seccomp: bool,
    /// Map the test devices ([`crate::devices::pseudo`]: the debug-exit and phase-marker
    /// ports) for a test guest such as the probe. Off by default.
    pub test_devices: bool,
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u64),
    /// Memory out of range.
    #[error("memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {0}")]
    Memory(u64),
    /// Bad command line.
    #[error(transparent)]
    Cmdline(#[from] BootError),
    /// No kernel configured.
    #[error("no kernel given (--kernel or `kernel` in the config file)")]
    NoKernel,
    /// The kernel file is missing.
    #[error("kernel file {0} does not exist")]
    KernelMissing(PathBuf),
    /// The initrd file is missing.
    #[error("initrd file {0} does not exist")]
    InitrdMissing(PathBuf),
    /// A disk image is missing.
    #[error("disk image {0} does not exist")]
    DiskMissing(PathBuf),
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A field has a bad value.
    #[error("{field}: {message}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: KernelSource) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial: SerialOutput::Stdout,
            boot_protocol: BootProtocol::Auto,
            block: Vec::new(),
            vsock: None,
            net: Vec::new(),
            console: None,
            fs: None,
            msi: true,
            seccomp: true,
            test_devices: false,
        }
    }

    /// How the VM's threads are confined.
    pub fn confinement(&self) -> crate::confine::Policy {
        crate::confine::Policy {
            seccomp: self.seccomp,
        }
    }

    /// Checks every value that can be checked before touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(u64::from(self.vcpus)));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        check_cmdline(&self.cmdline)?;
        if let KernelSource::Path(path) = &self.kernel {
            if !path.exists() {
                return Err(ConfigError::KernelMissing(path.clone()));
            }
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.exists() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        for block in &self.block {
            if !block.path.exists() {
                return Err(ConfigError::DiskMissing(block.path.clone()));
            }
        }
        if matches!(self.serial, SerialOutput::Stdout)
            && self
                .console
                .as_ref()
                .is_some_and(|c| c.sink == crate::devices::console::ConsoleSink::Stdout)
        {
            return Err(ConfigError::Field {
                field: "console",
                message: "stdio is the serial port's already (serial = stdio); give the \
                          console another sink, or the serial port file:PATH or none"
                    .into(),
            });
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate().map_err(|message| ConfigError::Field {
                field: "vsock",
                message,
            })?;
        }
        if let Some(fs) = &self.fs {
            fs.validate().map_err(|message| ConfigError::Field {
                field: "fs",
                message,
            })?;
        }
        Ok(())
    }
}

/// The TOML form of a VM configuration; every key optional, unknown keys rejected.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigFile {
    /// Kernel path.
    pub kernel: Option<PathBuf>,
    /// Initrd path.
    pub initrd: Option<PathBuf>,
    /// Command line.
    pub cmdline: Option<String>,
    /// vCPUs (wide, so that an out-of-range value gets our message, not serde's).
    pub vcpus: Option<u64>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// `stdio`, `file:PATH` or `none`.
    pub serial: Option<String>,
    /// `auto`, `linux64` or `pvh`.
    pub boot_protocol: Option<String>,
    /// virtio-blk devices (`[[block]]` tables).
    #[serde(default)]
    pub block: Vec<BlockConfigFile>,
    /// The virtio-vsock device (`[vsock]` table).
    pub vsock: Option<VsockConfigFile>,
    /// virtio-net devices (`[[net]]` tables or `"tap=NAME,queues=N"` strings).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The virtio-console sink: `file:PATH`, `stdio`, `unix:PATH` or `none`.
    pub console: Option<ConsoleConfig>,
    /// Offer per-queue MSI (default true).
    pub msi: Option<bool>,
    /// Seccomp filters on the VMM's threads (default true; false only to debug).
    pub seccomp: Option<bool>,
    /// The test devices (debug-exit and phase-marker ports) for a test guest (default false).
    pub test_devices: Option<bool>,
}

/// The `[vsock]` table, or the `--vsock cid=N,uds=PATH` flag.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfigFile {
    /// Guest context ID (3 or more).
    pub cid: u64,
    /// The hybrid-vsock unix socket; guest connections to host port P go to `<uds>_P`.
    pub uds: PathBuf,
}

impl std::str::FromStr for VsockConfigFile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut uds = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("vsock cid '{v}' is not a number"))?,
                    )
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown vsock option '{part}' (cid=N,uds=PATH)")),
            }
        }
        Ok(VsockConfigFile {
            cid: cid.ok_or("vsock needs cid=N")?,
            uds: uds.ok_or("vsock needs uds=PATH")?,
        })
    }
}

/// One `[[block]]` table, or one `--block` flag.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockConfigFile {
    /// Disk image (raw).
    pub path: PathBuf,
    /// Queue count; default: one per vCPU.
    pub queues: Option<u16>,
    /// Size of each queue; default 256.
    pub queue_size: Option<u16>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// GET_ID string.
    pub serial: Option<String>,
}

impl std::str::FromStr for BlockConfigFile {
    type Err = String;

    /// `PATH` or `path=PATH[,queues=N][,queue_size=N][,ro][,serial=ID]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut block = BlockConfigFile::default();
        for (i, part) in s.split(',').enumerate() {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let number = |v: &str| {
                v.parse::<u16>()
                    .map_err(|_| format!("block option {key}: '{v}' is not a number"))
            };
            match key {
                "path" => block.path = PathBuf::from(value),
                "queues" => block.queues = Some(number(value)?),
                "queue_size" => block.queue_size = Some(number(value)?),
                "ro" | "readonly" | "read_only" => {
                    block.read_only = value.is_empty() || value == "on" || value == "true"
                }
                "serial" => block.serial = Some(value.to_string()),
                _ if i == 0 && value.is_empty() => block.path = PathBuf::from(key),
                _ => {
                    return Err(format!(
                        "unknown block option '{part}' (path, queues, queue_size, ro, serial)"
                    ))
                }
            }
        }
        if block.path.as_os_str().is_empty() {
            return Err("block device without a path".into());
        }
        Ok(block)
    }
}

/// What the TOML parser said about `text`, on one line, after the line it points at
/// ("line 3: invalid type ..."): the words an operator reads beside the file's path.
pub fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let what = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {what}")
        }
        None => what,
    }
}

impl VmConfigFile {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(&text, &e),
        })
    }

    /// Lays `other` over `self`: values set in `other` win.
    pub fn merged_with(self, other: VmConfigFile) -> VmConfigFile {
        VmConfigFile {
            kernel: other.kernel.or(self.kernel),
            initrd: other.initrd.or(self.initrd),
            cmdline: other.cmdline.or(self.cmdline),
            vcpus: other.vcpus.or(self.vcpus),
            memory_mib: other.memory_mib.or(self.memory_mib),
            serial: other.serial.or(self.serial),
            boot_protocol: other.boot_protocol.or(self.boot_protocol),
            block: if other.block.is_empty() {
                self.block
            } else {
                other.block
            },
            vsock: other.vsock.or(self.vsock),
            net: if other.net.is_empty() {
                self.net
            } else {
                other.net
            },
            console: other.console.or(self.console),
            msi: other.msi.or(self.msi),
            seccomp: other.seccomp.or(self.seccomp),
            test_devices: other.test_devices.or(self.test_devices),
        }
    }

    /// Builds and validates the VM configuration.
    pub fn into_vm_config(self) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.ok_or(ConfigError::NoKernel)?;
        let mut config = VmConfig::new(KernelSource::Path(kernel));
        config.initrd = self.initrd;
        if let Some(cmdline) = self.cmdline {
            config.cmdline = cmdline;
        }
        if let Some(vcpus) = self.vcpus {
            config.vcpus = u8::try_from(vcpus)
                .ok()
                .filter(|v| *v > 0 && *v <= MAX_VCPUS)
                .ok_or(ConfigError::Vcpus(vcpus))?;
        }
        if let Some(mem) = self.memory_mib {
            config.memory_mib = mem;
        }
        if let Some(serial) = self.serial {
            config.serial = serial.parse().map_err(|message| ConfigError::Field {
                field: "serial",
                message,
            })?;
        }
        if let Some(protocol) = self.boot_protocol {
            config.boot_protocol = protocol.parse().map_err(|message| ConfigError::Field {
                field: "boot_protocol",
                message,
            })?;
        }
        for block in self.block {
            config.block.push(BlockConfig {
                queues: block.queues.unwrap_or(u16::from(config.vcpus)),
                queue_size: block.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
                path: block.path,
                read_only: block.read_only,
                serial: block.serial,
            });
        }
        config.net = self.net;
        config.console = self.console;
        config.msi = self.msi.unwrap_or(true);
        config.seccomp = self.seccomp.unwrap_or(true);
        config.test_devices = self.test_devices.unwrap_or(false);
        config.vsock = self.vsock.map(|v| VsockConfig {
            guest_cid: v.cid,
            uds_path: v.uds,
        });
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn toml_fields_map_onto_the_config() {
        let kernel = existing_file();
        let text = format!(
            "kernel = {:?}\nvcpus = 2\nmemory_mib = 256\nserial = \"none\"\nboot_protocol = \"pvh\"\ncmdline = \"quiet\"\nseccomp = false\n",
            kernel.path()
        );
        let file: VmConfigFile = toml::from_str(&text).unwrap();
        let c = file.into_vm_config().unwrap();
        assert!(!c.seccomp && !c.confinement().seccomp);
        assert!(VmConfig::new(KernelSource::Bytes(std::sync::Arc::from(&[][..]))).seccomp);
        assert_eq!((c.vcpus, c.memory_mib), (2, 256));
        assert_eq!(c.boot_protocol, BootProtocol::Pvh);
        assert!(matches!(c.serial, SerialOutput::None));
        assert_eq!(c.cmdline, "quiet");
    }

    #[test]
    fn devices_from_toml() {
        let kernel = existing_file();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "kernel = {:?}\nconsole = \"unix:{}\"\n\
             [vsock]\ncid = 7\nuds = {:?}\n\
             [[net]]\ntap = \"tap-a\"\nqueues = 2\nmac = \"02:00:00:00:00:0a\"\n\
             [[net]]\ntap = \"tap-b\"\n",
            kernel.path(),
            dir.path().join("console.sock").display(),
            dir.path().join("v.sock"),
        );
        let file: VmConfigFile = toml::from_str(&text).unwrap();
        let c = file.into_vm_config().unwrap();
        let vsock = c.vsock.as_ref().unwrap();
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path.clone()),
            (7, dir.path().join("v.sock"))
        );
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0].queue_pairs, 2);
        assert_eq!(c.net[1].queue_pairs, 1);
        assert!(matches!(
            c.console.unwrap().sink,
            crate::devices::console::ConsoleSink::UnixSocket(_)
        ));
    }

    #[test]
    fn bad_devices_are_named() {
        let kernel = existing_file();
        let base = format!("kernel = {:?}\n", kernel.path());
        for (extra, wanted) in [
            ("[vsock]\ncid = 2\nuds = \"/tmp/x.sock\"\n", "CID 2"),
            (
                "[vsock]\ncid = 3\nuds = \"/no/such/dir/x.sock\"\n",
                "does not exist",
            ),
            ("console = \"tcp:1\"\n", "console"),
            ("serial = \"stdio\"\nconsole = \"stdio\"\n", "serial port"),
            ("[[net]]\nqueues = 2\n", "tap"),
        ] {
            let text = format!("{base}{extra}");
            let err = match toml::from_str::<VmConfigFile>(&text) {
                Err(e) => e.to_string(),
                Ok(file) => file.into_vm_config().unwrap_err().to_string(),
            };
            assert!(err.contains(wanted), "{extra:?}: {err}");
        }
    }

    #[test]
    fn vsock_flag_syntax() {
        let v: VsockConfigFile = "cid=5,uds=/run/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.uds), (5, PathBuf::from("/run/v.sock")));
        assert!("cid=5"
            .parse::<VsockConfigFile>()
            .unwrap_err()
            .contains("uds"));
        assert!("uds=/x"
            .parse::<VsockConfigFile>()
            .unwrap_err()
            .contains("cid"));
        assert!("cid=x,uds=/x".parse::<VsockConfigFile>().is_err());
        assert!("port=1".parse::<VsockConfigFile>().is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let kernel = existing_file();
        let base = VmConfigFile {
            kernel: Some(kernel.path().to_path_buf()),
            ..Default::default()
        };
        let zero = base.clone().merged_with(VmConfigFile {
            vcpus: Some(0),
            ..Default::default()
        });
        assert!(matches!(zero.into_vm_config(), Err(ConfigError::Vcpus(0))));
        let big = base.clone().merged_with(VmConfigFile {
            vcpus: Some(1000),
            ..Default::default()
        });
        assert!(matches!(
            big.into_vm_config(),
            Err(ConfigError::Vcpus(1000))
        ));
        let mem = base.clone().merged_with(VmConfigFile {
            memory_mib: Some(1),
            ..Default::default()
        });
        assert!(matches!(mem.into_vm_config(), Err(ConfigError::Memory(1))));
        let serial = base.clone().merged_with(VmConfigFile {
            serial: Some("tcp:1".into()),
            ..Default::default()
        });
        assert!(matches!(
            serial.into_vm_config(),
            Err(ConfigError::Field {
                field: "serial",
                ..
            })
        ));
        let long = base.clone().merged_with(VmConfigFile {
            cmdline: Some("a".repeat(5000)),
            ..Default::default()
        });
        assert!(matches!(
            long.into_vm_config(),
            Err(ConfigError::Cmdline(_))
        ));
        assert!(matches!(
            VmConfigFile::default().into_vm_config(),
            Err(ConfigError::NoKernel)
        ));
        let missing = VmConfigFile {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        assert!(matches!(
            missing.into_vm_config(),
            Err(ConfigError::KernelMissing(_))
        ));
    }

    #[test]
    fn block_devices_from_flags_and_toml() {
        let b: BlockConfigFile = "/d.img".parse().unwrap();
        assert_eq!(b.path, PathBuf::from("/d.img"));
        let b: BlockConfigFile = "path=/d.img,queues=4,ro,serial=root".parse().unwrap();
        assert_eq!(
            (b.queues, b.read_only, b.serial.as_deref()),
            (Some(4), true, Some("root"))
        );
        assert!("path=/d.img,queues=x".parse::<BlockConfigFile>().is_err());
        assert!("path=/d.img,bogus=1".parse::<BlockConfigFile>().is_err());
        assert!("queues=2".parse::<BlockConfigFile>().is_err());

        let disk = existing_file();
        let text = format!(
            "kernel = {:?}\nvcpus = 3\n[[block]]\npath = {:?}\n[[block]]\npath = {:?}\nqueues = 1\nread_only = true\n",
            disk.path(),
            disk.path(),
            disk.path()
        );
        let c = toml::from_str::<VmConfigFile>(&text)
            .unwrap()
            .into_vm_config()
            .unwrap();
        assert_eq!(c.block.len(), 2);
        assert_eq!(c.block[0].queues, 3, "one queue per vCPU by default");
        assert_eq!((c.block[1].queues, c.block[1].read_only), (1, true));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<VmConfigFile>("kernal = \"/x\"").unwrap_err();
        assert!(err.message().contains("kernal"), "{}", err.message());
    }

    #[test]
    fn command_line_values_override_the_file() {
        let file = VmConfigFile {
            vcpus: Some(2),
            memory_mib: Some(64),
            ..Default::default()
        };
        let cli = VmConfigFile {
            vcpus: Some(4),
            ..Default::default()
        };
        let merged = file.merged_with(cli);
        assert_eq!((merged.vcpus, merged.memory_mib), (Some(4), Some(64)));
    }
}
