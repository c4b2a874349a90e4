//! Host-side connections: accepting on the VMM's socket, reading the CONNECT line, and
//! connecting to host listeners for the guest without blocking.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use crate::devices::vsock::connection::{Connection, State};
use crate::devices::vsock::packet::{op, Header};
use crate::devices::vsock::unix::connect_nonblocking;
use crate::devices::vsock::unix::{forward_path, LineStatus, PendingConnect};

use super::{
    is_would_block, refuse, HostConnect, Key, Worker, HANDSHAKE_TIMEOUT, HOST_CONNECT_RETRY,
    MAX_CONNECTIONS,
};

impl Worker {
    pub(super) fn accept(&mut self) {
        loop {
            match self.m.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() + self.conns.len() >= MAX_CONNECTIONS {
                        refuse(&stream, "too many connections");
                        self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending.insert(
                        fd,
                        PendingConnect::new(stream, Instant::now() + HANDSHAKE_TIMEOUT),
                    );
                    self.watch(fd, EventSet::IN);
                    // The line may already be there.
                    self.advance_pending(fd);
                }
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn advance_pending(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let status = p.read_line();
        if status == LineStatus::Incomplete {
            return;
        }
        let p = self.pending.remove(&fd).expect("present");
        self.unwatch(fd);
        match status {
            LineStatus::Port(port) => {
                let local = self.allocate_local_port(port);
                let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                let conn = Connection::new(p.stream, local, port, State::Connecting { deadline });
                self.insert(conn);
                self.queue(local, port, op::REQUEST, 0);
            }
            LineStatus::Refused(e) => {
                refuse(&p.stream, &e.to_string());
                self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            LineStatus::Closed | LineStatus::Incomplete => {}
        }
    }

    /// Connects to the host listener without blocking: one whose backlog is full (it does not
    /// accept) is tried again later, until `deadline`, and never holds up the device.
    pub(super) fn try_host_connect(&mut self, key: Key, h: Header, deadline: Instant) {
        let path = forward_path(&self.m.uds_path, key.0);
        match connect_nonblocking(&path) {
            Err(e) if is_would_block(&e) && Instant::now() < deadline => {
                self.host_connects.insert(
                    key,
                    HostConnect {
                        request: h,
                        deadline,
                    },
                );
                self.next_connect_retry
                    .get_or_insert(Instant::now() + HOST_CONNECT_RETRY);
            }
            Ok(stream) => {
                let mut conn = Connection::new(stream, key.0, key.1, State::Established);
                conn.update_peer_credit(&h);
                self.insert(conn);
                self.m.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.queue(key.0, key.1, op::RESPONSE, 0);
            }
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                self.m.counters.refused.fetch_add(1, Ordering::Relaxed);
                self.queue(key.0, key.1, op::RST, 0);
            }
        }
    }

    /// Tries the connects that found a full backlog again, once per [`HOST_CONNECT_RETRY`].
    pub(super) fn retry_host_connects(&mut self) {
        if self.host_connects.is_empty()
            || self.next_connect_retry.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.next_connect_retry = None;
        let waiting: Vec<(Key, HostConnect)> = self.host_connects.drain().collect();
        for (key, c) in waiting {
            self.try_host_connect(key, c.request, c.deadline);
        }
    }
}
