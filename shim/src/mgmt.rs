//! The per-sandbox management socket: plain HTTP/1.1 on a unix socket,
//! `GET /metrics` (Prometheus text) and `GET /report` (JSON). Each request
//! asks the agent for a fresh device report, so interrupt counts are current.

use std::path::Path;
use std::sync::Weak;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

use crate::sandbox::Sandbox;

/// Serves the socket at `path` until the task is aborted (or the sandbox is gone).
pub fn serve(path: &Path, sandbox: Weak<Sandbox>) -> std::io::Result<JoinHandle<()>> {
    let listener = crate::private_fs::bind_tokio_listener(path)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, sandbox).await {
                    tracing::debug!("management request: {e}");
                }
            });
        }
    }))
}

async fn handle(stream: tokio::net::UnixStream, sandbox: Weak<Sandbox>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    // Skip the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match sandbox.upgrade() {
            Some(s) => (
                "200 OK",
                "text/plain; version=0.0.4",
                s.metrics_text().await,
            ),
            None => gone(),
        },
        ("GET", "/report") => match sandbox.upgrade() {
            Some(s) => {
                let report = s.report().await;
                let body = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
                ("200 OK", "application/json", body)
            }
            None => gone(),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: GET /metrics or /report\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

fn gone() -> (&'static str, &'static str, String) {
    (
        "503 Service Unavailable",
        "text/plain",
        "the sandbox is stopping\n".into(),
    )
}

/// A tiny client: `GET path` on the socket, returns (status code, body).
pub async fn get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: pulse\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}
