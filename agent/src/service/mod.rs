//! The ttrpc services: thin adapters from the generated traits to the
//! agent's state.

/// Implements a generated service trait from handlers written as
/// `async fn name(&self, request: Type) -> Response { body }`, the body giving
/// a `ttrpc::Result<Response>`: the context no handler reads and the
/// `async_trait` boxing are the same for every handler, so they are added here.
/// (rustfmt does not format inside the macro: keep its style by hand.)
macro_rules! handlers {
    (impl $service:ident for $ty:ty {
        $(async fn $method:ident(&$self:ident, $req:tt: $Req:ty $(,)?) -> $Resp:ty $body:block)*
    }) => {
        #[async_trait::async_trait]
        impl $service for $ty {
            $(
                async fn $method(
                    &$self,
                    _ctx: &ttrpc::r#async::TtrpcContext,
                    $req: $Req,
                ) -> ttrpc::Result<$Resp> $body
            )*
        }
    };
}

mod containers;
mod devices;
mod health;
mod network;
mod sandbox;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use pulse_protocols::{
    containers_ttrpc, devices_ttrpc, health_ttrpc, network_ttrpc, sandbox_ttrpc,
};
use tokio::sync::Notify;
use ttrpc::r#async::Service;
use ttrpc::Code;

use crate::container::{ContainerError, Manager, StorageError};

/// What every service shares.
pub struct Agent {
    pub manager: Manager,
    pub started: Instant,
    /// The agent is the guest's PID 1.
    pub init_mode: bool,
    /// The sandbox is being destroyed.
    pub stopping: AtomicBool,
    pub sandbox_id: std::sync::Mutex<String>,
    /// Where /proc and /sys are read for reports ("/" in a guest).
    pub report_root: PathBuf,
    /// Raised when a destroyed sandbox should power the guest off.
    pub power_off: Notify,
}

/// Every service of the API, ready for `Server::register_service`.
pub fn services(agent: Arc<Agent>) -> HashMap<String, Service> {
    let mut all = HashMap::new();
    all.extend(health_ttrpc::create_health(Arc::new(
        health::HealthService(Arc::clone(&agent)),
    )));
    all.extend(sandbox_ttrpc::create_sandbox(Arc::new(
        sandbox::SandboxService(Arc::clone(&agent)),
    )));
    all.extend(containers_ttrpc::create_containers(Arc::new(
        containers::ContainersService(Arc::clone(&agent)),
    )));
    all.extend(devices_ttrpc::create_devices(Arc::new(
        devices::DevicesService(agent),
    )));
    all.extend(network_ttrpc::create_network(Arc::new(
        network::NetworkService,
    )));
    all
}

/// A ttrpc status for an error, with the code a client can act on.
impl From<ContainerError> for ttrpc::Error {
    fn from(err: ContainerError) -> Self {
        let code = match &err {
            ContainerError::NotFound(_)
            | ContainerError::Storage(StorageError::NoSuchSerial(..)) => Code::NOT_FOUND,
            ContainerError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ContainerError::InvalidArgument(_)
            | ContainerError::Spec(_)
            | ContainerError::Storage(StorageError::Invalid(_)) => Code::INVALID_ARGUMENT,
            ContainerError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ContainerError::Storage(_) | ContainerError::Runtime(_) => Code::INTERNAL,
        };
        tracing::debug!(?code, "request failed: {err}");
        status(code, err)
    }
}

/// A ttrpc status with `code` and `msg`.
pub(crate) fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

pub(crate) fn internal(msg: impl ToString) -> ttrpc::Error {
    status(Code::INTERNAL, msg)
}
