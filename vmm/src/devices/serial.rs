//! COM1: a 16550A UART from `vm-superio`, its output to stdout, a file, a capture buffer or
//! nowhere, its input from the event loop, and its interrupt through an irqfd on IOAPIC pin 4.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::metrics::VmMetrics;

/// Where the guest's serial output goes.
#[derive(Clone, Debug, Default)]
pub enum SerialOutput {
    /// This process's stdout (and input from stdin).
    #[default]
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    None,
    /// An in-memory buffer, optionally echoed to stderr (used by the probe and tests).
    Capture {
        /// The buffer.
        buffer: Arc<Mutex<Vec<u8>>>,
        /// Also copy to stderr.
        echo: bool,
    },
}

impl std::str::FromStr for SerialOutput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" | "stdout" => Ok(Self::Stdout),
            "none" | "null" => Ok(Self::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                _ => Err(format!(
                    "invalid serial output '{s}' (expected stdio, file:PATH or none)"
                )),
            },
        }
    }
}

/// The serial interrupt: a write to an eventfd that KVM turns into an IOAPIC pin edge.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

struct Sink {
    inner: Box<dyn Write + Send>,
    metrics: Arc<VmMetrics>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.metrics.mark_first_output();
        // A sink that fails (a closed stdout) must not stall the guest: drop the bytes.
        let _ = self.inner.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

struct CaptureWriter {
    buffer: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        if self.echo {
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the writer for `output`.
pub fn open_output(output: &SerialOutput) -> io::Result<Box<dyn Write + Send>> {
    Ok(match output {
        SerialOutput::Stdout => Box::new(io::stdout()),
        SerialOutput::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)?,
        ),
        SerialOutput::None => Box::new(io::sink()),
        SerialOutput::Capture { buffer, echo } => Box::new(CaptureWriter {
            buffer: buffer.clone(),
            echo: *echo,
        }),
    })
}

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Sink>,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, metrics: Arc<VmMetrics>) -> Self {
        Self {
            uart: Serial::new(
                EventFdTrigger(irq),
                Sink {
                    inner: out,
                    metrics,
                },
            ),
        }
    }

    /// Feeds host input to the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = bytes.len().min(room);
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (&mut *data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.uart.write(offset, *byte) {
                tracing::warn!("serial write failed: {e:?}");
            }
        }
    }
}

/// Opens a file for serial output, for callers that want the error early.
pub fn check_output(output: &SerialOutput) -> io::Result<()> {
    if let SerialOutput::File(path) = output {
        File::options().create(true).append(true).open(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn output_goes_to_the_capture_and_raises_the_interrupt() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let out = open_output(&SerialOutput::Capture {
            buffer: buffer.clone(),
            echo: false,
        })
        .unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let metrics = Arc::new(VmMetrics::new(Instant::now()));
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), out, metrics.clone());
        // Enable the "transmitter holding register empty" interrupt, then send two bytes.
        dev.write(1, &[0x02]);
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&buffer.lock().unwrap()[..], b"hi");
        assert!(irq.read().unwrap() >= 1);
        assert!(metrics.snapshot().first_output_ms.is_some());
        // Input arrives in the receive buffer.
        assert_eq!(dev.enqueue_input(b"x"), 1);
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(&byte, b"x");
        // Wide accesses are ignored.
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn output_specs_parse() {
        assert!(matches!("stdio".parse(), Ok(SerialOutput::Stdout)));
        assert!(matches!("none".parse(), Ok(SerialOutput::None)));
        assert!(matches!("file:/tmp/x".parse(), Ok(SerialOutput::File(_))));
        assert!("file:".parse::<SerialOutput>().is_err());
        assert!("tcp:1".parse::<SerialOutput>().is_err());
    }
}
