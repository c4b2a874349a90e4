//! The VMM's event loop: one thread, one epoll set (through `event-manager`), for every host
//! event that is not a vCPU exit: serial input now, device queues and sockets later.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::confine::{self, ConfineError, ThreadKind};
use crate::devices::serial::SerialDevice;

/// Why the event loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Its eventfd or epoll set could not be created.
    #[error("cannot start the event loop: {0}")]
    Setup(#[from] io::Error),
    /// Its thread could not be started confined.
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

/// A subscriber as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Stops the loop when its eventfd is written.
struct StopSubscriber {
    event: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.event, EventSet::IN)) {
            tracing::error!("event loop cannot watch its stop event: {e:?}");
        }
    }
}

/// The running event-loop thread.
pub struct EventLoop {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
}

impl EventLoop {
    /// Starts the loop with `subscribers`, on a thread confined as [`ThreadKind::EventLoop`].
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, EventLoopError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stopper = StopSubscriber {
            event: stop.try_clone()?,
            stopped: Arc::new(AtomicBool::new(false)),
        };
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| io::Error::other(format!("epoll: {e:?}")))?;
        let stopped = stopper.stopped.clone();
        manager.add_subscriber(Arc::new(Mutex::new(stopper)));
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let thread = confine::spawn(ThreadKind::EventLoop, "event-loop".into(), move || {
            while !stopped.load(Ordering::SeqCst) {
                if let Err(e) = manager.run() {
                    tracing::error!("event loop failed: {e:?}");
                    break;
                }
            }
        })?;
        Ok(Self {
            thread: Some(thread),
            stop,
        })
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies host stdin into the serial port's receive FIFO.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: io::Stdin,
}

impl SerialInput {
    /// Feeds `serial` from this process's stdin.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self {
            serial,
            stdin: io::stdin(),
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // Readable per epoll: one read does not block.
        let n = match self.stdin.lock().read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            // End of input: stop watching stdin.
            let _ = ops.remove(Events::empty_raw(self.stdin.as_raw_fd()));
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let taken = serial.enqueue_input(&buf[..n]);
        if taken < n {
            tracing::warn!("serial input FIFO full: {} bytes dropped", n - taken);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be a file, which epoll refuses; then there is simply no input.
        if let Err(e) = ops.add(Events::new_raw(self.stdin.as_raw_fd(), EventSet::IN)) {
            tracing::debug!("stdin is not pollable, no serial input: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Counter {
        event: EventFd,
        hits: Arc<Mutex<u64>>,
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _: Events, _: &mut EventOps) {
            *self.hits.lock().unwrap() += self.event.read().unwrap_or(0);
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.event, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn dispatches_events_and_stops() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let hits = Arc::new(Mutex::new(0));
        let counter = Counter {
            event: event.try_clone().unwrap(),
            hits: hits.clone(),
        };
        let mut ev = EventLoop::start(vec![Arc::new(Mutex::new(counter))]).unwrap();
        event.write(3).unwrap();
        for _ in 0..200 {
            if *hits.lock().unwrap() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*hits.lock().unwrap(), 3);
        ev.stop();
        assert!(ev.thread.is_none());
    }
}
