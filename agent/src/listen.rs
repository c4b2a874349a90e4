//! The addresses the agent listens on.

use std::path::PathBuf;

/// A parsed `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `vsock://PORT` (any CID) or `vsock://CID:PORT`.
    Vsock { cid: Option<u32>, port: u32 },
    /// `unix:///path/to.sock`.
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("vsock://") {
            let (cid, port) = match rest.split_once(':') {
                Some((cid, port)) => (
                    Some(
                        cid.parse()
                            .map_err(|_| format!("bad vsock CID in {text:?}"))?,
                    ),
                    port,
                ),
                None => (None, rest),
            };
            let port = port
                .parse()
                .map_err(|_| format!("bad vsock port in {text:?}"))?;
            Ok(ListenAddr::Vsock { cid, port })
        } else if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("unix socket path must be absolute: {text:?}"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "unsupported address {text:?} (use vsock://PORT or unix:///PATH)"
            ))
        }
    }

    /// The address in ttrpc's own syntax (`vsock://-1:PORT` for any CID).
    pub fn ttrpc(&self) -> String {
        match self {
            ListenAddr::Vsock { cid: None, port } => format!("vsock://-1:{port}"),
            ListenAddr::Vsock {
                cid: Some(cid),
                port,
            } => format!("vsock://{cid}:{port}"),
            ListenAddr::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Vsock { cid: None, port } => write!(f, "vsock://{port}"),
            ListenAddr::Vsock {
                cid: Some(cid),
                port,
            } => write!(f, "vsock://{cid}:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            ListenAddr::parse("vsock://1024").unwrap(),
            ListenAddr::Vsock {
                cid: None,
                port: 1024
            }
        );
        assert_eq!(
            ListenAddr::parse("vsock://1024").unwrap().ttrpc(),
            "vsock://-1:1024"
        );
        assert_eq!(
            ListenAddr::parse("vsock://3:99").unwrap().ttrpc(),
            "vsock://3:99"
        );
        assert_eq!(
            ListenAddr::parse("unix:///tmp/a.sock").unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("vsock://1024").unwrap().to_string(),
            "vsock://1024"
        );
        assert!(ListenAddr::parse("unix://rel.sock").is_err());
        assert!(ListenAddr::parse("tcp://1.2.3.4:5").is_err());
        assert!(ListenAddr::parse("vsock://x").is_err());
    }
}
