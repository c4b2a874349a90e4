//! The per-sandbox management socket: plain HTTP/1.1 on a unix socket,
//! `GET /metrics` (Prometheus text) and `GET /report` (JSON). Each request
//! asks the agent for a fresh device report, so interrupt counts are current.
//! Its client is `pulse-ctl status`.

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
