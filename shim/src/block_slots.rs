//! The pod's block slots: the virtio-blk devices its VM boots with, each over an empty
//! placeholder file in the sandbox directory, into which the shim later writes one
//! container's rootfs disk. [`BlockSlots`] owns their whole life: the placeholders, the
//! serials the guest finds a disk by, which container holds which slot, the size of the
//! image in it, and emptying it again. The VMM only hears that a slot's image changed size
//! ([`crate::hypervisor::Hypervisor::resize_disk`]).

use std::path::PathBuf;

use crate::hypervisor::SandboxPaths;

/// A slot's file could not be made or emptied.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct SlotError {
    /// `creating`, `opening`, `emptying`.
    pub what: &'static str,
    /// The slot's image.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// One slot as the VM boots with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotDisk {
    /// The image file (empty until a disk is attached).
    pub image: PathBuf,
    /// The serial the guest reads in `/sys/block/*/serial`.
    pub serial: String,
}

/// The serial of block slot `slot`, as the guest sees it in `/sys/block/*/serial`.
pub fn serial(slot: usize) -> String {
    format!("pulse-slot-{slot}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot {
    holder: Option<String>,
    /// Times a disk was attached here: fresh slots are preferred, so that the
    /// guest never sees a reused slot before it noticed the last detach.
    uses: u32,
    /// The size of the image in it; 0: empty.
    bytes: u64,
}

/// The pod's block slots (see the module).
#[derive(Debug, Clone)]
pub struct BlockSlots {
    paths: SandboxPaths,
    slots: Vec<Slot>,
}

impl BlockSlots {
    /// `count` empty slots with their images in `paths`' directory.
    pub fn new(paths: &SandboxPaths, count: usize) -> Self {
        Self {
            paths: paths.clone(),
            slots: vec![Slot::default(); count],
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The image file behind `slot`.
    pub fn image(&self, slot: usize) -> PathBuf {
        self.paths.slot_image(slot)
    }

    /// The slots as the VM boots with them, in slot order.
    pub fn disks(&self) -> Vec<SlotDisk> {
        (0..self.len())
            .map(|slot| SlotDisk {
                image: self.image(slot),
                serial: serial(slot),
            })
            .collect()
    }

    /// Creates each slot's empty (0-byte), private placeholder, before the VM boots.
    pub fn create_placeholders(&self) -> Result<(), SlotError> {
        for slot in 0..self.len() {
            let path = self.image(slot);
            crate::private_fs::create_file(&path).map_err(|source| SlotError {
                what: "creating",
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// Takes a free slot for `holder`: the least-used one, lowest index first.
    pub fn take(&mut self, holder: &str) -> Option<usize> {
        if self.slot_of(holder).is_some() {
            return None;
        }
        let index = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.holder.is_none())
            .min_by_key(|(i, s)| (s.uses, *i))
            .map(|(i, _)| i)?;
        let slot = &mut self.slots[index];
        slot.holder = Some(holder.to_string());
        slot.uses += 1;
        Some(index)
    }

    /// The slot `holder` has.
    pub fn slot_of(&self, holder: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.holder.as_deref() == Some(holder))
    }

    /// Records that the image in `slot` now has `bytes` bytes.
    pub fn attached(&mut self, slot: usize, bytes: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.bytes = bytes;
        }
    }

    /// The size of the image in `slot` (0: empty, or no such slot).
    pub fn bytes(&self, slot: usize) -> u64 {
        self.slots.get(slot).map_or(0, |s| s.bytes)
    }

    /// Frees `holder`'s slot and empties its image (0 bytes); returns the slot, whose
    /// device the VMM must then resize. The slot is freed even when emptying fails.
    pub fn release(&mut self, holder: &str) -> Option<(usize, Result<(), SlotError>)> {
        let index = self.slot_of(holder)?;
        let slot = &mut self.slots[index];
        slot.holder = None;
        slot.bytes = 0;
        Some((index, self.empty(index)))
    }

    fn empty(&self, slot: usize) -> Result<(), SlotError> {
        let path = self.image(slot);
        let fail = |what| {
            let path = path.clone();
            move |source| SlotError { what, path, source }
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(fail("opening"))?;
        file.set_len(0).map_err(fail("emptying"))
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.slots.iter().filter(|s| s.holder.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn slots_in(dir: &Path, count: usize) -> BlockSlots {
        let paths = SandboxPaths::new(dir, "ns", "p").unwrap();
        crate::private_fs::create_dir(&paths.dir).unwrap();
        BlockSlots::new(&paths, count)
    }

    #[test]
    fn slots_prefer_fresh_ones_and_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = slots_in(dir.path(), 3);
        t.create_placeholders().unwrap();
        assert_eq!(t.take("a"), Some(0));
        assert_eq!(t.take("a"), None, "one slot per holder");
        assert_eq!(t.take("b"), Some(1));
        assert_eq!(t.release("a").map(|(slot, _)| slot), Some(0));
        assert_eq!(t.take("c"), Some(2), "an unused slot before a reused one");
        assert_eq!(t.take("d"), Some(0));
        assert_eq!(t.take("e"), None, "full");
        assert_eq!(t.used(), 3);
        assert_eq!(t.slot_of("b"), Some(1));
        assert!(t.release("zz").is_none());
        assert_eq!(serial(2), "pulse-slot-2");
    }

    #[test]
    fn slot_placeholders_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let slots = slots_in(dir.path(), 2);
        slots.create_placeholders().unwrap();
        for slot in 0..2 {
            assert_eq!(
                crate::private_fs::mode_of(&slots.image(slot)).unwrap(),
                0o600
            );
        }
    }

    #[test]
    fn a_released_slot_is_emptied_and_the_disks_name_their_serials() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = slots_in(dir.path(), 2);
        slots.create_placeholders().unwrap();
        let disks = slots.disks();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[1].serial, "pulse-slot-1");
        assert_eq!(disks[1].image, slots.image(1));
        let slot = slots.take("c1").unwrap();
        std::fs::write(slots.image(slot), [7u8; 4096]).unwrap();
        slots.attached(slot, 4096);
        assert_eq!(slots.bytes(slot), 4096);
        let (released, emptied) = slots.release("c1").unwrap();
        emptied.unwrap();
        assert_eq!(released, slot);
        assert_eq!(slots.bytes(slot), 0);
        assert_eq!(std::fs::metadata(slots.image(slot)).unwrap().len(), 0);
        std::fs::remove_file(slots.image(1)).unwrap();
        slots.take("c2").unwrap();
        let err = slots.release("c2").unwrap().1.unwrap_err().to_string();
        assert!(
            err.starts_with("opening ") && err.contains("slot-1.img"),
            "{err}"
        );
        assert_eq!(slots.used(), 0, "freed even when emptying failed");
    }
}
