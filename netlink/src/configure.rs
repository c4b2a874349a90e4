//! Changing links, addresses, routes and neighbours; veth pairs and namespace moves.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::text::describe_route;
use crate::{Neighbour, Netlink, NetlinkError, Route, RT_TABLE_MAIN};

impl Netlink {
    /// Changes a link: its name, MTU and administrative state, where given. A rename needs the
    /// link down.
    pub fn set_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
        up: Option<bool>,
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = up {
            msg.header.change_mask = LinkFlags::Up;
            if up {
                msg.header.flags = LinkFlags::Up;
            }
        }
        if let Some(name) = name {
            check_ifname(name)?;
            msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.ack(
            &format!("changing link {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Gives link `index` the hardware address `mac`.
    pub fn set_link_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.ack(
            &format!("setting the MAC of link {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Adds an IPv4 address to link `index` (replacing an equal one).
    pub fn add_address(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        if prefix_len > 32 {
            return Err(NetlinkError::Invalid(format!(
                "prefix length {prefix_len} of {ip} is over 32"
            )));
        }
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        if prefix_len < 31 {
            let broadcast = u32::from(ip) | (u32::MAX >> prefix_len);
            msg.attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
        }
        self.ack(
            &format!("adding {ip}/{prefix_len} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Adds (or replaces) an IPv4 route in its table (the main one when `table` is 0).
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::from(route.scope);
        msg.header.kind = RouteType::Unicast;
        if let Some((dst, len)) = route.destination {
            if len > 32 {
                return Err(NetlinkError::Invalid(format!(
                    "route to {dst}/{len}: prefix length over 32"
                )));
            }
            msg.header.destination_prefix_length = len;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = route.source {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        if route.table != 0 && route.table != u32::from(RT_TABLE_MAIN) {
            msg.attributes.push(RouteAttribute::Table(route.table));
        }
        self.ack(
            &format!("adding the route {}", describe_route(route)),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Adds (or replaces) a permanent IPv4 neighbour entry.
    pub fn add_neighbour(&mut self, n: &Neighbour) -> Result<(), NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = n.index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
        self.ack(
            &format!("adding the neighbour {} on link {}", n.ip, n.index),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Creates a veth pair `name` <-> `peer` (tests and tools).
    pub fn add_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        check_ifname(name)?;
        check_ifname(peer)?;
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.ack(
            &format!("creating the veth pair {name}/{peer}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Moves link `index` into the network namespace of `netns` (an open namespace file).
    pub fn move_to_netns(&mut self, index: u32, netns: &File) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.ack(
            &format!("moving link {index} to another network namespace"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Removes link `index`.
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(
            &format!("removing link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }
}

pub(crate) fn check_ifname(name: &str) -> Result<(), NetlinkError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(NetlinkError::Invalid(format!(
            "'{name}' cannot be an interface name (1 to 15 bytes, no '/', space or NUL)"
        )));
    }
    Ok(())
}
