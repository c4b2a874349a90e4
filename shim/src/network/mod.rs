//! The pod's network, host side: CNI's interfaces in the pod's network namespace carried into
//! the VM (Kata's `tcfilter` model).
//!
//! For each Ethernet interface CNI made in the pod's namespace (a veth), in that namespace:
//! a multi-queue tap (`tap<N>_pulse`, one queue per queue pair), up, with the veth's MTU; an
//! ingress qdisc on both and a u32 match-everything filter on each whose mirred action
//! redirects every frame to the other's egress. The VM owns the veth's traffic; the guest's
//! NIC gets the veth's MAC, MTU and addresses, and the routes and permanent neighbours of the
//! namespace ([`GuestNetwork`], applied by the agent's `Network` service).
//!
//! The taps are not persistent: their queue descriptors, opened here and handed to the VMM,
//! keep them, so a tap goes with the VMM (also after `kill -9` of the shim, whose QEMU child
//! dies with it), and its qdisc and filter with it. What stays is the veth's ingress qdisc:
//! [`PodNetwork::teardown`] removes it, and the `delete` cleanup of a dead shim does too from
//! the record in the sandbox directory ([`cleanup_recorded`]); CNI removes the veth itself.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use pulse_netlink::{
    format_mac, in_netns, Address, Link, Neighbour, Netlink, NetlinkError, Route, RTPROT_KERNEL,
    RT_TABLE_MAIN,
};
use pulse_protocols::netlink::link_addresses;
use pulse_protocols::network as api;
use serde::{Deserialize, Serialize};

/// The name of the record in the sandbox directory.
pub const RECORD: &str = "network.json";

/// What the pod's spec says about its network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodNetns {
    /// A namespace someone made (CNI through CRI, `ctr run --cni`): its file.
    Path(PathBuf),
    /// A new, empty namespace (`ctr run` without `--cni`): nothing to carry.
    Fresh,
    /// No network namespace entry: the host's network (`--net-host`, `hostNetwork`).
    Host,
}

/// Why the pod's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request in the pod's namespace failed.
    #[error("in the pod's network namespace {netns}: {source}")]
    Netlink {
        /// The namespace's file.
        netns: String,
        /// Why.
        #[source]
        source: NetlinkError,
    },
    /// The holder of the pod's own namespace did not start.
    #[error(transparent)]
    Holder(#[from] late::HolderError),
    /// A pod on the host's network.
    #[error("the pod's spec has no network namespace: it asks for the host's network, which a VM cannot share (run it with a pod network, e.g. `ctr run --cni`, not `--net-host` / hostNetwork)")]
    HostNetwork,
}

/// The namespace in a spec's `linux.namespaces`.
pub fn netns_of(spec: &serde_json::Value) -> PodNetns {
    let namespaces = spec
        .pointer("/linux/namespaces")
        .and_then(serde_json::Value::as_array);
    let Some(network) = namespaces.and_then(|all| {
        all.iter()
            .find(|ns| ns.get("type").and_then(serde_json::Value::as_str) == Some("network"))
    }) else {
        return PodNetns::Host;
    };
    match network.get("path").and_then(serde_json::Value::as_str) {
        Some(p) if !p.is_empty() => PodNetns::Path(PathBuf::from(p)),
        _ => PodNetns::Fresh,
    }
}

/// One interface of the pod's namespace that the VM takes over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// The veth's name.
    pub veth: String,
    /// The tap made for it.
    pub tap: String,
    /// The guest's name for it.
    pub guest: String,
}

/// What the agent sets in the guest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestNetwork {
    /// One per NIC.
    pub interfaces: Vec<api::Interface>,
    /// Routes of the main table (not the kernel's subnet routes, which the addresses bring).
    pub routes: Vec<api::Route>,
    /// Permanent neighbour entries.
    pub neighbours: Vec<api::Neighbour>,
}

/// What the namespace holds, as read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Links.
    pub links: Vec<Link>,
    /// IPv4 addresses.
    pub addresses: Vec<Address>,
    /// IPv4 routes.
    pub routes: Vec<Route>,
    /// IPv4 neighbours.
    pub neighbours: Vec<Neighbour>,
}

/// The tap for the `n`th carried interface.
pub fn tap_name(n: usize) -> String {
    format!("tap{n}_pulse")
}

/// Whether a link is one Pulse carries: Ethernet, not loopback, not a tap (Pulse's own or
/// another's), with a MAC.
fn carried(link: &Link) -> bool {
    link.ether && !link.loopback && link.kind.as_deref() != Some("tun") && link.mac.is_some()
}

/// Chooses the interfaces to carry and translates the namespace into the guest's settings.
/// Interfaces are taken in index order and named `eth0`, `eth1`, ... in the guest.
pub fn plan(snapshot: &Snapshot) -> (Vec<(Link, Carried)>, GuestNetwork) {
    let mut links: Vec<&Link> = snapshot.links.iter().filter(|l| carried(l)).collect();
    links.sort_by_key(|l| l.index);
    let mut chosen = Vec::new();
    let mut guest = GuestNetwork::default();
    for (n, link) in links.iter().enumerate() {
        let name = format!("eth{n}");
        guest.interfaces.push(api::Interface {
            mac: link.mac.map(|m| format_mac(&m)).unwrap_or_default(),
            name: name.clone(),
            mtu: link.mtu,
            up: true,
            addresses: link_addresses(&snapshot.addresses, link.index),
            ..Default::default()
        });
        chosen.push((
            (*link).clone(),
            Carried {
                veth: link.name.clone(),
                tap: tap_name(n),
                guest: name,
            },
        ));
    }
    let guest_name = |index: u32| {
        chosen
            .iter()
            .find(|(l, _)| l.index == index)
            .map(|(_, c)| c.guest.clone())
    };
    let opt = |ip: Option<Ipv4Addr>| ip.map(|i| i.to_string()).unwrap_or_default();
    for r in &snapshot.routes {
        if r.table != u32::from(RT_TABLE_MAIN) || r.protocol == RTPROT_KERNEL {
            continue;
        }
        let Some(device) = r.oif.and_then(guest_name) else {
            continue;
        };
        guest.routes.push(api::Route {
            destination: r
                .destination
                .map(|(ip, len)| format!("{ip}/{len}"))
                .unwrap_or_default(),
            gateway: opt(r.gateway),
            device,
            source: opt(r.source),
            scope: u32::from(r.scope),
            ..Default::default()
        });
    }
    for n in snapshot.neighbours.iter().filter(|n| n.permanent) {
        if let Some(device) = guest_name(n.index) {
            guest.neighbours.push(api::Neighbour {
                address: n.ip.to_string(),
                mac: format_mac(&n.mac),
                device,
                ..Default::default()
            });
        }
    }
    (chosen, guest)
}

/// A NIC for the VMM: the tap's queue descriptors (one per queue pair), the MAC and MTU the
/// guest gets.
#[derive(Debug)]
pub struct NicDevice {
    /// The tap's name (in the pod's namespace).
    pub tap: String,
    /// One descriptor per queue pair.
    pub fds: Vec<OwnedFd>,
    /// The guest NIC's MAC (the veth's).
    pub mac: [u8; 6],
    /// Its MTU (the veth's).
    pub mtu: u16,
}

impl NicDevice {
    /// Queue pairs.
    // One descriptor per pair, and the pairs were asked of `create_tap` as a u16.
    #[allow(clippy::cast_possible_truncation)]
    pub fn queue_pairs(&self) -> u16 {
        self.fds.len() as u16
    }
}

/// The record of what was made, for teardown and for the cleanup after a dead shim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The pod's namespace file.
    pub netns: PathBuf,
    /// The interfaces carried.
    pub carried: Vec<Carried>,
}

fn in_pod_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce(&mut Netlink) -> Result<T, NetlinkError> + Send,
) -> Result<T, NetworkError> {
    let wrap = |source| NetworkError::Netlink {
        netns: netns.display().to_string(),
        source,
    };
    in_netns(netns, || {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .map_err(wrap)?
    .map_err(wrap)
}

/// Joins `veth` and `tap` both ways (tc ingress + mirred redirect); the tap takes the veth's
/// MTU, both are up.
fn join(nl: &mut Netlink, veth: &Link, tap: &Link) -> Result<(), NetlinkError> {
    nl.set_link(tap.index, None, Some(veth.mtu), Some(true))?;
    if !veth.up {
        nl.set_link(veth.index, None, None, Some(true))?;
    }
    nl.add_ingress_qdisc(veth.index)?;
    nl.add_ingress_qdisc(tap.index)?;
    nl.redirect_ingress(veth.index, tap.index)?;
    nl.redirect_ingress(tap.index, veth.index)
}

/// Reads the namespace.
pub fn snapshot(nl: &mut Netlink) -> Result<Snapshot, NetlinkError> {
    Ok(Snapshot {
        links: nl.links()?,
        addresses: nl.addresses()?,
        routes: nl.routes()?,
        neighbours: nl.neighbours()?,
    })
}

impl PodNetwork {
    /// Sets up the pod's network in `netns`: taps with `queue_pairs` queues joined to the
    /// veths. Returns the record, the NICs for the VMM and the guest's settings. On failure
    /// whatever was made is removed again.
    pub fn setup(
        netns: &Path,
        queue_pairs: u16,
    ) -> Result<(PodNetwork, Vec<NicDevice>, GuestNetwork), NetworkError> {
        let pairs = usize::from(queue_pairs.max(1));
        let (carried, nics, guest) = in_pod_netns(netns, |nl| {
            let (chosen, guest) = plan(&snapshot(nl)?);
            let mut made: Vec<(u32, Carried)> = Vec::new();
            let mut nics = Vec::new();
            let result = (|| {
                for (veth, c) in &chosen {
                    let fds = pulse_netlink::create_tap(&c.tap, pairs)?;
                    let tap = nl.link_by_name(&c.tap)?.ok_or_else(|| {
                        NetlinkError::Invalid(format!("tap {} vanished after its creation", c.tap))
                    })?;
                    made.push((veth.index, c.clone()));
                    join(nl, veth, &tap)?;
                    nics.push(NicDevice {
                        tap: c.tap.clone(),
                        fds,
                        mac: veth.mac.unwrap_or_default(),
                        mtu: u16::try_from(veth.mtu).unwrap_or(u16::MAX),
                    });
                }
                Ok(())
            })();
            if let Err(e) = result {
                drop(nics);
                for (veth, _) in &made {
                    let _ = nl.del_ingress_qdisc(*veth);
                }
                return Err(e);
            }
            Ok((made.into_iter().map(|(_, c)| c).collect(), nics, guest))
        })?;
        Ok((
            PodNetwork {
                netns: netns.to_path_buf(),
                carried,
                // The NICs' descriptors travel separately: the record is plain data.
            },
            nics,
            guest,
        ))
    }

    /// Removes what [`PodNetwork::setup`] made and the VMM left: the veths' ingress qdiscs
    /// (and with them their filters), and any tap still there (a tap goes with its last
    /// descriptor, so normally none is). A namespace that is gone already (CNI removed it)
    /// leaves nothing to do. Returns what was removed, for the log.
    pub fn teardown(&self) -> Result<Vec<String>, NetworkError> {
        if !self.netns.exists() {
            return Ok(Vec::new());
        }
        in_pod_netns(&self.netns, |nl| {
            let mut removed = Vec::new();
            for c in &self.carried {
                if let Some(veth) = nl.link_by_name(&c.veth)? {
                    if nl.has_ingress_qdisc(veth.index)? {
                        nl.del_ingress_qdisc(veth.index)?;
                        removed.push(format!("the ingress qdisc of {}", c.veth));
                    }
                }
                if let Some(tap) = nl.link_by_name(&c.tap)? {
                    nl.del_link(tap.index)?;
                    removed.push(format!("tap {}", c.tap));
                }
            }
            Ok(removed)
        })
    }

    /// Writes the record into the sandbox directory.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::private_fs::write_file(&dir.join(RECORD), &text)
    }
}

/// Removes what a dead shim's record lists (its VM processes are gone by now).
pub fn cleanup_recorded(dir: &Path) {
    let Ok(text) = std::fs::read(dir.join(RECORD)) else {
        return;
    };
    match serde_json::from_slice::<PodNetwork>(&text) {
        Ok(network) => match network.teardown() {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "a dead shim's pod network removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("removing a dead shim's pod network: {e}"),
        },
        Err(e) => tracing::warn!("{}: {e}", dir.join(RECORD).display()),
    }
}

/// The `UpdateInterfaces`, `UpdateRoutes` and `AddNeighbours` requests for `guest`.
pub fn requests(
    guest: &GuestNetwork,
) -> (
    api::UpdateInterfacesRequest,
    api::UpdateRoutesRequest,
    api::AddNeighboursRequest,
) {
    (
        api::UpdateInterfacesRequest {
            interfaces: guest.interfaces.clone(),
            ..Default::default()
        },
        api::UpdateRoutesRequest {
            routes: guest.routes.clone(),
            ..Default::default()
        },
        api::AddNeighboursRequest {
            neighbours: guest.neighbours.clone(),
            ..Default::default()
        },
    )
}

pub mod late;
#[cfg(test)]
mod tests;
