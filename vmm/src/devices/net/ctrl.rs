//! The control queue (VIRTIO_NET_F_CTRL_VQ), served on queue pair 0's thread.
//!
//! | class | command | answer |
//! |---|---|---|
//! | MQ | VQ_PAIRS_SET (1..=max pairs) | OK: queues of the other pairs are attached to / detached from the tap, their workers poll accordingly |
//! | MAC | ADDR_SET (6 bytes, unicast) | OK: the config-space MAC changes (no filtering: the tap delivers what the host sends) |
//! | MAC | TABLE_SET | ERR: needs CTRL_RX, not offered |
//! | GUEST_OFFLOADS | SET (subset of the negotiated guest offloads) | OK: `TUNSETOFFLOAD` |
//! | RX, ANNOUNCE, VLAN, anything else | | ERR |
//!
//! A chain without a writable ack byte is returned unused and counted; a command that is
//! malformed (short, too long, wrong order of readable/writable parts) is answered ERR.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use super::worker::{bump, Vring};
use super::{
    tun_offload, ConfigSpace, F_CTRL_GUEST_OFFLOADS, F_CTRL_MAC_ADDR, F_MQ, GUEST_OFFLOAD_MASK,
};
use crate::devices::worker::{guest_queue, FaultLog, GuestFault, LoopContext, Served, BUDGET};
use crate::memory::GuestMemoryMmap;

/// Command classes and commands (virtio 1.2, 5.1.6.5): those the probe guest's drivers send
/// too, from pulse-virtio-spec, and the others the device answers.
pub mod cmd {
    pub use pulse_virtio_spec::net::ctrl::*;
    /// VLAN filtering class.
    pub const CLASS_VLAN: u8 = 2;
    /// Gratuitous-announcement class.
    pub const CLASS_ANNOUNCE: u8 = 3;
    /// Guest offloads class.
    pub const CLASS_GUEST_OFFLOADS: u8 = 5;
    /// Offloads in use.
    pub const GUEST_OFFLOADS_SET: u8 = 0;
}

/// Longest command accepted (class, command and data).
pub const MAX_COMMAND_LEN: usize = 4096;

/// What the control queue changes, seen by all workers and the device.
pub struct Shared {
    /// The tap.
    pub tap: Arc<Tap>,
    /// Negotiated features.
    pub features: u64,
    /// Queue pairs that have a worker.
    pub served_pairs: u16,
    /// Pairs in use: 1 until the driver sends VQ_PAIRS_SET.
    active_pairs: AtomicU16,
    /// Configuration space (the MAC changes).
    pub config: Arc<Mutex<ConfigSpace>>,
    /// Wake-ups of every worker, by pair.
    pub wakers: Vec<EventFd>,
    /// The guest's mistakes (the device's log, which outlives activations).
    pub faults: Arc<FaultLog>,
}

impl Shared {
    /// State for a freshly activated device: one pair in use.
    pub fn new(
        tap: Arc<Tap>,
        features: u64,
        served_pairs: u16,
        config: Arc<Mutex<ConfigSpace>>,
        wakers: Vec<EventFd>,
    ) -> Self {
        Self {
            tap,
            features,
            served_pairs,
            active_pairs: AtomicU16::new(1),
            config,
            wakers,
            faults: Arc::new(FaultLog::new("net")),
        }
    }

    /// Pairs in use.
    pub fn active_pairs(&self) -> u16 {
        self.active_pairs.load(Ordering::Acquire)
    }

    /// Puts pairs `0..pairs` in use: their tap queues attached, the others detached.
    pub fn set_active_pairs(&self, pairs: u16) -> bool {
        if let Err(e) = self.tap.set_active_queues(usize::from(pairs)) {
            tracing::warn!("{e}");
            return false;
        }
        self.active_pairs.store(pairs, Ordering::Release);
        for w in &self.wakers {
            let _ = w.write(1);
        }
        true
    }
}

/// The control queue and what it acts on.
pub struct Ctrl {
    /// The queue.
    pub vring: Vring,
    /// Device state.
    pub shared: Arc<Shared>,
}

impl Ctrl {
    /// Answers available commands (up to a budget); one interrupt for the batch. Returns
    /// whether commands are left.
    pub fn process(&mut self, mem: &GuestMemoryMmap, ctx: &mut LoopContext) -> bool {
        if ctx.is_broken(self.vring.index) {
            return false;
        }
        let counters = self.vring.counters.clone();
        let (queue, this) = (&mut self.vring.queue, &self.shared);
        let (done, result) = guest_queue::drain(queue, mem, ctx.faults(), BUDGET, |chain| {
            let mut command = Vec::new();
            let mut ack: Option<GuestAddress> = None;
            let mut malformed = false;
            let mut last_has_next = true;
            let mut any = false;
            for desc in chain {
                any = true;
                last_has_next = desc.has_next();
                if desc.is_write_only() {
                    if ack.is_none() && desc.len() >= 1 {
                        ack = Some(desc.addr());
                    }
                    continue;
                }
                let len = desc.len() as usize;
                if ack.is_some() || command.len() + len > MAX_COMMAND_LEN {
                    malformed = true;
                    continue;
                }
                let at = command.len();
                command.resize(at + len, 0);
                if mem.read_slice(&mut command[at..], desc.addr()).is_err() {
                    malformed = true;
                }
            }
            malformed |= !any || last_has_next;
            let Some(ack) = ack else {
                bump(&counters.errors, 1);
                ctx.guest_fault(GuestFault::MalformedChain, &"control command without ack");
                return Served::Used(0);
            };
            let status = if malformed || command.len() < 2 {
                ctx.guest_fault(GuestFault::MalformedChain, &"malformed control command");
                cmd::ERR
            } else {
                command_for(this, command[0], command[1], &command[2..])
            };
            if mem.write_obj(status, ack).is_ok() {
                if status == cmd::OK {
                    bump(&counters.frames, 1);
                } else {
                    bump(&counters.errors, 1);
                }
                Served::Used(1)
            } else {
                bump(&counters.errors, 1);
                Served::Used(0)
            }
        });
        bump(&counters.errors, done.skipped);
        if let Err(fault) = result {
            ctx.queue_fault(self.vring.index, fault);
        }
        if done.used {
            self.vring.signal(mem, ctx.interrupt());
        }
        done.more
    }

    /// Runs one command; returns the ack.
    pub fn command(&self, class: u8, command: u8, data: &[u8]) -> u8 {
        command_for(&self.shared, class, command, data)
    }
}

/// Runs one command against the device state; returns the ack.
fn command_for(shared: &Shared, class: u8, command: u8, data: &[u8]) -> u8 {
    let features = shared.features;
    let ok = match (class, command) {
        (cmd::CLASS_MQ, cmd::MQ_VQ_PAIRS_SET) if features & F_MQ != 0 => {
            match <[u8; 2]>::try_from(data).map(u16::from_le_bytes) {
                Ok(pairs) if (1..=shared.served_pairs).contains(&pairs) => {
                    shared.set_active_pairs(pairs)
                }
                _ => false,
            }
        }
        (cmd::CLASS_MAC, cmd::MAC_ADDR_SET) if features & F_CTRL_MAC_ADDR != 0 => {
            match <[u8; 6]>::try_from(data) {
                Ok(mac) if mac[0] & 1 == 0 => {
                    let mut config = shared.config.lock().unwrap_or_else(|e| e.into_inner());
                    config.set_mac(mac);
                    true
                }
                _ => false,
            }
        }
        (cmd::CLASS_GUEST_OFFLOADS, cmd::GUEST_OFFLOADS_SET)
            if features & F_CTRL_GUEST_OFFLOADS != 0 =>
        {
            match <[u8; 8]>::try_from(data).map(u64::from_le_bytes) {
                Ok(offloads) if offloads & !(features & GUEST_OFFLOAD_MASK) == 0 => {
                    match shared.tap.set_offload(tun_offload(offloads)) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!("{e}");
                            false
                        }
                    }
                }
                _ => false,
            }
        }
        _ => false,
    };
    if ok {
        cmd::OK
    } else {
        tracing::debug!(class, command, "net control command refused");
        cmd::ERR
    }
}
