//! A small, blocking rtnetlink client: what Pulse needs to carry a pod's network into its VM.
//!
//! - the shim, inside the pod's network namespace ([`in_netns`]): reads the interfaces CNI made
//!   (MAC, MTU, IPv4 addresses, routes, permanent neighbours), creates the pod's multi-queue tap
//!   ([`create_tap`]) and joins tap and veth with tc: an ingress qdisc on each and a u32
//!   match-everything filter whose mirred action redirects every frame to the other's egress
//!   ([`Netlink::redirect_ingress`]);
//! - the agent, in the guest: names, MTUs, addresses and link state of the NICs, routes and
//!   static neighbours.
//!
//! One request at a time, each answered (`NLM_F_ACK`) or dumped to its end before the next.
//! Only IPv4: the guest kernel is built without IPv6.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The main routing table.
pub const RT_TABLE_MAIN: u8 = RouteHeader::RT_TABLE_MAIN;
/// `ETH_P_ALL` in network byte order, as tc filters want their protocol.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The priority of Pulse's redirect filter.
const FILTER_PRIO: u32 = 1;

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{op}: {source}")]
    Kernel {
        /// What was asked.
        op: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// An answer that does not parse.
    #[error("{op}: the kernel's answer does not parse: {reason}")]
    Decode {
        /// What was asked.
        op: String,
        /// Why.
        reason: String,
    },
    /// A network namespace could not be entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// Its file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A tap could not be created or opened.
    #[error("tap {name}: {what}: {source}")]
    Tap {
        /// The tap.
        name: String,
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A bad argument (a name too long, a MAC of the wrong size).
    #[error("{0}")]
    Invalid(String),
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address (Ethernet links).
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The loopback device.
    pub loopback: bool,
    /// An Ethernet link (ARPHRD_ETHER).
    pub ether: bool,
    /// The link kind (`veth`, `tun`, `bridge`, ...), when it has one.
    pub kind: Option<String>,
}

/// An IPv4 address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    /// The address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// An IPv4 route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination network; `None` for the default route.
    pub destination: Option<(Ipv4Addr, u8)>,
    /// Next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Preferred source address.
    pub source: Option<Ipv4Addr>,
    /// Scope (`RT_SCOPE_*`).
    pub scope: u8,
    /// Who added it (`RTPROT_*`): `kernel` routes come with the addresses.
    pub protocol: u8,
    /// Routing table.
    pub table: u32,
}

/// `RTPROT_KERNEL`: routes the kernel adds for an address's subnet.
pub const RTPROT_KERNEL: u8 = 2;
/// `RT_SCOPE_LINK`.
pub const RT_SCOPE_LINK: u8 = 253;
/// `RT_SCOPE_UNIVERSE`.
pub const RT_SCOPE_UNIVERSE: u8 = 0;

/// An IPv4 neighbour (ARP) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The interface's index.
    pub index: u32,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its hardware address.
    pub mac: [u8; 6],
    /// Permanent (static) entry.
    pub permanent: bool,
}

/// A tc filter as dumped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Classifier (`u32`, ...).
    pub kind: String,
    /// Interface a mirred action redirects to, if the filter has one.
    pub redirect_to: Option<u32>,
}

/// A blocking rtnetlink socket, bound in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `msg` and collects the answer: every message of a dump, or nothing for an ACK.
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(NetlinkError::Socket)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let decode = |reason: String| NetlinkError::Decode {
            op: op.to_string(),
            reason,
        };
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(NetlinkError::Socket)?;
            if data.is_empty() {
                return Err(decode("an empty datagram".into()));
            }
            let mut offset = 0;
            while offset < data.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| decode(e.to_string()))?;
                let len = message.header.length as usize;
                if len < 16 {
                    return Err(decode(format!("a message of {len} bytes")));
                }
                offset += (len + 3) & !3;
                if message.header.sequence_number != self.seq {
                    continue; // an answer to an earlier, abandoned request
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                source: e.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            // Without NLM_F_ACK a plain answer ends the exchange; with it
                            // the ACK follows.
                            if flags & NLM_F_ACK == 0 {
                                return Ok(out);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        self.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let msgs = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    /// The interface called `name`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every IPv4 address.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
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
            if let Some(ip) = local.or(address) {
                out.push(Address {
                    index: a.header.index,
                    ip,
                    prefix_len: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Every IPv4 route of every table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let msgs = self.request(
            "listing routes",
            RouteNetlinkMessage::GetRoute(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue; // local, broadcast: the kernel's own
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
            out.push(route);
        }
        Ok(out)
    }

    /// Every IPv4 neighbour entry.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self.request(
            "listing neighbours",
            RouteNetlinkMessage::GetNeighbour(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
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
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(Neighbour {
                    index: n.header.ifindex,
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }

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
            let host_bits = 32 - u32::from(prefix_len);
            let broadcast = u32::from(ip) | ((1u64 << host_bits) - 1) as u32;
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

    /// Adds an ingress qdisc (`ffff:`) to link `index`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.ack(
            &format!("adding an ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes link `index`'s ingress qdisc, and with it its filters.
    pub fn del_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.ack(
            &format!("removing the ingress qdisc of link {index}"),
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        )
    }

    /// Whether link `index` has an ingress qdisc.
    pub fn has_ingress_qdisc(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let msgs = self.request(
            "listing qdiscs",
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs.iter().any(|m| {
            matches!(m, RouteNetlinkMessage::NewQueueDiscipline(q)
                if q.header.index == index as i32
                    && q.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress")))
        }))
    }

    /// Sends every frame that arrives on link `from` out of link `to`: a u32 filter that
    /// matches everything on `from`'s ingress qdisc (which must exist), with a mirred egress
    /// redirect action.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<(), NetlinkError> {
        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.tab = 1;
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let mut key = TcU32Key::default();
        key.mask = 0;
        key.val = 0;
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![key];
        let mut msg = TcMessage::default();
        msg.header.index = index_i32(from)?;
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        msg.header.info = (FILTER_PRIO << 16) | ETH_P_ALL_BE;
        msg.attributes = vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        self.ack(
            &format!("redirecting link {from}'s ingress to link {to}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The filters on link `index`'s ingress qdisc (none without one).
    pub fn ingress_filters(&mut self, index: u32) -> Result<Vec<Filter>, NetlinkError> {
        let mut req = TcMessage::default();
        req.header.index = index_i32(index)?;
        req.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        let msgs = match self.request(
            "listing ingress filters",
            RouteNetlinkMessage::GetTrafficFilter(req),
            NLM_F_DUMP,
        ) {
            Ok(m) => m,
            // No ingress qdisc: nothing to list.
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                continue;
            };
            let mut kind = String::new();
            let mut redirect_to = None;
            for attr in &f.attributes {
                match attr {
                    TcAttribute::Kind(k) => kind = k.clone(),
                    TcAttribute::Options(opts) => {
                        for opt in opts {
                            if let TcOption::U32(TcFilterU32Option::Action(actions)) = opt {
                                redirect_to = redirect_to.or_else(|| mirred_target(actions));
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(Filter { kind, redirect_to });
        }
        Ok(out)
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

fn index_i32(index: u32) -> Result<i32, NetlinkError> {
    i32::try_from(index).map_err(|_| NetlinkError::Invalid(format!("link index {index}")))
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.header.parent = TcHandle::INGRESS;
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    msg
}

fn mirred_target(actions: &[TcAction]) -> Option<u32> {
    actions.iter().find_map(|a| {
        a.attributes.iter().find_map(|attr| match attr {
            TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.ifindex),
                _ => None,
            }),
            _ => None,
        })
    })
}

fn link_of(l: &LinkMessage) -> Link {
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

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn check_ifname(name: &str) -> Result<(), NetlinkError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(NetlinkError::Invalid(format!(
            "'{name}' cannot be an interface name (1 to 15 bytes, no '/', space or NUL)"
        )));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A route in `ip route` words, for messages.
pub fn describe_route(r: &Route) -> String {
    let mut s = match r.destination {
        Some((ip, len)) => format!("{ip}/{len}"),
        None => "default".into(),
    };
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if let Some(src) = r.source {
        s.push_str(&format!(" src {src}"));
    }
    s
}

/// Runs `f` on a thread of its own that has entered the network namespace of `path` (a
/// `/run/netns/...` or `/proc/PID/ns/net` file); the caller's threads stay where they are.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
    let netns = File::open(path).map_err(|source| NetlinkError::Netns {
        path: path.display().to_string(),
        source,
    })?;
    on_own_thread(move || {
        // SAFETY: setns takes a descriptor we own and a flag; it changes only this thread's
        // network namespace (a thread of its own that ends after `f`).
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Netns {
                path: path.display().to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(f())
    })
}

/// Runs `f` on a thread of its own in a new, empty network namespace (tests).
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
    on_own_thread(move || {
        // SAFETY: unshare takes a flag; it moves only this thread, which ends after `f`.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Netns {
                path: "(new)".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(f())
    })
}

fn on_own_thread<T: Send>(
    f: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Creates tap `name` with `queues` queues (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
/// IFF_MULTI_QUEUE`) in the calling thread's network namespace, and returns one descriptor
/// per queue. The tap is not persistent: it goes when the last descriptor closes, with its
/// qdiscs and filters. An existing interface of that name is an error (`IFF_TUN_EXCL`).
pub fn create_tap(name: &str, queues: usize) -> Result<Vec<OwnedFd>, NetlinkError> {
    check_ifname(name)?;
    let err = |what: &'static str| {
        let name = name.to_string();
        move |source| NetlinkError::Tap { name, what, source }
    };
    let path = CString::new("/dev/net/tun").expect("no NUL in a constant");
    let mut fds = Vec::with_capacity(queues.max(1));
    for queue in 0..queues.max(1) {
        // SAFETY: `path` is a valid C string; open has no other memory effects.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(err("opening /dev/net/tun")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by open and nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        let mut flags =
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
        if queue == 0 {
            flags |= libc::IFF_TUN_EXCL;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq, valid for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(err("TUNSETIFF")(io::Error::last_os_error()));
        }
        fds.push(fd);
    }
    Ok(fds)
}

#[cfg(test)]
mod tests;
