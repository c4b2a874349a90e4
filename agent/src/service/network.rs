//! `Network`: the guest's interfaces, routes and neighbours ([`crate::network`]).

use pulse_netlink::Netlink;
use pulse_protocols::network::{
    AddNeighboursRequest, AddNeighboursResponse, ListInterfacesRequest, ListInterfacesResponse,
    UpdateInterfacesRequest, UpdateInterfacesResponse, UpdateRoutesRequest, UpdateRoutesResponse,
};
use pulse_protocols::network_ttrpc::Network;
use ttrpc::Code;

use super::{internal, status};
use crate::network::{self, NetworkError};

pub struct NetworkService;

impl From<NetworkError> for ttrpc::Error {
    fn from(err: NetworkError) -> Self {
        let code = match &err {
            NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoSuchMac(_) | NetworkError::NoSuchDevice(_) => Code::NOT_FOUND,
            NetworkError::Netlink(_) => Code::INTERNAL,
        };
        tracing::warn!(?code, "network request failed: {err}");
        status(code, err)
    }
}

/// Runs `f` with a netlink socket, off the runtime's threads (netlink calls block).
async fn with_netlink<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> Result<T, NetworkError> + Send + 'static,
) -> ttrpc::Result<T> {
    let result = tokio::task::spawn_blocking(move || f(&mut Netlink::open()?))
        .await
        .map_err(internal)?;
    Ok(result?)
}

/// Checks every item of a request with `spec`, then, all of them valid,
/// applies them with `apply`.
async fn apply_all<Item, Spec: Send + 'static>(
    items: &[Item],
    spec: impl Fn(&Item) -> Result<Spec, NetworkError>,
    apply: impl FnOnce(&mut Netlink, &[Spec]) -> Result<(), NetworkError> + Send + 'static,
) -> ttrpc::Result<()> {
    let specs = items.iter().map(spec).collect::<Result<Vec<_>, _>>()?;
    with_netlink(move |nl| apply(nl, &specs)).await
}

handlers! {
    impl Network for NetworkService {
        async fn update_interfaces(
            &self,
            req: UpdateInterfacesRequest,
        ) -> UpdateInterfacesResponse {
            apply_all(&req.interfaces, network::interface_spec, |nl, specs| {
                network::apply_interfaces(nl, specs, network::NIC_WAIT)
            })
            .await?;
            tracing::info!(interfaces = req.interfaces.len(), "network interfaces set");
            Ok(UpdateInterfacesResponse::default())
        }

        async fn update_routes(&self, req: UpdateRoutesRequest) -> UpdateRoutesResponse {
            apply_all(&req.routes, network::route_spec, network::apply_routes).await?;
            Ok(UpdateRoutesResponse::default())
        }

        async fn add_neighbours(&self, req: AddNeighboursRequest) -> AddNeighboursResponse {
            apply_all(&req.neighbours, network::neighbour_spec, network::apply_neighbours).await?;
            Ok(AddNeighboursResponse::default())
        }

        async fn list_interfaces(&self, _: ListInterfacesRequest) -> ListInterfacesResponse {
            let interfaces = with_netlink(network::list_interfaces).await?;
            Ok(ListInterfacesResponse { interfaces, ..Default::default() })
        }
    }
}
