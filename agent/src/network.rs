//! The guest's network, as the shim read it from the pod's network namespace: each NIC found
//! by the MAC the VMM gave it, renamed, its MTU and IPv4 addresses set and brought up; then
//! routes and permanent neighbour entries. Everything through netlink ([`pulse_netlink`]).
//!
//! The requests are checked whole before anything is changed: names must be interface names,
//! addresses dotted IPv4 with a prefix of at most 32, MACs unicast.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pulse_netlink::{Netlink, NetlinkError, Route, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE};
use pulse_protocols::netlink::link_addresses;
use pulse_protocols::network as api;

/// How long a NIC may take to appear (its driver probes at boot; hot-plug is not used).
pub const NIC_WAIT: Duration = Duration::from_secs(5);

/// Why the network could not be set.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A request that is not valid.
    #[error("{0}")]
    Invalid(String),
    /// No NIC has this MAC.
    #[error("no network interface has MAC {0} (is the VM's virtio-net there?)")]
    NoSuchMac(String),
    /// A route or neighbour names an interface that does not exist.
    #[error("no network interface {0}")]
    NoSuchDevice(String),
    /// The kernel refused.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// One NIC's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub mac: [u8; 6],
    /// The MAC it takes (ctr's CNI ran after the boot).
    pub set_mac: Option<[u8; 6]>,
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// One route, by interface name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub device: String,
    pub source: Option<Ipv4Addr>,
    pub scope: u8,
}

/// One permanent neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourSpec {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub device: String,
}

fn invalid(msg: String) -> NetworkError {
    NetworkError::Invalid(msg)
}

fn ip(field: &str, s: &str) -> Result<Ipv4Addr, NetworkError> {
    s.parse()
        .map_err(|_| invalid(format!("{field} '{s}' is not an IPv4 address")))
}

fn opt_ip(field: &str, s: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
    if s.is_empty() {
        Ok(None)
    } else {
        ip(field, s).map(Some)
    }
}

fn mac(s: &str) -> Result<[u8; 6], NetworkError> {
    let m = pulse_netlink::parse_mac(s)
        .ok_or_else(|| invalid(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)")))?;
    if m[0] & 1 != 0 {
        return Err(invalid(format!("{s} is a multicast MAC")));
    }
    Ok(m)
}

fn prefix(len: u32, what: &str) -> Result<u8, NetworkError> {
    u8::try_from(len)
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| invalid(format!("{what}: prefix length {len} is over 32")))
}

fn ifname(s: &str) -> Result<String, NetworkError> {
    if s.is_empty()
        || s.len() > 15
        || s == "."
        || s == ".."
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(format!(
            "'{s}' is not an interface name (1 to 15 of [A-Za-z0-9_.-])"
        )));
    }
    Ok(s.to_string())
}

/// Checks one interface of a request.
pub fn interface_spec(i: &api::Interface) -> Result<InterfaceSpec, NetworkError> {
    let name = ifname(&i.name)?;
    if i.mtu != 0 && !(68..=65535).contains(&i.mtu) {
        return Err(invalid(format!("{name}: MTU {} out of 68..65535", i.mtu)));
    }
    let addresses = i
        .addresses
        .iter()
        .map(|a| {
            let addr = ip("address", &a.address)?;
            Ok((addr, prefix(a.prefix_len, &a.address)?))
        })
        .collect::<Result<Vec<_>, NetworkError>>()?;
    let set_mac = if i.set_mac.is_empty() {
        None
    } else {
        Some(mac(&i.set_mac)?)
    };
    Ok(InterfaceSpec {
        mac: mac(&i.mac)?,
        set_mac,
        name,
        mtu: i.mtu,
        addresses,
    })
}

/// Checks one route of a request.
pub fn route_spec(r: &api::Route) -> Result<RouteSpec, NetworkError> {
    let destination = if r.destination.is_empty() {
        None
    } else {
        let (addr, len) = r.destination.split_once('/').ok_or_else(|| {
            invalid(format!(
                "route destination '{}' is not a CIDR",
                r.destination
            ))
        })?;
        let len: u32 = len
            .parse()
            .map_err(|_| invalid(format!("route destination '{}'", r.destination)))?;
        Some((ip("route destination", addr)?, prefix(len, &r.destination)?))
    };
    let scope = u8::try_from(r.scope)
        .ok()
        .filter(|s| [RT_SCOPE_UNIVERSE, RT_SCOPE_LINK].contains(s))
        .ok_or_else(|| invalid(format!("route scope {} (0 or 253)", r.scope)))?;
    Ok(RouteSpec {
        destination,
        gateway: opt_ip("gateway", &r.gateway)?,
        device: ifname(&r.device)?,
        source: opt_ip("source", &r.source)?,
        scope,
    })
}

/// Checks one neighbour of a request.
pub fn neighbour_spec(n: &api::Neighbour) -> Result<NeighbourSpec, NetworkError> {
    Ok(NeighbourSpec {
        ip: ip("neighbour", &n.address)?,
        mac: pulse_netlink::parse_mac(&n.mac)
            .ok_or_else(|| invalid(format!("neighbour MAC '{}'", n.mac)))?,
        device: ifname(&n.device)?,
    })
}

fn index_of(nl: &mut Netlink, name: &str) -> Result<u32, NetworkError> {
    nl.link_by_name(name)?
        .map(|l| l.index)
        .ok_or_else(|| NetworkError::NoSuchDevice(name.to_string()))
}

/// Configures the interfaces. NICs are found by MAC (waiting up to `wait` for each to
/// appear); those to rename are first given temporary names, so that two NICs can trade
/// names.
pub fn apply_interfaces(
    nl: &mut Netlink,
    specs: &[InterfaceSpec],
    wait: Duration,
) -> Result<(), NetworkError> {
    let deadline = Instant::now() + wait;
    let mut found = Vec::with_capacity(specs.len());
    for spec in specs {
        let link = loop {
            if let Some(l) = nl
                .links()?
                .into_iter()
                .find(|l| !l.loopback && l.mac == Some(spec.mac))
            {
                break l;
            }
            if Instant::now() >= deadline {
                return Err(NetworkError::NoSuchMac(pulse_netlink::format_mac(
                    &spec.mac,
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        found.push(link);
    }
    for (i, link) in found.iter().enumerate() {
        if link.name != specs[i].name {
            nl.set_link(link.index, None, None, Some(false))?;
            nl.set_link(link.index, Some(&format!("pnet{i}tmp")), None, None)?;
        }
    }
    for (spec, link) in specs.iter().zip(&found) {
        if link.name != spec.name {
            nl.set_link(link.index, Some(&spec.name), None, None)?;
        }
        if let Some(mac) = spec.set_mac.filter(|m| link.mac != Some(*m)) {
            nl.set_link_mac(link.index, mac)?;
        }
        if spec.mtu != 0 {
            nl.set_link(link.index, None, Some(spec.mtu), None)?;
        }
        for (addr, len) in &spec.addresses {
            nl.add_address(link.index, *addr, *len)?;
        }
        nl.set_link(link.index, None, None, Some(true))?;
    }
    Ok(())
}

/// Adds the routes: those without a gateway first, so that the gateways are reachable.
pub fn apply_routes(nl: &mut Netlink, specs: &[RouteSpec]) -> Result<(), NetworkError> {
    let mut ordered: Vec<&RouteSpec> = specs.iter().collect();
    ordered.sort_by_key(|r| r.gateway.is_some());
    for r in ordered {
        let oif = index_of(nl, &r.device)?;
        nl.add_route(&Route {
            destination: r.destination,
            gateway: r.gateway,
            oif: Some(oif),
            source: r.source,
            scope: r.scope,
            protocol: 0,
            table: 0,
        })?;
    }
    Ok(())
}

/// Adds the permanent neighbour entries.
pub fn apply_neighbours(nl: &mut Netlink, specs: &[NeighbourSpec]) -> Result<(), NetworkError> {
    for n in specs {
        let index = index_of(nl, &n.device)?;
        nl.add_neighbour(&pulse_netlink::Neighbour {
            index,
            ip: n.ip,
            mac: n.mac,
            permanent: true,
        })?;
    }
    Ok(())
}

/// The interfaces other than loopback, with their addresses.
pub fn list_interfaces(nl: &mut Netlink) -> Result<Vec<api::Interface>, NetworkError> {
    let addrs = nl.addresses()?;
    Ok(nl
        .links()?
        .into_iter()
        .filter(|l| !l.loopback)
        .map(|l| api::Interface {
            mac: l
                .mac
                .map(|m| pulse_netlink::format_mac(&m))
                .unwrap_or_default(),
            name: l.name.clone(),
            mtu: l.mtu,
            up: l.up,
            addresses: link_addresses(&addrs, l.index),
            ..Default::default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: &str, name: &str, mtu: u32, addrs: &[(&str, u32)]) -> api::Interface {
        api::Interface {
            mac: mac.into(),
            name: name.into(),
            mtu,
            addresses: addrs
                .iter()
                .map(|(a, l)| api::IpAddress {
                    address: (*a).into(),
                    prefix_len: *l,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        let ok = iface("0a:58:0a:00:00:05", "eth0", 1450, &[("10.88.0.5", 24)]);
        assert!(interface_spec(&ok).is_ok());
        for (bad, why) in [
            (iface("0a:58", "eth0", 0, &[]), "not a MAC"),
            (iface("01:00:5e:00:00:01", "eth0", 0, &[]), "multicast"),
            (
                iface("0a:58:0a:00:00:05", "../x", 0, &[]),
                "not an interface name",
            ),
            (
                iface("0a:58:0a:00:00:05", "a-name-far-too-long", 0, &[]),
                "not an interface name",
            ),
            (iface("0a:58:0a:00:00:05", "eth0", 10, &[]), "MTU 10"),
            (
                iface("0a:58:0a:00:00:05", "eth0", 0, &[("10.88.0.500", 24)]),
                "not an IPv4",
            ),
            (
                iface("0a:58:0a:00:00:05", "eth0", 0, &[("fd00::1", 64)]),
                "not an IPv4",
            ),
            (
                iface("0a:58:0a:00:00:05", "eth0", 0, &[("10.0.0.1", 33)]),
                "over 32",
            ),
        ] {
            let err = interface_spec(&bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let route = |dst: &str, gw: &str, scope: u32| api::Route {
            destination: dst.into(),
            gateway: gw.into(),
            device: "eth0".into(),
            scope,
            ..Default::default()
        };
        let r = route_spec(&route("", "10.88.0.1", 0)).unwrap();
        assert_eq!(
            (r.destination, r.gateway),
            (None, Some(Ipv4Addr::new(10, 88, 0, 1)))
        );
        let r = route_spec(&route("10.1.0.0/16", "", 253)).unwrap();
        assert_eq!(r.destination, Some((Ipv4Addr::new(10, 1, 0, 0), 16)));
        for (bad, why) in [
            (route("10.1.0.0", "", 0), "not a CIDR"),
            (route("10.1.0.0/40", "", 0), "over 32"),
            (route("", "gw", 0), "gateway 'gw'"),
            (route("", "", 200), "scope 200"),
        ] {
            let err = route_spec(&bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    /// In a network namespace of its own: two veths stand in for two virtio NICs, found by MAC,
    /// and trade names.
    #[test]
    fn nics_are_found_by_mac_renamed_addressed_and_routed() {
        let done = pulse_netlink::in_new_netns(|| {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth("eth0", "peer0").unwrap();
            nl.add_veth("eth1", "peer1").unwrap();
            let links = nl.links().unwrap();
            let mac_of = |n: &str| links.iter().find(|l| l.name == n).unwrap().mac.unwrap();
            let (m0, m1) = (mac_of("eth0"), mac_of("eth1"));
            let f = pulse_netlink::format_mac;
            // The NIC that is eth0 now becomes eth1 and the other way round.
            let specs = [
                interface_spec(&iface(&f(&m1), "eth0", 1450, &[("10.88.0.5", 24)])).unwrap(),
                interface_spec(&iface(&f(&m0), "eth1", 1400, &[("10.99.0.5", 16)])).unwrap(),
            ];
            apply_interfaces(&mut nl, &specs, Duration::ZERO).unwrap();
            let routes = [
                route_spec(&api::Route {
                    destination: "".into(),
                    gateway: "10.88.0.1".into(),
                    device: "eth0".into(),
                    ..Default::default()
                })
                .unwrap(),
                route_spec(&api::Route {
                    destination: "172.20.0.0/16".into(),
                    device: "eth1".into(),
                    scope: 253,
                    ..Default::default()
                })
                .unwrap(),
            ];
            apply_routes(&mut nl, &routes).unwrap();
            let n = neighbour_spec(&api::Neighbour {
                address: "10.88.0.9".into(),
                mac: "02:00:00:00:00:09".into(),
                device: "eth0".into(),
                ..Default::default()
            })
            .unwrap();
            apply_neighbours(&mut nl, &[n]).unwrap();

            let listed = list_interfaces(&mut nl).unwrap();
            let eth0 = listed.iter().find(|i| i.name == "eth0").unwrap();
            assert_eq!(
                (eth0.mac.as_str(), eth0.mtu, eth0.up),
                (f(&m1).as_str(), 1450, true)
            );
            assert_eq!(eth0.addresses[0].address, "10.88.0.5");
            assert_eq!(eth0.addresses[0].prefix_len, 24);
            let eth1 = listed.iter().find(|i| i.name == "eth1").unwrap();
            assert_eq!((eth1.mac.as_str(), eth1.mtu), (f(&m0).as_str(), 1400));
            let all = nl.routes().unwrap();
            assert!(
                all.iter()
                    .any(|r| r.destination.is_none()
                        && r.gateway == Some(Ipv4Addr::new(10, 88, 0, 1)))
            );
            assert!(all
                .iter()
                .any(|r| r.destination == Some((Ipv4Addr::new(172, 20, 0, 0), 16))));
            assert!(nl
                .neighbours()
                .unwrap()
                .iter()
                .any(|x| x.ip == Ipv4Addr::new(10, 88, 0, 9) && x.permanent));

            // A NIC found by the MAC it booted with takes the veth's (ctr's late CNI).
            let mut late = iface(&f(&m1), "eth0", 0, &[]);
            late.set_mac = "02:00:00:00:00:42".into();
            apply_interfaces(&mut nl, &[interface_spec(&late).unwrap()], Duration::ZERO).unwrap();
            let listed = list_interfaces(&mut nl).unwrap();
            let eth0 = listed.iter().find(|i| i.name == "eth0").unwrap();
            assert_eq!((eth0.mac.as_str(), eth0.up), ("02:00:00:00:00:42", true));
            late.set_mac = "03:00:00:00:00:42".into();
            let err = interface_spec(&late).unwrap_err().to_string();
            assert!(err.contains("multicast"), "{err}");

            // Errors name what is missing.
            let err = apply_interfaces(
                &mut nl,
                &[interface_spec(&iface("02:11:22:33:44:55", "eth9", 0, &[])).unwrap()],
                Duration::from_millis(100),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("02:11:22:33:44:55"), "{err}");
            let mut r = routes[0].clone();
            r.device = "eth9".into();
            let err = apply_routes(&mut nl, &[r]).unwrap_err().to_string();
            assert_eq!(err, "no network interface eth9");
        });
        if let Err(e) = done {
            // SAFETY: geteuid has no preconditions.
            assert_ne!(unsafe { libc::geteuid() }, 0, "{e}");
            eprintln!("SKIPPED: {e}");
        }
    }
}
