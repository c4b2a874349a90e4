//! A fake vsock driver: the guest's side of the receive, transmit and event queues, played
//! from the host in front of the device model. The unit tests and the vsock benchmark drive
//! the device through it, set up by [`VsockRig`].
//!
//! Layout in guest memory: the rings 64 KiB apart from 1 MiB on, receive buffers of
//! [`RX_BUF`] bytes from 16 MiB on (one per descriptor, at [`rx_buf`] of its head), and
//! transmit slots of 64 KiB from 24 MiB on, one per queue entry. Guest memory must reach
//! past the last slot: 24 MiB plus 64 KiB per queue entry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{op, Header, HEADER_SIZE, HOST_CID, TYPE_STREAM};
use super::{Vsock, VsockConfig};
use crate::devices::driver_ring::{desc_len, CountingInterrupt, DriverRing};
use crate::devices::virtio::{features, Activation, ActiveQueue, VirtioDevice};
use crate::memory::{create_guest_memory, GuestMemoryMmap};

/// Size of each receive buffer.
pub const RX_BUF: u32 = 4096;
/// Where the receive buffers start.
const RX_BASE: u64 = 0x100_0000;
/// Where the transmit slots start, and the size of each.
const TX_BASE: u64 = 0x180_0000;
const TX_SLOT: u64 = 0x1_0000;
/// How long [`VsockDriver::next_rx`] waits for the device: far beyond any slow machine.
const RX_WAIT: Duration = Duration::from_secs(10);

/// Guest address of the receive buffer of the descriptor `head`.
pub fn rx_buf(head: u16) -> u64 {
    RX_BASE + u64::from(head) * u64::from(RX_BUF)
}

/// The driver's side of a vsock device: its rings, doorbells and what it consumed.
pub struct VsockDriver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The guest's CID, the source of its packets.
    pub cid: u64,
    /// Receive ring (queue 0).
    pub rx: DriverRing,
    /// Transmit ring (queue 1).
    pub tx: DriverRing,
    /// Event ring (queue 2).
    pub ev: DriverRing,
    /// Receive doorbell.
    pub rx_evt: EventFd,
    /// Transmit doorbell.
    pub tx_evt: EventFd,
    /// Event doorbell.
    pub ev_evt: EventFd,
    /// Receive used entries taken so far.
    pub rx_seen: u16,
    tx_slot: u64,
    size: u16,
}

impl VsockDriver {
    /// Rings of `size` entries for the guest `cid` in `mem`, no buffers posted yet, and the
    /// queues to activate the device with.
    pub fn new(mem: &GuestMemoryMmap, cid: u64, size: u16) -> (Self, Vec<ActiveQueue>) {
        let rx = DriverRing::new(mem, GuestAddress(0x10_0000), size);
        let tx = DriverRing::new(mem, GuestAddress(0x11_0000), size);
        let ev = DriverRing::new(mem, GuestAddress(0x12_0000), size);
        let (rx_queue, rx_evt) = rx.active_queue(0);
        let (tx_queue, tx_evt) = tx.active_queue(1);
        let (ev_queue, ev_evt) = ev.active_queue(2);
        let driver = Self {
            mem: mem.clone(),
            cid,
            rx,
            tx,
            ev,
            rx_evt,
            tx_evt,
            ev_evt,
            rx_seen: 0,
            tx_slot: 0,
            size,
        };
        (driver, vec![rx_queue, tx_queue, ev_queue])
    }

    /// Posts `n` receive buffers and rings the receive doorbell.
    pub fn post_rx(&mut self, n: u16) {
        let heads: Vec<u16> = (0..n)
            .map(|_| {
                let head = self.rx.add_chain(&[(0, 0, true)]);
                // One writable buffer per chain, at a place derived from its head.
                self.rx.write_desc(head, rx_buf(head), RX_BUF, 2, 0);
                head
            })
            .collect();
        self.rx.publish(&heads);
        self.rx_evt.write(1).expect("receive doorbell");
    }

    /// A stream packet header from the guest's `src_port` to the host's `dst_port`, offering
    /// 64 KiB of receive buffer.
    pub fn header(&self, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Default::default()
        }
    }

    /// The next transmit slot, taken in turn.
    fn next_tx_slot(&mut self) -> u64 {
        let at = TX_BASE + (self.tx_slot % u64::from(self.size)) * TX_SLOT;
        self.tx_slot += 1;
        at
    }

    /// Sends `h` with `payload` (its `len` set to match), copied into one descriptor.
    pub fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = desc_len(payload.len());
        let at = self.next_tx_slot();
        self.tx.publish_readable(at, &[&h.encode(), payload]);
        self.tx_evt.write(1).expect("transmit doorbell");
    }

    /// Sends `h` with the payload already in guest memory at (address, length), if any, as a
    /// descriptor of its own: nothing is copied.
    pub fn send_in_place(&mut self, mut h: Header, payload: Option<(u64, u32)>) {
        h.len = payload.map_or(0, |(_, len)| len);
        let at = self.next_tx_slot();
        self.write_header(at, &h);
        let mut chain = vec![(at, desc_len(HEADER_SIZE), false)];
        chain.extend(payload.map(|(addr, len)| (addr, len, false)));
        let head = self.tx.add_chain(&chain);
        self.tx.publish(&[head]);
        self.tx_evt.write(1).expect("transmit doorbell");
    }

    /// Writes `h` at `at` and adds a transmit chain of it alone, not yet published; returns
    /// its head.
    pub fn add_header_chain(&mut self, at: u64, h: &Header) -> u16 {
        self.write_header(at, h);
        self.tx.add_chain(&[(at, desc_len(HEADER_SIZE), false)])
    }

    fn write_header(&self, at: u64, h: &Header) {
        self.mem
            .write_slice(&h.encode(), GuestAddress(at))
            .expect("header inside guest memory");
    }

    /// The next packet the device delivered: its header, its payload's length and the head of
    /// its receive buffer, which stays the driver's until [`Self::give_back`]. Spins (yielding)
    /// rather than sleeps while it waits: a benchmark measures the device, not a sleep.
    pub fn next_rx(&mut self) -> (Header, u32, u16) {
        let deadline = Instant::now() + RX_WAIT;
        while self.rx.used_idx() == self.rx_seen {
            assert!(Instant::now() < deadline, "no packet from the device");
            std::thread::yield_now();
        }
        let (head, len) = self.rx.used_elem(self.rx_seen);
        let head = u16::try_from(head).expect("a head of a 16-bit ring");
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let mut raw = [0u8; HEADER_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(rx_buf(head)))
            .expect("receive buffer");
        (Header::decode(&raw), len - desc_len(HEADER_SIZE), head)
    }

    /// Posts the receive buffer `head` again and rings the receive doorbell.
    pub fn give_back(&mut self, head: u16) {
        self.rx.publish(&[head]);
        self.rx_evt.write(1).expect("receive doorbell");
    }

    /// The next packet with its payload; its buffer goes back to the device.
    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        let (h, len, head) = self.next_rx();
        let mut payload = vec![0u8; len as usize];
        self.mem
            .read_slice(
                &mut payload,
                GuestAddress(rx_buf(head) + HEADER_SIZE as u64),
            )
            .expect("receive buffer");
        self.give_back(head);
        (h, payload)
    }

    /// The next packet that is not a credit update.
    pub fn recv_op(&mut self) -> (Header, Vec<u8>) {
        loop {
            let p = self.recv();
            if p.0.op != op::CREDIT_UPDATE {
                return p;
            }
        }
    }
}

/// A vsock device with its socket in a fresh temporary directory, activated in front of a
/// [`VsockDriver`].
pub struct VsockRig {
    /// The device.
    pub dev: Vsock,
    /// The guest's side.
    pub guest: VsockDriver,
    /// What the device raised.
    pub irq: Arc<CountingInterrupt>,
    /// The device's hybrid-vsock socket.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl VsockRig {
    /// A device for the guest `cid` with `mem_mib` of guest memory, activated with the
    /// features `negotiated` on rings of `size` entries, `rx_buffers` receive buffers posted.
    pub fn new(cid: u64, mem_mib: u64, size: u16, negotiated: u64, rx_buffers: u16) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("v.sock");
        let mut dev = Vsock::new(VsockConfig {
            guest_cid: cid,
            uds_path: path.clone(),
        })
        .expect("vsock device");
        let mem = create_guest_memory(mem_mib).expect("guest memory");
        let (mut guest, mut queues) = VsockDriver::new(&mem, cid, size);
        guest.post_rx(rx_buffers);
        // What the transport does for a driver that negotiated EVENT_IDX.
        let event_idx = negotiated & features::RING_EVENT_IDX != 0;
        for q in &mut queues {
            virtio_queue::QueueT::set_event_idx(&mut q.queue, event_idx);
        }
        let irq = Arc::new(CountingInterrupt::default());
        dev.activate(Activation::new(mem, negotiated, queues, irq.clone()))
            .expect("activation");
        Self {
            dev,
            guest,
            irq,
            path,
            _dir: dir,
        }
    }
}
