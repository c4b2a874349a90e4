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
//! | `Network` | `protos/network.proto` | [`network`], [`network_ttrpc`] |
//!
//! With the `netlink` feature, the `netlink` module builds messages from `pulse-netlink`'s dumps.

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

// Lookups on the generated device-report messages.
mod device_report;
#[cfg(feature = "netlink")]
pub mod netlink;

/// The API version the agent reports in `Health.Version`; bumped on
/// incompatible changes to the `.proto` files.
pub const API_VERSION: u32 = 1;

/// The vsock port the agent listens on inside the guest by default.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// The file name of a sandbox's management socket (`/metrics`, `/report`) in its state
/// directory: the shim serves it, pulse-ctl finds it.
pub const MANAGEMENT_SOCKET: &str = "mgmt.sock";

/// Where a host installs the guest kernel (`make guest`'s `vmlinux`): the shim's default
/// `vm.kernel`, and the path pulse-ctl checks when the config names none.
pub const DEFAULT_GUEST_KERNEL: &str = "/usr/share/pulse/vmlinux";

/// Where a host installs the guest initramfs (its `/init` is pulse-agent): the shim's default
/// `vm.initramfs`, and the path pulse-ctl checks when the config names none.
pub const DEFAULT_GUEST_INITRAMFS: &str = "/usr/share/pulse/initramfs.cpio.lz4";

pub use protobuf;
pub use ttrpc;

/// A request context that gives up after `timeout` (past i64's nanoseconds, 292 years, is as
/// good as none: it saturates). For every client of the API: the shim, pulse-ctl, the tests.
pub fn deadline(timeout: std::time::Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// The host vsock port (CID 2) the agent connects to once it serves, to say
/// so; on the host it is the hybrid-vsock socket `<uds>_1023`.
pub const DEFAULT_READY_PORT: u32 = 1023;

/// The readiness announcement: one line, `READY <port the agent listens on>`.
///
/// A host sends its first hybrid-vsock `CONNECT` only after this line came.
/// The guest's own connection completes only once the device's queues run
/// on both sides, and a CONNECT that reaches a vhost-user backend while the
/// guest driver is still setting the device up can stop the backend for good
/// (vhost-device-vsock 0.3.0 does).
pub fn ready_line(listen_port: u32) -> String {
    format!("READY {listen_port}\n")
}

/// The port in a readiness line (with or without its newline).
pub fn parse_ready_line(line: &str) -> Option<u32> {
    line.trim_end_matches('\n')
        .strip_prefix("READY ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod ready_tests {
    use super::*;

    #[test]
    fn ready_lines_round_trip_and_refuse_the_rest() {
        assert_eq!(ready_line(1024), "READY 1024\n");
        assert_eq!(parse_ready_line(&ready_line(1024)), Some(1024));
        assert_eq!(parse_ready_line("READY 7"), Some(7));
        for bad in [
            "",
            "READY",
            "READY x\n",
            "OK 1024\n",
            "ready 1024\n",
            "READY -1\n",
        ] {
            assert_eq!(parse_ready_line(bad), None, "{bad:?}");
        }
    }
}
