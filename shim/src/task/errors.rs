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
    status(Code::INTERNAL, chain_text(&e))
}

/// The error and its causes, `: ` between them, as `{:#}` prints them, except that a cause
/// the last part shown already says is left out: the crate's errors name their cause in their
/// own text and also hand it out as their source.
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !last.is_empty() && last.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
        last = part;
    }
    text
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
    fn a_cause_the_message_already_names_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the image: {source}")]
        struct Read {
            #[source]
            source: std::io::Error,
        }
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::from(Read { source: io }).context("pod p");
        assert_eq!(chain_text(&e), "pod p: reading the image: entity not found");
        let e = anyhow::anyhow!("disk full").context("slot 1");
        assert_eq!(
            chain_text(&e),
            format!("{e:#}"),
            "other chains print as {{:#}}"
        );
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
