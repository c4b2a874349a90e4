//! Reading the namespace's state: links, IPv4 addresses, routes and neighbours.

use std::net::IpAddr;

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Address, Link, Neighbour, Netlink, NetlinkError, Route};

impl Netlink {
    /// Dumps with `msg` and keeps what `pick` makes of each answer.
    pub(crate) fn dump<T>(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        Ok(self
            .request(op, msg, NLM_F_DUMP)?
            .into_iter()
            .filter_map(pick)
            .collect())
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let req = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.dump("listing links", req, |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
            _ => None,
        })
    }

    /// The interface called `name`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every IPv4 address.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        self.dump(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(req),
            address_of,
        )
    }

    /// Every IPv4 route of every table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        self.dump(
            "listing routes",
            RouteNetlinkMessage::GetRoute(req),
            route_of,
        )
    }

    /// Every IPv4 neighbour entry.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        self.dump(
            "listing neighbours",
            RouteNetlinkMessage::GetNeighbour(req),
            neighbour_of,
        )
    }
}

/// An address message's IPv4 address (its local one where it has both).
fn address_of(m: RouteNetlinkMessage) -> Option<Address> {
    let RouteNetlinkMessage::NewAddress(a) = m else {
        return None;
    };
    let mut local = None;
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    local.or(address).map(|ip| Address {
        index: a.header.index,
        ip,
        prefix_len: a.header.prefix_len,
    })
}

/// A unicast route (local and broadcast ones are the kernel's own: None).
fn route_of(m: RouteNetlinkMessage) -> Option<Route> {
    let RouteNetlinkMessage::NewRoute(r) = m else {
        return None;
    };
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route {
        destination: None,
        gateway: None,
        oif: None,
        source: None,
        scope: u8::from(r.header.scope),
        protocol: u8::from(r.header.protocol),
        table: u32::from(r.header.table),
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                route.destination = Some((*ip, r.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => route.source = Some(*ip),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    Some(route)
}

/// A neighbour entry with both an IPv4 address and a MAC.
fn neighbour_of(m: RouteNetlinkMessage) -> Option<Neighbour> {
    let RouteNetlinkMessage::NewNeighbour(n) = m else {
        return None;
    };
    let mut ip = None;
    let mut mac = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            _ => {}
        }
    }
    Some(Neighbour {
        index: n.header.ifindex,
        ip: ip?,
        mac: mac?,
        permanent: n.header.state == NeighbourState::Permanent,
    })
}

pub(crate) fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        loopback: l.header.flags.contains(LinkFlags::Loopback),
        ether: l.header.link_layer_type == LinkLayerType::Ether,
        kind: None,
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => link.mac = mac_of(a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

pub(crate) fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}
