//! Pulse's guest agent API.
//!
//! The `.proto` files under `protos/` are the source of truth; `build.rs`
//! generates the messages and async ttrpc clients/servers from them at build
//! time. Each service has two modules: `<name>` (messages) and
//! `<name>_ttrpc` (the `*Client` type, the server trait and its
//! `create_*` registration function).
//!
//! | service | proto | modules |
//! |---|---|---|
//! | `Health` | `protos/health.proto` | [`health`], [`health_ttrpc`] |
//! | `Sandbox` | `protos/sandbox.proto` | [`sandbox`], [`sandbox_ttrpc`] |
//! | `Containers` | `protos/containers.proto` | [`containers`], [`containers_ttrpc`] |
//! | `Devices` | `protos/devices.proto` | [`devices`], [`devices_ttrpc`] |

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

/// The API version the agent reports in `Health.Version`; bumped on
/// incompatible changes to the `.proto` files.
pub const API_VERSION: u32 = 1;

/// The vsock port the agent listens on inside the guest by default.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

pub use protobuf;
pub use ttrpc;
