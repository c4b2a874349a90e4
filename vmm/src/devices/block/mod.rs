//! virtio-blk: N queues (`num_queues`), each served by its own worker thread, over a raw file.
//! Read, write, flush, get-id, discard and write-zeroes; read-only disks; EVENT_IDX and indirect
//! descriptors; one interrupt per completed batch.

pub mod backend;
pub mod media;
pub mod request;
pub(crate) mod worker;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::confine::ThreadKind;
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateError, Activation, VirtioDevice,
};
use crate::devices::worker::{FaultLog, Workers};
use backend::{Backend, BackendError};
pub use media::{BlockHandle, Media};
use request::{ID_BYTES, MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS, MAX_SEGMENTS};
pub use worker::QueueCounters;
use worker::QueueWorker;

/// Feature: `seg_max` is valid.
pub const F_SEG_MAX: u64 = 1 << 2;
/// Feature: read-only disk.
pub const F_RO: u64 = 1 << 5;
/// Feature: `blk_size` is valid.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// Feature: flush.
pub const F_FLUSH: u64 = 1 << 9;
/// Feature: multiple queues (`num_queues`).
pub const F_MQ: u64 = 1 << 12;
/// Feature: discard.
pub const F_DISCARD: u64 = 1 << 13;
/// Feature: write zeroes.
pub const F_WRITE_ZEROES: u64 = 1 << 14;

/// Default size of each queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Most queues a block device accepts.
pub const MAX_QUEUES: u16 = 64;

/// Settings of one block device.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// Disk image.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
    /// Queue count.
    pub queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// ID string for GET_ID (at most 20 bytes; default: the file name).
    pub serial: Option<String>,
}

/// Block device errors.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be used.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Queue count out of range.
    #[error("block device {path}: {queues} queues requested, 1 to {MAX_QUEUES} allowed")]
    Queues {
        /// Image.
        path: PathBuf,
        /// Requested.
        queues: u16,
    },
    /// Queue size not a power of two in range.
    #[error("block device {path}: queue size {size} must be a power of two from 2 to 32768")]
    QueueSize {
        /// Image.
        path: PathBuf,
        /// Requested.
        size: u16,
    },
}

/// A virtio-blk device.
pub struct Block {
    config: BlockConfig,
    media: Arc<Media>,
    /// The configured serial, or the image's file name: GET_ID's answer (cut to 20 bytes)
    /// and the device's id in reports (whole).
    serial: String,
    id: [u8; ID_BYTES],
    counters: Vec<Arc<QueueCounters>>,
    faults: Arc<FaultLog>,
    workers: Option<Workers>,
}

impl Block {
    /// Opens the image and builds the device.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        if config.queues == 0 || config.queues > MAX_QUEUES {
            return Err(BlockError::Queues {
                path: config.path.clone(),
                queues: config.queues,
            });
        }
        if !config.queue_size.is_power_of_two() || config.queue_size < 2 {
            return Err(BlockError::QueueSize {
                path: config.path.clone(),
                size: config.queue_size,
            });
        }
        let media = Arc::new(Media::open(&config.path, config.read_only)?);
        let serial = config.serial.clone().unwrap_or_else(|| {
            config
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let counters = (0..config.queues)
            .map(|_| Arc::new(QueueCounters::default()))
            .collect();
        Ok(Self {
            config,
            media,
            serial,
            id,
            counters,
            faults: Arc::new(FaultLog::new("block")),
            workers: None,
        })
    }

    /// Counters per queue.
    pub fn counters(&self) -> &[Arc<QueueCounters>] {
        &self.counters
    }

    /// The guest's mistakes this device saw.
    pub fn faults(&self) -> &Arc<FaultLog> {
        &self.faults
    }

    /// A handle to change the image while the VM runs.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle(self.media.clone())
    }
}

/// struct virtio_blk_config, little endian.
fn build_config_space(backend: &Backend, queues: u16) -> Vec<u8> {
    let seg_max = u32::try_from(MAX_SEGMENTS).unwrap_or(u32::MAX); // 128
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&backend.sectors().to_le_bytes()); // capacity
    c[12..16].copy_from_slice(&seg_max.to_le_bytes()); // seg_max
    c[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
    c[34..36].copy_from_slice(&queues.to_le_bytes()); // num_queues
                                                      // The request code refuses what goes beyond these limits.
    c[36..40].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
    c[40..44].copy_from_slice(&MAX_RANGE_SEGMENTS.to_le_bytes()); // max_discard_seg
    c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
    c[48..52].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    c[52..56].copy_from_slice(&MAX_RANGE_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; usize::from(self.config.queues)]
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH
            | F_MQ;
        if self.config.read_only {
            f |= F_RO;
        } else {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        f
    }

    fn name(&self) -> &'static str {
        "block"
    }

    fn id(&self) -> String {
        self.serial.clone()
    }

    fn queue_name(&self, index: u16) -> String {
        format!("req.{index}")
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Built on each read: the capacity follows the image (see `media`).
        let space = build_config_space(&self.media.backend(), self.config.queues);
        read_config_bytes(&space, offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.media.generation()
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The writable field (writeback) belongs to a feature Pulse does not offer.
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let mut workers = Workers::new()?;
        for q in std::mem::take(&mut activation.queues) {
            let index = q.index;
            let worker = QueueWorker {
                index,
                queue: q.queue,
                notifier: q.notifier,
                mem: activation.mem.clone(),
                media: self.media.clone(),
                id: self.id,
                counters: self.counters[usize::from(index)].clone(),
                more: false,
            };
            let stop_request = workers.stop_request()?;
            let ctx = activation.loop_context(&self.faults)?;
            workers = workers.spawn(ThreadKind::Block, format!("blk-q{index}"), move || {
                worker.run(ctx, stop_request)
            })?;
        }
        self.workers = Some(workers);
        self.media.set_interrupt(Some(activation.interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        self.media.set_interrupt(None);
        if let Some(workers) = self.workers.take() {
            workers.stop();
        }
    }

    fn completed_requests(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|c| c.completed.load(Ordering::Relaxed))
            .collect()
    }

    fn guest_faults(&self) -> crate::devices::worker::FaultCounts {
        self.faults.counts()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests;
