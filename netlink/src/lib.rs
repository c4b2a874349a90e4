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

mod configure;
mod dump;
mod netns;
mod tap;
mod tc;
mod text;

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::route::RouteHeader;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netns::{in_netns, in_new_netns};
pub use tap::create_tap;
pub use text::{describe_route, format_mac, parse_mac};

/// The main routing table.
pub const RT_TABLE_MAIN: u8 = RouteHeader::RT_TABLE_MAIN;

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
}

#[cfg(test)]
mod tests;
