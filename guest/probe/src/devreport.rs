//! What the probe reports about each virtio device (`"devices":[...]` in the JSON line), and
//! the rules that decide whether a device passed.

use crate::errors::ErrorList;
use crate::json::{Array, Object};
use core::fmt::Write;

/// Most MSI vectors reported per device (config + 16 queues).
pub const MAX_VECTORS: usize = 17;

/// One MSI vector: index 0 = configuration change, q+1 = queue q.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorReport {
    pub index: u16,
    /// IDT vector it is programmed with.
    pub vector: u8,
    /// Owner CPU (index) and its APIC id: where the message is aimed.
    pub cpu: u32,
    pub apic_id: u32,
    /// Interrupts taken on the IDT vector, all CPUs together.
    pub received: u32,
    /// Interrupts taken on other CPUs than the owner.
    pub elsewhere: u32,
    /// Batches the queue ran (an MSI queue vector should receive exactly this many).
    pub batches: u32,
    /// Interrupts expected on top of the batches (the mask test's one request).
    pub extra: u32,
    /// Times the queue was re-armed after its interrupt was judged lost (the pacer's
    /// timeout): each may let one interrupt merge with a later one.
    pub blind_rearms: u32,
    /// What the vector must have received for the device to pass.
    pub expect: Expect,
}

/// What a queue vector must receive in MSI mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    /// One interrupt per batch (plus `extra`): the driver knows how many the device raises.
    #[default]
    Batches,
    /// At least one (the device's traffic decides how many).
    Some,
    /// Nothing in particular (a queue the workload does not use).
    Any,
}

/// Most queue pairs the probe drives on a net device (2 * 7 + 1 queues fit in 16).
pub const MAX_NET_PAIRS: usize = 7;

/// `"net"`: frames sent and received per queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetResult {
    pub pairs: u16,
    /// The control queue's VQ_PAIRS_SET: `None` if not needed (one pair).
    pub mq_set: Option<bool>,
    pub frames_per_pair: u32,
    pub rx_expected_per_pair: u32,
    pub tx_done: [u32; MAX_NET_PAIRS],
    pub rx_host: [u32; MAX_NET_PAIRS],
    /// Frames that were not the harness's (e.g. the host's own IPv6 traffic).
    pub rx_other: u32,
    pub bad_buffers: u32,
}

/// `"resize"`: the host changed the disk while the guest ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResizeResult {
    pub capacity_before: u64,
    pub capacity_after: u64,
    /// Configuration-change interrupts taken (MSI vector 0, or the legacy line's config bit).
    pub config_interrupts: u32,
    pub config_generation_moved: bool,
}

/// `"console"`: what went over hvc0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleResult {
    pub writes_done: u32,
    pub bytes_received: u32,
    pub echo_asked: bool,
    pub line_received: bool,
    pub echo_sent: bool,
}

/// `"vsock"`: what the echo server and the guest-initiated connection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockResult {
    pub guest_cid: u64,
    pub conns_expected: u32,
    pub bytes_expected: u32,
    /// Host connections accepted, and those echoed in full and then closed by the host.
    pub conns_accepted: u32,
    pub conns_done: u32,
    pub bytes_echoed: u64,
    /// The guest-initiated connection: `None` if not asked for, else whether the host's
    /// listener answered.
    pub connect: Option<bool>,
    pub events_expected: u32,
    pub events: u32,
    /// Packets that made no sense (unknown connection, short buffer).
    pub bad_packets: u32,
}

/// `"hostile"` (`probe.hostile=1`): what the probe did to the device as a hostile guest and
/// what it saw. Every rule it could observe is a check; a failed check is also an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostileResult {
    /// Rules checked from the guest's side (register writes the device must ignore, refuse,
    /// or answer with DEVICE_NEEDS_RESET), and those that held.
    pub checks: u32,
    pub checks_passed: u32,
    /// Hostile descriptor chains published; those the rules say come back (all but heads
    /// beyond the table); those that came back.
    pub chains: u32,
    pub chains_expected: u32,
    pub chains_returned: u32,
    /// Requests, packets, commands or notifications sent in floods, and the answers taken
    /// back (vsock RSTs, control-queue acks).
    pub flood: u32,
    pub flood_answers: u32,
    /// After the guest broke a queue (avail index past the ring): DEVICE_NEEDS_RESET shown.
    pub broken_queue_seen: Option<bool>,
    /// Configuration-change interrupts taken.
    pub config_interrupts: u32,
    /// Another queue of the device served a request while one was broken (block).
    pub healthy_queue: Option<bool>,
    /// After all of it, a reset and a clean bring-up, the device served a request.
    pub alive: bool,
}

impl HostileResult {
    pub fn ok(&self) -> bool {
        self.checks_passed == self.checks
            && self.chains_returned == self.chains_expected
            && self.broken_queue_seen != Some(false)
            && self.healthy_queue != Some(false)
            && self.alive
    }
}

/// `"mask_test"`: interrupts seen while the vector was masked, and after unmasking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskTest {
    pub received_while_masked: u32,
    pub delivered_after_unmask: u32,
}

impl MaskTest {
    pub fn ok(&self) -> bool {
        self.received_while_masked == 0 && self.delivered_after_unmask == 1
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceReport {
    /// Window base, printed as lowercase `0x...` (the VMM matches on it).
    pub base: u64,
    pub device_id: u32,
    /// Not a device the probe drives (reported, not failed).
    pub skipped: bool,
    pub queues: u16,
    pub queue_size: u16,
    /// Running with per-queue MSI (false: the legacy line).
    pub msi: bool,
    /// Negotiated features.
    pub features: u64,
    pub vectors: [VectorReport; MAX_VECTORS],
    pub n_vectors: usize,
    pub legacy_irq: u32,
    pub legacy_received: u32,
    /// Requests completed by the workload (the mask test's excluded).
    pub requests: u32,
    pub request_errors: u32,
    pub data_errors: u32,
    /// Used-ring entries with an unexpected length (the device's accounting, not fatal).
    pub used_len_errors: u32,
    pub mask_test: Option<MaskTest>,
    pub vsock: Option<VsockResult>,
    pub net: Option<NetResult>,
    pub console: Option<ConsoleResult>,
    pub resize: Option<ResizeResult>,
    pub hostile: Option<HostileResult>,
    /// Something worth knowing that is not an error (skipped device, legacy fallback).
    pub note: Option<&'static str>,
    pub errors: ErrorList,
}

impl DeviceReport {
    pub fn new(base: u64, legacy_irq: u32) -> Self {
        Self {
            base,
            legacy_irq,
            ..Self::default()
        }
    }

    pub fn vectors(&self) -> &[VectorReport] {
        &self.vectors[..self.n_vectors]
    }

    /// Turns the counts into errors (call once, after the workload and the mask test):
    /// in MSI mode every queue vector must have received one interrupt per batch, on its
    /// owner CPU, and the configuration vector none.
    pub fn judge(&mut self) {
        if self.skipped {
            return;
        }
        if self.request_errors > 0 {
            self.errors.push("blk: requests failed");
        }
        if self.data_errors > 0 {
            self.errors
                .push("blk: read-back differs from what was written");
        }
        if let Some(n) = self.net {
            if n.mq_set == Some(false) {
                self.errors.push("net: the device refused VQ_PAIRS_SET");
            }
            let pairs = (n.pairs as usize).min(MAX_NET_PAIRS);
            if n.tx_done[..pairs].iter().any(|t| *t < n.frames_per_pair) {
                self.errors.push("net: frames not sent on every tx queue");
            }
            if n.rx_host[..pairs]
                .iter()
                .any(|r| *r < n.rx_expected_per_pair)
            {
                self.errors.push("net: host frames missing on an rx queue");
            }
        }
        if let Some(r) = self.resize {
            if r.config_interrupts == 0 {
                self.errors
                    .push("blk: no configuration-change interrupt after the resize");
            }
            if r.capacity_after <= r.capacity_before || !r.config_generation_moved {
                self.errors.push("blk: the new capacity was not seen");
            }
        }
        if let Some(c) = self.console {
            if c.writes_done == 0 {
                self.errors.push("console: the hello line was not written");
            }
            if c.echo_asked && !c.echo_sent {
                self.errors.push("console: no host input line to echo");
            }
        }
        if let Some(v) = self.vsock {
            if v.conns_done < v.conns_expected {
                self.errors
                    .push("vsock: not every host connection was echoed");
            }
            if v.connect == Some(false) {
                self.errors
                    .push("vsock: the guest-initiated connection failed");
            }
            if v.events < v.events_expected {
                self.errors.push("vsock: transport-reset event missing");
            }
        }
        if let Some(m) = self.mask_test {
            if !m.ok() {
                self.errors.push("msi: mask test failed");
            }
        }
        if let Some(h) = self.hostile {
            if h.checks_passed != h.checks {
                self.errors.push("hostile: a register rule did not hold");
            }
            if h.chains_returned != h.chains_expected {
                self.errors
                    .push("hostile: hostile chains not returned as the rules say");
            }
            if h.broken_queue_seen == Some(false) {
                self.errors
                    .push("hostile: a broken queue did not show DEVICE_NEEDS_RESET");
            }
            if h.healthy_queue == Some(false) {
                self.errors
                    .push("hostile: a healthy queue stopped serving beside a broken one");
            }
            if !h.alive {
                self.errors
                    .push("hostile: the device did not work after a reset");
            }
            // The hostile mode counts no interrupts per queue.
            return;
        }
        if !self.msi {
            return;
        }
        for i in 0..self.n_vectors {
            let v = self.vectors[i];
            if v.index == 0 {
                let resized = self.resize.map_or(0, |r| r.config_interrupts);
                if v.received != resized {
                    self.errors.push("msi: config vector received interrupts");
                }
                continue;
            }
            match v.expect {
                _ if v.expect != Expect::Any && v.received == 0 => self
                    .errors
                    .push("msi: a queue vector received no interrupt"),
                Expect::Batches if v.received != v.batches + v.extra => self
                    .errors
                    .push("msi: queue interrupts differ from batches"),
                _ => {}
            }
            if v.elsewhere != 0 {
                self.errors.push("msi: interrupt taken on another cpu");
            }
        }
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Writes the device as the next element of `devices`.
    pub fn write<W: Write + ?Sized>(&self, devices: &mut Array<'_, W>) {
        let mut o = devices.object();
        o.hex("base", self.base)
            .u64("device_id", self.device_id as u64);
        if self.skipped {
            o.bool("skipped", true);
        } else {
            self.write_driven(&mut o);
        }
        if let Some(n) = self.note {
            o.str("note", n);
        }
        o.str_list("errors", self.errors.as_slice());
        let _ = o.end();
    }

    fn write_driven<W: Write + ?Sized>(&self, o: &mut Object<'_, W>) {
        o.u64("queues", self.queues as u64)
            .u64("queue_size", self.queue_size as u64)
            .bool("msi", self.msi)
            .hex("features", self.features);
        {
            let mut arr = o.array("vectors");
            for v in self.vectors() {
                let mut e = arr.object();
                e.u64("index", v.index as u64)
                    .u64("vector", v.vector as u64)
                    .u64("cpu", v.cpu as u64)
                    .u64("apic_id", v.apic_id as u64)
                    .u64("received", v.received as u64);
                if v.index > 0 && v.expect == Expect::Batches {
                    e.u64("batches", v.batches as u64);
                }
                if v.blind_rearms > 0 {
                    e.u64("blind_rearms", v.blind_rearms as u64);
                }
                let _ = e.end();
            }
            let _ = arr.end();
        }
        o.u64("legacy_irq", self.legacy_irq as u64)
            .u64("legacy_received", self.legacy_received as u64)
            .u64("requests", self.requests as u64)
            .u64("request_errors", self.request_errors as u64)
            .u64("data_errors", self.data_errors as u64);
        if self.used_len_errors > 0 {
            o.u64("used_len_errors", self.used_len_errors as u64);
        }
        if let Some(n) = self.net {
            let pairs = (n.pairs as usize).min(MAX_NET_PAIRS);
            let mut e = o.object("net");
            e.u64("pairs", n.pairs as u64);
            match n.mq_set {
                Some(ok) => e.bool("mq_set", ok),
                None => e.null("mq_set"),
            };
            e.u64("frames_per_pair", n.frames_per_pair as u64)
                .u64("rx_expected_per_pair", n.rx_expected_per_pair as u64)
                .u32_list("tx_done", &n.tx_done[..pairs])
                .u32_list("rx_host", &n.rx_host[..pairs])
                .u64("rx_other", n.rx_other as u64)
                .u64("bad_buffers", n.bad_buffers as u64);
            let _ = e.end();
        }
        if let Some(r) = self.resize {
            let mut e = o.object("resize");
            e.u64("capacity_before", r.capacity_before)
                .u64("capacity_after", r.capacity_after)
                .u64("config_interrupts", r.config_interrupts as u64)
                .bool("config_generation_moved", r.config_generation_moved);
            let _ = e.end();
        }
        if let Some(c) = self.console {
            let mut e = o.object("console");
            e.u64("writes_done", c.writes_done as u64)
                .u64("bytes_received", c.bytes_received as u64)
                .bool("echo_asked", c.echo_asked)
                .bool("line_received", c.line_received)
                .bool("echo_sent", c.echo_sent);
            let _ = e.end();
        }
        if let Some(v) = self.vsock {
            let mut e = o.object("vsock");
            e.u64("guest_cid", v.guest_cid)
                .u64("conns_expected", v.conns_expected as u64)
                .u64("bytes_expected", v.bytes_expected as u64)
                .u64("conns_accepted", v.conns_accepted as u64)
                .u64("conns_done", v.conns_done as u64)
                .u64("bytes_echoed", v.bytes_echoed);
            match v.connect {
                Some(ok) => e.bool("connect_ok", ok),
                None => e.null("connect_ok"),
            };
            e.u64("events_expected", v.events_expected as u64)
                .u64("events", v.events as u64)
                .u64("bad_packets", v.bad_packets as u64);
            let _ = e.end();
        }
        if let Some(h) = self.hostile {
            let mut e = o.object("hostile");
            e.u64("checks", h.checks as u64)
                .u64("checks_passed", h.checks_passed as u64)
                .u64("chains", h.chains as u64)
                .u64("chains_expected", h.chains_expected as u64)
                .u64("chains_returned", h.chains_returned as u64)
                .u64("flood", h.flood as u64)
                .u64("flood_answers", h.flood_answers as u64);
            match h.broken_queue_seen {
                Some(b) => e.bool("broken_queue_seen", b),
                None => e.null("broken_queue_seen"),
            };
            e.u64("config_interrupts", h.config_interrupts as u64);
            match h.healthy_queue {
                Some(b) => e.bool("healthy_queue", b),
                None => e.null("healthy_queue"),
            };
            e.bool("alive", h.alive);
            let _ = e.end();
        }
        if let Some(m) = self.mask_test {
            let mut e = o.object("mask_test");
            e.u64("received_while_masked", m.received_while_masked as u64)
                .u64("delivered_after_unmask", m.delivered_after_unmask as u64);
            let _ = e.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn msi_device() -> DeviceReport {
        let mut d = DeviceReport::new(0xd000_0000, 5);
        d.device_id = 2;
        d.queues = 2;
        d.queue_size = 64;
        d.msi = true;
        d.features = 0x1_2000_1000;
        d.n_vectors = 3;
        d.vectors[0] = VectorReport {
            index: 0,
            vector: 0x40,
            ..Default::default()
        };
        for q in 0..2u16 {
            d.vectors[q as usize + 1] = VectorReport {
                index: q + 1,
                vector: 0x41 + q as u8,
                cpu: q as u32,
                apic_id: q as u32,
                received: 2,
                elsewhere: 0,
                batches: 2,
                extra: 0,
                blind_rearms: 0,
                expect: Expect::Batches,
            };
        }
        d.requests = 64;
        d
    }

    fn json(d: &DeviceReport) -> String {
        let mut out = String::new();
        let mut o = Object::new(&mut out);
        let mut a = o.array("devices");
        d.write(&mut a);
        a.end().unwrap();
        drop(a);
        o.end().unwrap();
        out
    }

    #[test]
    fn a_good_msi_device() {
        let mut d = msi_device();
        d.judge();
        assert!(d.ok());
        assert_eq!(
            json(&d),
            concat!(
                r#"{"devices":[{"base":"0xd0000000","device_id":2,"queues":2,"queue_size":64,"msi":true,"#,
                r#""features":"0x120001000","vectors":[{"index":0,"vector":64,"cpu":0,"apic_id":0,"received":0},"#,
                r#"{"index":1,"vector":65,"cpu":0,"apic_id":0,"received":2,"batches":2},"#,
                r#"{"index":2,"vector":66,"cpu":1,"apic_id":1,"received":2,"batches":2}],"#,
                r#""legacy_irq":5,"legacy_received":0,"requests":64,"request_errors":0,"data_errors":0,"errors":[]}]}"#
            )
        );
    }

    #[test]
    fn interrupt_rules() {
        let mut d = msi_device();
        d.vectors[1].received = 0;
        d.vectors[2].received = 3;
        d.vectors[0].received = 1;
        d.judge();
        assert_eq!(
            d.errors.as_slice(),
            &[
                "msi: config vector received interrupts",
                "msi: a queue vector received no interrupt",
                "msi: queue interrupts differ from batches"
            ]
        );
        // legacy mode: vector counts are not judged
        let mut d = msi_device();
        d.msi = false;
        d.vectors[1].received = 0;
        d.judge();
        assert!(d.ok());
    }

    #[test]
    fn data_and_mask_test() {
        let mut d = msi_device();
        d.data_errors = 5;
        d.mask_test = Some(MaskTest {
            received_while_masked: 1,
            delivered_after_unmask: 1,
        });
        d.judge();
        assert!(!d.ok());
        assert!(json(&d)
            .contains(r#""mask_test":{"received_while_masked":1,"delivered_after_unmask":1}"#));
        assert!(MaskTest {
            received_while_masked: 0,
            delivered_after_unmask: 1
        }
        .ok());
    }

    #[test]
    fn hostile_results() {
        let good = HostileResult {
            checks: 20,
            checks_passed: 20,
            chains: 13,
            chains_expected: 12,
            chains_returned: 12,
            flood: 5000,
            flood_answers: 4096,
            broken_queue_seen: Some(true),
            config_interrupts: 1,
            healthy_queue: Some(true),
            alive: true,
        };
        assert!(good.ok());
        let mut d = msi_device();
        // Hostile mode reports no per-queue interrupt counts: they are not judged.
        d.vectors[1].received = 0;
        d.hostile = Some(good);
        d.judge();
        assert!(d.ok(), "{:?}", d.errors);
        assert!(json(&d).contains(
            r#""hostile":{"checks":20,"checks_passed":20,"chains":13,"chains_expected":12,"chains_returned":12,"flood":5000,"flood_answers":4096,"broken_queue_seen":true,"config_interrupts":1,"healthy_queue":true,"alive":true}"#
        ));
        let mut d = msi_device();
        d.hostile = Some(HostileResult {
            checks_passed: 19,
            chains_returned: 11,
            broken_queue_seen: Some(false),
            healthy_queue: Some(false),
            alive: false,
            ..good
        });
        d.judge();
        assert_eq!(d.errors.as_slice().len(), 5);
        assert!(!d.hostile.unwrap().ok());
    }

    #[test]
    fn skipped_device() {
        let mut d = DeviceReport::new(0xd000_2000, 6);
        d.device_id = 1;
        d.skipped = true;
        d.note = Some("unsupported device type, skipped");
        d.judge();
        assert!(d.ok());
        assert_eq!(
            json(&d),
            r#"{"devices":[{"base":"0xd0002000","device_id":1,"skipped":true,"note":"unsupported device type, skipped","errors":[]}]}"#
        );
    }
}
