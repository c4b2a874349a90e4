//! One stream between a host unix socket and a guest vsock port: its handshake state, the
//! credit accounting of both directions, and the bytes in flight towards the host.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Bytes of guest data Pulse buffers per connection (its advertised `buf_alloc`).
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host process sent CONNECT; the guest has not answered the REQUEST yet.
    Connecting {
        /// Give up after this.
        deadline: Instant,
    },
    /// Data flows.
    Established,
}

/// A host<->guest stream.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    /// Handshake state.
    pub state: State,
    /// Guest's receive buffer size.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed.
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes of guest data written to the host socket.
    fwd_cnt: u32,
    /// `fwd_cnt` last told to the guest.
    fwd_cnt_sent: u32,
    /// Guest data not yet written to the host socket.
    to_host: VecDeque<u8>,
    /// The guest will send no more.
    pub peer_done_sending: bool,
    /// The guest will receive no more.
    pub peer_done_receiving: bool,
    /// The host socket reached end of file.
    pub host_eof: bool,
    /// The guest asked for our credit.
    pub credit_requested: bool,
    /// The guest was told the host will send no more.
    pub eof_told: bool,
}

impl Connection {
    /// A connection in `state`.
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_host: VecDeque::new(),
            peer_done_sending: false,
            peer_done_receiving: false,
            host_eof: false,
            credit_requested: false,
            eof_told: false,
        }
    }

    /// Takes the guest's credit fields from any packet it sent.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records `n` bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: usize) {
        self.tx_cnt = self.tx_cnt.wrapping_add(low_bits(n));
    }

    /// Our credit fields for a header, remembering what we told.
    pub fn stamp(&mut self, header: &mut Header) {
        header.buf_alloc = BUF_ALLOC;
        header.fwd_cnt = self.fwd_cnt;
        self.fwd_cnt_sent = self.fwd_cnt;
        self.credit_requested = false;
    }

    /// Whether the guest should hear about freed buffer space without waiting for data to
    /// carry it: on request, or once half the buffer was consumed since the last report.
    pub fn needs_credit_update(&self) -> bool {
        self.credit_requested || self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 2
    }

    /// Queues guest data for the host; false if the guest overran the credit it was given.
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend(data);
        true
    }

    /// Guest data still waiting for the host socket.
    pub fn pending_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// Writes as much pending guest data to the host socket as it takes.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(low_bits(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads host data for the guest, at most `max` bytes. `Ok(None)`: nothing now.
    pub fn read_from_host(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; max];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.host_eof = true;
                    return Ok(None);
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies a SHUTDOWN from the guest.
    pub fn peer_shutdown(&mut self, flags: u32) {
        self.peer_done_receiving |= flags & SHUTDOWN_RCV != 0;
        self.peer_done_sending |= flags & SHUTDOWN_SEND != 0;
    }

    /// Whether host data may go to the guest now.
    pub fn wants_to_send(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.peer_done_receiving
            && self.peer_credit() > 0
    }

    /// Both directions are finished and nothing is left to deliver.
    pub fn is_finished(&self) -> bool {
        self.peer_done_sending
            && self.to_host.is_empty()
            && (self.host_eof || self.peer_done_receiving)
    }
}

/// `n` modulo 2^32: virtio-vsock's `tx_cnt` and `fwd_cnt` are free-running 32-bit counters.
#[allow(clippy::cast_possible_truncation)] // the truncation is the modulo
fn low_bits(n: usize) -> u32 {
    n as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, 1, 2, State::Established);
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest says anything"
        );
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        });
        c.sent_to_guest(600);
        assert_eq!(c.peer_credit(), 400);
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 500,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 900);
        // Counters wrap.
        c.tx_cnt = u32::MAX - 10;
        c.peer_fwd_cnt = u32::MAX - 20;
        assert_eq!(c.peer_credit(), 990);
    }

    #[test]
    fn guest_data_is_bounded_and_flushed() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new(a, 1, 2, State::Established);
        assert!(c.push_to_host(b"hello"));
        assert!(!c.push_to_host(&vec![0u8; BUF_ALLOC as usize]));
        c.flush_to_host().unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let mut h = Header::default();
        c.stamp(&mut h);
        assert_eq!((h.fwd_cnt, h.buf_alloc), (5, BUF_ALLOC));
        assert!(!c.needs_credit_update());
        c.credit_requested = true;
        assert!(c.needs_credit_update());
    }
}
