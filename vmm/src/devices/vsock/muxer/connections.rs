//! The connection table: local ports, the replies queued for the guest, expiry, and each
//! connection's host-stream events.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use crate::devices::vsock::connection::{Connection, State};
use crate::devices::vsock::packet::op;

use super::{refuse, Control, Key, Worker, FIRST_LOCAL_PORT, MAX_QUEUED_REPLIES};

impl Worker {
    pub(super) fn allocate_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    pub(super) fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.readable.insert(key);
    }

    pub(super) fn remove(&mut self, key: Key) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        let fd = conn.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        self.unwatch(fd);
        self.readable.remove(&key);
        Some(conn)
    }

    pub(super) fn queue(&mut self, local_port: u32, peer_port: u32, op: u16, flags: u32) {
        if self.control.len() >= MAX_QUEUED_REPLIES {
            // The guest posts no rx buffers and keeps sending: its replies are lost, its
            // connections time out or get reset, the VMM does not grow.
            self.m
                .counters
                .replies_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.control.push_back(Control {
            local_port,
            peer_port,
            op,
            flags,
        });
        self.count_queued();
    }

    pub(super) fn count_queued(&self) {
        self.m
            .counters
            .replies_queued
            .store(self.control.len() as u64, Ordering::Relaxed);
    }

    /// Resets a connection: RST to the guest, the host stream closed.
    pub(super) fn reset(&mut self, key: Key) {
        if self.remove(key).is_some() {
            self.queue(key.0, key.1, op::RST, 0);
        }
    }

    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(p) = self.pending.remove(&fd) {
                self.unwatch(fd);
                refuse(&p.stream, "timeout waiting for the CONNECT line");
            }
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Connecting { deadline } if deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get(&key) {
                refuse(
                    &c.stream,
                    &format!("timeout waiting for guest port {}", key.1),
                );
            }
            self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.reset(key);
        }
    }

    pub(super) fn connection_event(&mut self, key: Key, set: EventSet) {
        if set.contains(EventSet::IN)
            || set.contains(EventSet::HANG_UP)
            || set.contains(EventSet::READ_HANG_UP)
        {
            self.readable.insert(key);
        }
        if set.contains(EventSet::OUT) {
            self.flush(key);
        }
        if set.contains(EventSet::ERROR) {
            self.reset(key);
        }
    }

    /// Writes pending guest data to the host, then sends credit or finishes as needed.
    pub(super) fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.flush_to_host().is_err() {
            self.reset(key);
            return;
        }
        if c.pending_to_host() == 0 && c.peer_done_sending {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.is_finished() {
            self.reset(key);
            return;
        }
        if c.needs_credit_update() {
            self.queue(key.0, key.1, op::CREDIT_UPDATE, 0);
        }
    }
}
