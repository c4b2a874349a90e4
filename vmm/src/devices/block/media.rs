//! The disk image behind a block device, shared by its queue workers and by the VM's
//! [`BlockHandle`], so that the image can change while the guest runs: the host writes a new
//! image into a slot (or points the slot at another file), the device re-opens it, updates
//! the capacity it reports and raises a configuration-change interrupt, and the guest driver
//! re-reads the capacity (as Firecracker's drive rescan does, in place of hotplug).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::backend::{Backend, BackendError};
use crate::interrupts::Interrupt;

/// The current image and what is needed to replace it.
pub struct Media {
    backend: RwLock<Arc<Backend>>,
    path: Mutex<PathBuf>,
    read_only: bool,
    /// Bumped on every change; the transport adds it to ConfigGeneration.
    generation: AtomicU32,
    /// The device's interrupt while the driver runs it (for the config-change interrupt).
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

impl Media {
    /// Opens the image at `path`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        Ok(Self::with_backend(
            Backend::open(path, read_only)?,
            path.to_path_buf(),
        ))
    }

    /// Wraps an open image.
    pub fn with_backend(backend: Backend, path: PathBuf) -> Self {
        Self {
            read_only: backend.read_only(),
            backend: RwLock::new(Arc::new(backend)),
            path: Mutex::new(path),
            generation: AtomicU32::new(0),
            interrupt: Mutex::new(None),
        }
    }

    /// The image now. Workers take it once per pass over their queue, so a request never sees
    /// two images.
    pub fn backend(&self) -> Arc<Backend> {
        self.backend
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How often the image changed.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The image's path.
    pub fn path(&self) -> PathBuf {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        *self.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = interrupt;
    }

    /// Re-opens the image (at `path`, or where it was), and tells a running guest driver that
    /// the configuration changed. Returns the new capacity in bytes. On error nothing changes.
    pub fn reload(&self, path: Option<&Path>) -> Result<u64, BackendError> {
        let path = path.map_or_else(|| self.path(), Path::to_path_buf);
        let backend = Backend::open(&path, self.read_only)?;
        let size = backend.size();
        *self.backend.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(backend);
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(irq) = self
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            irq.trigger_config();
        }
        Ok(size)
    }
}

/// Changes a block device's image from outside the VM's threads.
#[derive(Clone)]
pub struct BlockHandle(pub(super) Arc<Media>);

impl BlockHandle {
    /// Re-reads the image after the host rewrote it in place (`path` None), or switches to
    /// the image at `path`; the guest gets a configuration-change interrupt and sees the new
    /// capacity. Returns the capacity in bytes.
    pub fn reload(&self, path: Option<&Path>) -> Result<u64, BackendError> {
        self.0.reload(path)
    }

    /// The image's path now.
    pub fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// The capacity in bytes now.
    pub fn capacity(&self) -> u64 {
        self.0.backend().size()
    }
}

impl std::fmt::Debug for BlockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlockHandle").field(&self.path()).finish()
    }
}
