//! virtio-console with one port (port 0, the guest's `hvc0`): receiveq0 (index 0) carries
//! host input to the guest, transmitq0 (index 1) the guest's output. No MULTIPORT, no SIZE, no
//! EMERG_WRITE: a guest sees a plain console. One worker thread serves both queues and the sink
//! ([`sink`]: a file, stdout/stdin, a unix socket Pulse listens on, or nothing).

pub mod sink;
pub(crate) mod worker;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use vmm_sys_util::eventfd::EventFd;

use crate::confine::{self, ThreadKind};
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateError, Activation, VirtioDevice,
};
use crate::devices::worker::FaultLog;
use sink::Sink;
use worker::{ConsoleWorker, Vring};
pub use worker::{QueueCounters, MAX_INPUT_CHUNK, MAX_OUTPUT_CHAIN};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// receiveq0: input to the guest.
pub const RECEIVEQ: u16 = 0;
/// transmitq0: output from the guest.
pub const TRANSMITQ: u16 = 1;

/// Where the console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConsoleSink {
    /// Output to a file (created or truncated); no input.
    File(PathBuf),
    /// Output to stdout, input from stdin.
    Stdout,
    /// Pulse listens on this unix socket; one client at a time gets the output and gives the
    /// input (see [`sink`]).
    UnixSocket(PathBuf),
    /// Output discarded, no input.
    #[default]
    None,
}

/// Why a console sink does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid console sink '{0}' (expected file:PATH, stdio, unix:PATH or none)")]
pub struct ConsoleSinkError(pub String);

impl FromStr for ConsoleSink {
    type Err = ConsoleSinkError;

    /// `file:PATH`, `stdio` (or `stdout`), `unix:PATH`, `none` (or `null`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        match s {
            "stdio" | "stdout" => Ok(Self::Stdout),
            "none" | "null" => Ok(Self::None),
            _ => {
                if let Some(p) = s.strip_prefix("file:").and_then(path) {
                    Ok(Self::File(p))
                } else if let Some(p) = s.strip_prefix("unix:").and_then(path) {
                    Ok(Self::UnixSocket(p))
                } else {
                    Err(ConsoleSinkError(s.to_string()))
                }
            }
        }
    }
}

impl fmt::Display for ConsoleSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Stdout => f.write_str("stdio"),
            Self::UnixSocket(p) => write!(f, "unix:{}", p.display()),
            Self::None => f.write_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for ConsoleSink {
    /// The string form (see [`ConsoleSink::from_str`]).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Settings of the console device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Where output goes and input comes from.
    pub sink: ConsoleSink,
}

impl FromStr for ConsoleConfig {
    type Err = ConsoleSinkError;

    /// The sink's string form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self { sink: s.parse()? })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleConfigTable {
    sink: ConsoleSink,
}

impl From<ConsoleConfigTable> for ConsoleConfig {
    fn from(t: ConsoleConfigTable) -> Self {
        Self { sink: t.sink }
    }
}

impl<'de> Deserialize<'de> for ConsoleConfig {
    /// `"unix:/run/pulse/console.sock"`, or a table `{ sink = "..." }`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::config::string_or_table::<_, _, ConsoleConfigTable>(
            d,
            "a console sink (file:PATH, stdio, unix:PATH, none) or { sink = ... }",
        )
    }
}

/// Console errors.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file cannot be opened.
    #[error("console: cannot open {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket cannot be bound.
    #[error("console: cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Length of the config space: cols, rows, max_nr_ports, emerg_wr.
pub const CONFIG_LEN: usize = 12;

struct Running {
    kill: EventFd,
    thread: JoinHandle<Sink>,
}

/// A virtio-console device.
pub struct Console {
    config: ConsoleConfig,
    sink: Option<Sink>,
    counters: Vec<Arc<QueueCounters>>,
    connections: Arc<AtomicU64>,
    faults: Arc<FaultLog>,
    running: Option<Running>,
}

impl Console {
    /// Opens the sink (creates the file, binds the socket) and builds the device.
    pub fn new(config: ConsoleConfig) -> Result<Self, ConsoleError> {
        let sink = match &config.sink {
            ConsoleSink::File(path) => Sink::file(path).map_err(|source| ConsoleError::File {
                path: path.clone(),
                source,
            })?,
            ConsoleSink::Stdout => Sink::stdio(),
            ConsoleSink::UnixSocket(path) => {
                Sink::unix(path).map_err(|source| ConsoleError::Bind {
                    path: path.clone(),
                    source,
                })?
            }
            ConsoleSink::None => Sink::none(),
        };
        Ok(Self::with_sink(config, sink))
    }

    fn with_sink(config: ConsoleConfig, sink: Sink) -> Self {
        Self {
            config,
            sink: Some(sink),
            counters: vec![Arc::default(), Arc::default()],
            connections: Arc::default(),
            faults: Arc::new(FaultLog::new("console")),
            running: None,
        }
    }

    /// The guest's mistakes this device saw.
    pub fn faults(&self) -> &Arc<FaultLog> {
        &self.faults
    }

    /// Counters per queue: receiveq0 (input), transmitq0 (output).
    pub fn counters(&self) -> &[Arc<QueueCounters>] {
        &self.counters
    }

    /// Socket clients accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The configured sink.
    pub fn sink(&self) -> &ConsoleSink {
        &self.config.sink
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn name(&self) -> &'static str {
        "console"
    }

    fn id(&self) -> String {
        // A VM has at most one virtio-console, and a Linux guest names its first `hvc0`.
        "hvc0".into()
    }

    fn queue_name(&self, index: u16) -> String {
        if index == RECEIVEQ {
            "input".into()
        } else {
            "output".into()
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (no SIZE), max_nr_ports (1; meaningful only with MULTIPORT), emerg_wr.
        let mut c = [0u8; CONFIG_LEN];
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr belongs to EMERG_WRITE, which is not offered.
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let mut slots = activation.take_queues(2);
        let mut vring = |index: u16| {
            let q = slots[usize::from(index)]
                .take()
                .ok_or(ActivateError::QueueNotReady(usize::from(index)))?;
            Ok::<_, ActivateError>(Vring::new(q, self.counters[usize::from(index)].clone()))
        };
        let rx = vring(RECEIVEQ)?;
        let tx = vring(TRANSMITQ)?;
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let sink = self.sink.take().unwrap_or_else(Sink::none);
        let stop = kill.try_clone()?;
        let ctx = activation.loop_context(&self.faults)?;
        let worker = ConsoleWorker::new(activation.mem, rx, tx, sink, self.connections.clone());
        let thread = confine::spawn(ThreadKind::Console, "console".into(), move || {
            worker.run(ctx, stop)
        })?;
        self.running = Some(Running { kill, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.kill.write(1);
            match running.thread.join() {
                Ok(sink) => self.sink = Some(sink),
                Err(_) => tracing::error!("console worker panicked; its sink is gone"),
            }
        }
    }

    fn completed_requests(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.chains.load(Ordering::Relaxed))
            .collect()
    }

    fn guest_faults(&self) -> crate::devices::worker::FaultCounts {
        self.faults.counts()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests;
