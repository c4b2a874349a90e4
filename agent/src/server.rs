//! Binding the ttrpc server with every service of the API.

use std::sync::Arc;

use ttrpc::r#async::Server;

use crate::listen::ListenAddr;
use crate::service::{services, Agent};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("removing the stale socket {path}: {source}")]
    StaleSocket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("starting the ttrpc server: {0}")]
    Start(#[source] ttrpc::Error),
}

/// Listens on `addr` and serves the agent's API until the returned server
/// is shut down. A unix socket left by an earlier run is replaced.
pub async fn start(addr: &ListenAddr, agent: Arc<Agent>) -> Result<Server, ServerError> {
    if let ListenAddr::Unix(path) = addr {
        if path.exists() {
            std::fs::remove_file(path).map_err(|source| ServerError::StaleSocket {
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    let mut server = Server::new()
        .bind(&addr.ttrpc())
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?
        .register_service(services(agent));
    server.start().await.map_err(ServerError::Start)?;
    Ok(server)
}
