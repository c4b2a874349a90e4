//! Emulated devices. Each one sits on a bus (see [`crate::bus`]) and knows nothing of vCPUs.

pub mod block;
pub mod boot_timer;
pub mod console;
#[cfg(any(test, feature = "test-utils"))]
pub mod driver_ring;
pub mod fs;
pub mod net;
pub mod pseudo;
pub mod reset;
pub mod serial;
pub mod virtio;
pub mod vsock;
pub mod worker;
