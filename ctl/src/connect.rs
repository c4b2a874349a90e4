//! Connecting to an agent: plain ttrpc addresses, or a hybrid vsock (the
//! VMM's unix socket that forwards to a guest vsock port after a
//! `CONNECT <port>` / `OK <host port>` exchange, as Firecracker defines it).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

/// The longest handshake answer accepted.
const MAX_REPLY: usize = 64;

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
    let stream = tokio::time::timeout(timeout, handshake(path, port))
        .await
        .with_context(|| format!("{addr}: no answer to CONNECT {port}"))?
        .with_context(|| format!("connecting to the agent at {addr}"))?;
    Ok(Client::new(Socket::from(stream)))
}

async fn handshake(path: &str, port: u32) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(path).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Byte by byte: what follows the newline already belongs to ttrpc.
    let mut reply = Vec::new();
    loop {
        let byte = stream
            .read_u8()
            .await
            .context("the VMM closed the socket")?;
        if byte == b'\n' {
            break;
        }
        reply.push(byte);
        if reply.len() > MAX_REPLY {
            bail!("handshake answer longer than {MAX_REPLY} bytes");
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    if !reply.starts_with("OK ") {
        bail!("CONNECT {port} refused: {reply:?}");
    }
    Ok(stream)
}
