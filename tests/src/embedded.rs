//! The real guest under Pulse's own VMM (the `pulse-vmm` library, as the
//! shim's `embedded` backend runs it): the project's kernel with the
//! virtio-mmio MSI patch, the initramfs with the agent as PID 1, virtio-blk
//! disks, a multi-queue virtio-net on a tap, vsock and a virtio-console, one
//! MSI per queue (or the legacy line). Needs VT-x/AMD-V: on these machines it
//! runs inside the nested rig ([`crate::nested`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pulse_vmm::devices::block::{BlockConfig, DEFAULT_QUEUE_SIZE};
use pulse_vmm::devices::console::{ConsoleConfig, ConsoleSink};
use pulse_vmm::devices::net::NetConfig;
use pulse_vmm::devices::vsock::VsockConfig;
use pulse_vmm::{KernelSource, SerialOutput, Vm, VmConfig};

use crate::agent::Agent;
use crate::ready::ReadyListener;

/// The guest's vsock context id.
pub const GUEST_CID: u64 = 3;

/// One virtio-blk disk.
#[derive(Clone, Debug)]
pub struct Disk {
    pub image: PathBuf,
    pub serial: String,
    pub queues: u16,
    pub read_only: bool,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    /// Queue pairs of a virtio-net on a tap the VMM creates (0: no NIC).
    pub net_queue_pairs: u16,
    /// A virtio-console whose output goes to a file.
    pub console: bool,
    /// Offer per-queue MSI (false: every device on its legacy line).
    pub msi: bool,
}

impl EmbeddedConfig {
    /// `make guest`'s kernel and initramfs, 2 vCPUs, 256 MiB, no disks, no NIC, MSI on.
    pub fn from_build() -> Result<Self> {
        let (kernel, initramfs) = crate::guest_images()?;
        Ok(EmbeddedConfig {
            kernel,
            initramfs,
            vcpus: 2,
            memory_mib: 256,
            disks: Vec::new(),
            net_queue_pairs: 0,
            console: false,
            msi: true,
        })
    }
}

/// A running guest; stopped (every VMM thread joined, the tap removed) on drop.
pub struct EmbeddedGuest {
    vm: Vm,
    dir: tempfile::TempDir,
    vsock_uds: PathBuf,
    ready: ReadyListener,
    tap: Option<String>,
    started: Instant,
}

impl EmbeddedGuest {
    /// Starts the VM. The agent answers later ([`EmbeddedGuest::connect_agent`]).
    pub fn boot(config: &EmbeddedConfig) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("pulse-embedded-")
            .tempdir()
            .context("creating the guest's directory")?;
        let vsock_uds = dir.path().join("vm.vsock");
        let ready = ReadyListener::bind(&vsock_uds)?;

        let mut vm = VmConfig::new(KernelSource::Path(config.kernel.clone()));
        vm.initrd = Some(config.initramfs.clone());
        // quiet, as the shim boots its guests (every console byte is an exit; the agent turns
        // the console back to level 7 once it runs, so later kernel lines still show).
        vm.cmdline = format!(
            "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nokbd quiet \
             PULSE_AGENT_LISTEN=vsock://{} PULSE_AGENT_READY_PORT={}",
            pulse_protocols::DEFAULT_VSOCK_PORT,
            pulse_protocols::DEFAULT_READY_PORT
        );
        vm.vcpus = config.vcpus;
        vm.memory_mib = config.memory_mib;
        vm.serial = SerialOutput::File(dir.path().join("console.log"));
        vm.msi = config.msi;
        vm.block = config
            .disks
            .iter()
            .map(|d| BlockConfig {
                path: d.image.clone(),
                read_only: d.read_only,
                queues: d.queues,
                queue_size: DEFAULT_QUEUE_SIZE,
                serial: Some(d.serial.clone()),
            })
            .collect();
        vm.vsock = Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: vsock_uds.clone(),
        });
        let tap = (config.net_queue_pairs > 0).then(|| format!("pt{}", std::process::id()));
        if let Some(tap) = &tap {
            let mut net = NetConfig::new(tap);
            net.queue_pairs = config.net_queue_pairs;
            vm.net = vec![net];
        }
        if config.console {
            vm.console = Some(ConsoleConfig {
                sink: ConsoleSink::File(dir.path().join("hvc0.log")),
            });
        }
        let started = Instant::now();
        let vm = Vm::start(&vm).context("starting the VM")?;
        Ok(EmbeddedGuest {
            vm,
            dir,
            vsock_uds,
            ready,
            tap,
            started,
        })
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The tap the VMM made for the NIC.
    pub fn tap(&self) -> Option<&str> {
        self.tap.as_deref()
    }

    /// The agent's address for [`crate::connect`].
    pub fn agent_addr(&self) -> String {
        format!(
            "hvsock://{}:{}",
            self.vsock_uds.display(),
            pulse_protocols::DEFAULT_VSOCK_PORT
        )
    }

    /// Everything the guest wrote on its serial console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// What the guest wrote on its virtio-console.
    pub fn hvc_output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hvc0.log")).unwrap_or_default()
    }

    /// The guest's directory (console logs, sockets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for the agent's readiness line, then connects. Returns the
    /// clients and the time from the VM's start to the first answer.
    pub async fn connect_agent(&mut self, timeout: Duration) -> Result<(Agent, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.vm.exit_reason() {
                bail!(
                    "the VM stopped ({exit:?}) before its agent announced itself\n{}",
                    tail(&self.console(), 40)
                );
            }
            if self.ready.announced(deadline)? {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not announce itself within {timeout:?}\n{}",
                    tail(&self.console(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let agent = Agent::connect(&self.agent_addr(), left.max(Duration::from_secs(5))).await?;
        agent.check().await?;
        Ok((agent, self.started.elapsed()))
    }
}

impl EmbeddedGuest {
    /// Awaits `work` (calls into the guest) while the VM runs. A VM that stops first (an L2
    /// triple fault in the nested rig) ends the wait at once with its exit and the console's
    /// tail, instead of leaving the calls to their own deadlines (600 s for a read).
    pub async fn while_running<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(exit) = self.vm.exit_reason() {
                        bail!(
                            "the VM stopped ({exit:?}) while the guest was at work\n{}",
                            tail(&self.console(), 40)
                        );
                    }
                }
            }
        }
    }

    /// What to print when a call into the guest gets no answer: the serial console's tail,
    /// then every device's rings and vectors twice, 5 s apart (a ring whose avail index stays
    /// ahead of its used index is stalled; one whose used index passed used_event with no
    /// new interrupt lost one).
    pub async fn stall_report(&self) -> String {
        let first = self.vm.device_stats();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let second = self.vm.device_stats();
        let mut out = format!(
            "VM exit: {:?}\n--- serial console (tail) ---\n{}\n--- devices: rings and vectors, then 5 s later ---\n",
            self.vm.exit_reason(),
            tail(&self.console(), 60)
        );
        for (label, stats) in [("t0", &first), ("t0+5s", &second)] {
            for d in stats {
                out += &format!(
                    "{label} {} {:#x} status {:#x} msi {} legacy_sent {} completed {:?}\n",
                    d.device_type,
                    d.base,
                    d.status,
                    d.msi_enabled,
                    d.legacy_sent,
                    d.requests_completed
                );
                for r in &d.rings {
                    out += &format!("    ring {r:?}\n");
                }
                for v in &d.vectors {
                    out += &format!(
                        "    vector {} gsi {} sent {} dropped {} configured {} masked {}\n",
                        v.index, v.gsi, v.sent, v.dropped, v.configured, v.masked
                    );
                }
            }
        }
        out
    }
}

impl Drop for EmbeddedGuest {
    fn drop(&mut self) {
        self.vm.stop();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
