//! What every device worker thread shares, whatever the device: the loop that waits for
//! doorbells and host sockets and always honours the stop request ([`device_loop`]), queue
//! access that checks what the guest wrote before the virtio-queue crate sees it
//! ([`guest_queue`]), and a rate-limited record of the guest's mistakes ([`fault_log`]).
//!
//! The guest is hostile: a queue it breaks is marked broken (the device shows
//! DEVICE_NEEDS_RESET and stops serving that queue until a reset) instead of being retried,
//! each wake-up does a bounded amount of work, and no guest action produces an unbounded
//! number of log lines.

pub mod device_loop;
pub mod fault_log;
pub mod guest_queue;
pub mod vring;
mod workers;

pub use device_loop::{run, DeviceWorker, LoopContext, STOP_TOKEN};
pub use fault_log::{FaultCounts, FaultLog, GuestFault};
pub use guest_queue::{Chain, Drained, QueueFault, Served};
pub(crate) use vring::bump;
pub use vring::{InterruptCount, Vring};
pub(crate) use workers::Workers;

/// Chains a worker serves per queue and wake-up before it looks at its other events (the
/// stop request among them).
pub const BUDGET: usize = 256;
