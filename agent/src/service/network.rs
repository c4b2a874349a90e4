//! `Network`: the guest's interfaces, routes and neighbours ([`crate::network`]).

use pulse_netlink::Netlink;
use pulse_protocols::network::{
    AddNeighboursRequest, AddNeighboursResponse, ListInterfacesRequest, ListInterfacesResponse,
    UpdateInterfacesRequest, UpdateInterfacesResponse, UpdateRoutesRequest, UpdateRoutesResponse,
};
use pulse_protocols::network_ttrpc::Network;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use super::internal;
use crate::network::{self, NetworkError};

pub struct NetworkService;

fn rpc(err: NetworkError) -> ttrpc::Error {
    let code = match &err {
        NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
        NetworkError::NoSuchMac(_) | NetworkError::NoSuchDevice(_) => Code::NOT_FOUND,
        NetworkError::Netlink(_) => Code::INTERNAL,
    };
    tracing::warn!(?code, "network request failed: {err}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, err.to_string()))
}

/// Runs `f` with a netlink socket, off the runtime's threads (netlink calls block).
async fn with_netlink<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> Result<T, NetworkError> + Send + 'static,
) -> ttrpc::Result<T> {
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .await
    .map_err(internal)?
    .map_err(rpc)
}

#[async_trait::async_trait]
impl Network for NetworkService {
    async fn update_interfaces(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfacesRequest,
    ) -> ttrpc::Result<UpdateInterfacesResponse> {
        let specs = req
            .interfaces
            .iter()
            .map(network::interface_spec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(rpc)?;
        with_netlink(move |nl| network::apply_interfaces(nl, &specs, network::NIC_WAIT)).await?;
        tracing::info!(interfaces = req.interfaces.len(), "network interfaces set");
        Ok(UpdateInterfacesResponse::default())
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<UpdateRoutesResponse> {
        let specs = req
            .routes
            .iter()
            .map(network::route_spec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(rpc)?;
        with_netlink(move |nl| network::apply_routes(nl, &specs)).await?;
        Ok(UpdateRoutesResponse::default())
    }

    async fn add_neighbours(
        &self,
        _ctx: &TtrpcContext,
        req: AddNeighboursRequest,
    ) -> ttrpc::Result<AddNeighboursResponse> {
        let specs = req
            .neighbours
            .iter()
            .map(network::neighbour_spec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(rpc)?;
        with_netlink(move |nl| network::apply_neighbours(nl, &specs)).await?;
        Ok(AddNeighboursResponse::default())
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: ListInterfacesRequest,
    ) -> ttrpc::Result<ListInterfacesResponse> {
        let interfaces = with_netlink(network::list_interfaces).await?;
        Ok(ListInterfacesResponse {
            interfaces,
            ..Default::default()
        })
    }
}
