//! How the task service's failures reach containerd: ttrpc statuses with codes it acts on.

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use std::time::SystemTime;
use ttrpc::Code;

use crate::state::StateError;

/// A status of `code` saying `message`.
pub fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// A call the process's or the sandbox's state does not allow.
pub fn state_err(e: StateError) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, e.to_string())
}

/// An agent error, with what was being done: the agent's own code when it answered, else
/// UNAVAILABLE (the guest is gone or does not answer).
pub fn agent_err(what: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => status(s.code(), format!("{what}: {}", s.message())),
        other => status(
            Code::UNAVAILABLE,
            format!("{what}: the guest agent: {other}"),
        ),
    }
}

/// Anything else, with its whole chain of context.
pub fn internal(e: anyhow::Error) -> ttrpc::Error {
    status(Code::INTERNAL, format!("{e:#}"))
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    // Below one second's nanoseconds: it fits.
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_keep_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(5, 7);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }

    #[test]
    fn agent_errors_keep_their_code() {
        let e = agent_err("creating", status(Code::NOT_FOUND, "no such serial"));
        let ttrpc::Error::RpcStatus(s) = e else {
            panic!()
        };
        assert_eq!(s.code(), Code::NOT_FOUND);
        assert_eq!(s.message(), "creating: no such serial");
    }
}
