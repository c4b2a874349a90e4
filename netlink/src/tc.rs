//! Traffic control: ingress qdiscs and the u32 filter whose mirred action joins two links.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Filter, Netlink, NetlinkError};

/// `ETH_P_ALL` in network byte order, as tc filters want their protocol.
// ETH_P_ALL is 0x0003: the u16 of an ethertype.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The ingress qdisc's handle (`ffff:`), the parent of its filters.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// The priority of Pulse's redirect filter.
const FILTER_PRIO: u32 = 1;

impl Netlink {
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
                if q.header.index.cast_unsigned() == index
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
        msg.header.parent = INGRESS_HANDLE;
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
        req.header.parent = INGRESS_HANDLE;
        let listed = self.dump(
            "listing ingress filters",
            RouteNetlinkMessage::GetTrafficFilter(req),
            |m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some(filter_of(&f)),
                _ => None,
            },
        );
        match listed {
            // No ingress qdisc: nothing to list.
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(Vec::new())
            }
            other => other,
        }
    }
}

/// A filter's kind and where its mirred action redirects to, if it has one.
fn filter_of(f: &TcMessage) -> Filter {
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
    Filter { kind, redirect_to }
}

fn index_i32(index: u32) -> Result<i32, NetlinkError> {
    i32::try_from(index).map_err(|_| NetlinkError::Invalid(format!("link index {index}")))
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header.index = index.cast_signed();
    msg.header.handle = INGRESS_HANDLE;
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
