//! One device as the hostile driver holds it: bring-up steps and raw ring access.

use super::{CONFIG_VECTOR, QUEUE_VECTOR, WAIT_MS};
use crate::arch::Deadline;
use crate::virtio::mmio::{ring_doorbell, Window};
use crate::virtio::queue::{Virtq, MAX_QUEUES, QUEUE_SIZE_CAP};
use crate::virtio::{cpus, Kind};
use pulse_probe::virtio_spec::{self as spec, reg, status};
/// One device as the hostile driver holds it.
pub(super) struct HDev {
    pub(super) d: usize,
    pub(super) kind: Kind,
    pub(super) w: Window,
    pub(super) nq: u16,
    pub(super) qsize: u16,
    pub(super) vq: [Virtq; MAX_QUEUES],
    /// Free-running: next avail index to publish, next used entry to take.
    pub(super) avail: [u16; MAX_QUEUES],
    pub(super) used: [u16; MAX_QUEUES],
    pub(super) doorbell: [u64; MAX_QUEUES],
    /// Queue 0's MSI vector got only refused messages.
    pub(super) bsp_apic: u8,
}

impl HDev {
    pub(super) fn new(d: usize, kind: Kind, w: Window, nq: u16) -> Self {
        let notify = w.read32(reg::QUEUE_NOTIFY);
        let vendor = spec::vendor_features(w.read32(reg::VENDOR_ID)).unwrap_or(0);
        let doorbell =
            core::array::from_fn(
                |q| match spec::doorbell_offset(notify, q as u16, w.size()) {
                    Some(off) if vendor & reg::VENDOR_F_PER_QUEUE_NOTIFY != 0 => w.addr(off),
                    _ => w.addr(reg::QUEUE_NOTIFY),
                },
            );
        Self {
            d,
            kind,
            w,
            nq,
            qsize: QUEUE_SIZE_CAP,
            vq: [Virtq::new(d, 0, QUEUE_SIZE_CAP); MAX_QUEUES],
            avail: [0; MAX_QUEUES],
            used: [0; MAX_QUEUES],
            doorbell,
            bsp_apic: cpus()[0].1,
        }
    }

    pub(super) fn status(&self) -> u32 {
        self.w.read32(reg::STATUS)
    }

    pub(super) fn reset(&mut self) {
        self.w.write32(reg::STATUS, 0);
        self.avail = [0; MAX_QUEUES];
        self.used = [0; MAX_QUEUES];
    }

    /// Up to FEATURES_OK with VERSION_1 and `extra` (those offered).
    pub(super) fn negotiate(&self, extra: u64) -> Result<(), &'static str> {
        let w = &self.w;
        w.write32(reg::STATUS, status::ACKNOWLEDGE);
        w.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = w.read32(reg::DEVICE_FEATURES) as u64;
        w.write32(reg::DEVICE_FEATURES_SEL, 1);
        let offered = lo | (w.read32(reg::DEVICE_FEATURES) as u64) << 32;
        let accepted = offered & (spec::feature::VERSION_1 | extra);
        w.write32(reg::DRIVER_FEATURES_SEL, 0);
        w.write32(reg::DRIVER_FEATURES, accepted as u32);
        w.write32(reg::DRIVER_FEATURES_SEL, 1);
        w.write32(reg::DRIVER_FEATURES, (accepted >> 32) as u32);
        w.write32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        if w.read32(reg::STATUS) & status::FEATURES_OK == 0 {
            return Err("hostile: the device refused well-formed features");
        }
        Ok(())
    }

    /// Sets up every queue (queue `bad_q`'s descriptor table far outside guest RAM).
    pub(super) fn setup_queues(&mut self, bad_q: Option<u16>) -> Result<(), &'static str> {
        let w = self.w;
        for q in 0..self.nq {
            w.write32(reg::QUEUE_SEL, q as u32);
            match spec::queue_size(w.read32(reg::QUEUE_NUM_MAX), QUEUE_SIZE_CAP) {
                Some(s) => self.qsize = self.qsize.min(s),
                None => return Err("hostile: a queue is missing"),
            }
        }
        if self.qsize < 16 {
            return Err("hostile: queues too small");
        }
        for q in 0..self.nq {
            let vq = Virtq::new(self.d, q as usize, self.qsize);
            vq.init();
            self.vq[q as usize] = vq;
            let desc = if bad_q == Some(q) {
                0xf_0000_0000
            } else {
                vq.desc_addr()
            };
            w.enable_queue(q, self.qsize, desc, vq.avail_addr(), vq.used_addr());
        }
        Ok(())
    }

    /// MSI: the configuration vector and every queue vector at the BSP, except queue 0's when
    /// `refuse_q0`, which gets only messages the VMM must refuse.
    pub(super) fn program_msi(&self, refuse_q0: bool) {
        let w = &self.w;
        w.write16(reg::MSI_CSR, reg::MSI_CSR_ENABLE);
        let update = |index: u16, lo: u32, hi: u32, data: u32| {
            w.write32(reg::MSI_ADDRESS_LOW, lo);
            w.write32(reg::MSI_ADDRESS_HIGH, hi);
            w.write32(reg::MSI_DATA, data);
            w.write16(reg::MSI_CMD, spec::msi_cmd(reg::MSI_CMD_UPDATE, index));
        };
        let lapic = spec::msi_address(self.bsp_apic);
        for v in 0..=self.nq {
            if v == 1 && refuse_q0 {
                // NMI, SMI, INIT, ExtINT, an exception vector, outside the LAPIC window, a
                // high half: each one refused, the vector keeps having no message.
                for data in [0x400 | 0x41, 0x200 | 0x41, 0x500, 0x700 | 0x41, 0x02] {
                    update(1, lapic, 0, data);
                }
                update(1, 0xfec0_0000, 0, 0x41);
                update(1, lapic, 1, 0x41);
                continue;
            }
            let vector = if v == 0 {
                CONFIG_VECTOR + self.d as u8
            } else {
                QUEUE_VECTOR
            };
            update(v, lapic, 0, vector as u32);
        }
    }

    /// Reset, features, queues, MSI, DRIVER_OK.
    pub(super) fn bring_up(&mut self, extra: u64, refuse_q0: bool) -> Result<(), &'static str> {
        self.reset();
        self.negotiate(extra)?;
        self.setup_queues(None)?;
        self.program_msi(refuse_q0);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w.write32(reg::STATUS, st | status::DRIVER_OK);
        let now = self.status();
        if now & status::DRIVER_OK == 0 || now & status::DEVICE_NEEDS_RESET != 0 {
            return Err("hostile: a clean bring-up did not reach DRIVER_OK");
        }
        Ok(())
    }

    pub(super) fn desc(&self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.vq[q as usize].set_desc(i, addr, len, flags, next);
    }

    pub(super) fn kick(&self, q: u16) {
        ring_doorbell(self.doorbell[q as usize], q as u32);
    }

    /// Puts `heads` in the avail ring, publishes them with one index store, rings once.
    pub(super) fn publish(&mut self, q: u16, heads: &[u16]) {
        let qi = q as usize;
        for &h in heads {
            self.vq[qi].put_avail(self.avail[qi], h);
            self.avail[qi] = self.avail[qi].wrapping_add(1);
        }
        self.vq[qi].publish(self.avail[qi]);
        self.kick(q);
    }

    /// Used entries the device added since the last `take`.
    pub(super) fn new_used(&self, q: u16) -> u16 {
        self.vq[q as usize]
            .used_idx()
            .wrapping_sub(self.used[q as usize])
    }

    /// Waits until `n` new used entries are there (or `ms` pass); returns how many are.
    pub(super) fn wait_used(&self, q: u16, n: u16, ms: u64) -> u16 {
        Deadline::after_ms(ms).wait_for(|| self.new_used(q) >= n);
        self.new_used(q)
    }

    /// Publishes the chain at `head` on queue `q` and takes it back; false when the device
    /// did not return it in time.
    pub(super) fn roundtrip(&mut self, q: u16, head: u16) -> bool {
        self.publish(q, &[head]);
        if self.wait_used(q, 1, WAIT_MS) == 0 {
            return false;
        }
        self.take(q);
        true
    }

    /// Publishes queue `q`'s avail index `past` entries beyond a full ring (more than the
    /// driver can have made available: the queue is broken) and rings; whether the device then
    /// asks for a reset (DEVICE_NEEDS_RESET) in time.
    pub(super) fn break_queue(&self, q: u16, past: u16) -> bool {
        let far = self.avail[q as usize].wrapping_add(self.qsize + past);
        self.vq[q as usize].publish(far);
        self.kick(q);
        Deadline::after_ms(WAIT_MS).wait_for(|| self.status() & status::DEVICE_NEEDS_RESET != 0)
    }

    /// Takes the next used entry: (head, length).
    pub(super) fn take(&mut self, q: u16) -> (u32, u32) {
        let qi = q as usize;
        let e = self.vq[qi].used_elem(self.used[qi]);
        self.used[qi] = self.used[qi].wrapping_add(1);
        e
    }
}
