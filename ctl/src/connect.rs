//! Connecting to an agent: plain ttrpc addresses, or a hybrid vsock (the
//! VMM's unix socket that forwards to a guest vsock port after a
//! `CONNECT <port>` / `OK <host port>` exchange, as Firecracker defines it).

use std::time::Duration;

use anyhow::{Context, Result};
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

/// `unix:///PATH`, `vsock://CID:PORT`, or `hvsock://PATH:PORT`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<Client> {
    let Some(rest) = addr.strip_prefix("hvsock://") else {
        return Client::connect(addr)
            .await
            .with_context(|| format!("connecting to the agent at {addr}"));
    };
    let (path, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("{addr}: a hybrid vsock address is hvsock://PATH:PORT"))?;
    let port: u32 = port
        .parse()
        .with_context(|| format!("{addr}: bad port {port:?}"))?;
    let stream = tokio::time::timeout(
        timeout,
        pulse_hvsock::connect_async(std::path::Path::new(path), port),
    )
    .await
    .with_context(|| format!("{addr}: no answer to CONNECT {port}"))?
    .with_context(|| format!("connecting to the agent at {addr}"))?;
    Ok(Client::new(Socket::from(stream)))
}

pub use pulse_protocols::deadline;
