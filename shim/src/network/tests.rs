use std::sync::mpsc;

use pulse_netlink::{RT_SCOPE_LINK, RT_SCOPE_UNIVERSE};
use serde_json::json;

use super::*;

#[test]
fn the_pods_namespace_comes_from_the_specs_network_entry() {
    let cri = json!({"linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1234"},
        {"type": "ipc"}
    ]}});
    assert_eq!(
        netns_of(&cri),
        PodNetns::Path("/var/run/netns/cni-1234".into())
    );
    let fresh = json!({"linux": {"namespaces": [{"type": "network"}, {"type": "mount"}]}});
    assert_eq!(netns_of(&fresh), PodNetns::Fresh);
    let empty_path = json!({"linux": {"namespaces": [{"type": "network", "path": ""}]}});
    assert_eq!(netns_of(&empty_path), PodNetns::Fresh);
    let host = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}});
    assert_eq!(netns_of(&host), PodNetns::Host);
    assert_eq!(netns_of(&json!({})), PodNetns::Host);
    assert!(NetworkError::HostNetwork.to_string().contains("--net-host"));
}

fn link(index: u32, name: &str, kind: &str, mac: Option<[u8; 6]>) -> Link {
    Link {
        index,
        name: name.into(),
        mac,
        mtu: 1450,
        up: true,
        loopback: name == "lo",
        ether: name != "lo",
        kind: (!kind.is_empty()).then(|| kind.to_string()),
    }
}

#[test]
fn the_namespace_translates_into_the_guests_settings() {
    let mac = [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05];
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let route =
        |dst: Option<(&str, u8)>, gw: Option<&str>, oif: u32, protocol: u8, table: u32| Route {
            destination: dst.map(|(d, l)| (ip(d), l)),
            gateway: gw.map(ip),
            oif: Some(oif),
            source: None,
            scope: if gw.is_some() {
                RT_SCOPE_UNIVERSE
            } else {
                RT_SCOPE_LINK
            },
            protocol,
            table,
        };
    let snapshot = Snapshot {
        links: vec![
            link(1, "lo", "", Some([0; 6])),
            link(3, "eth0", "veth", Some(mac)),
            link(4, "tap9", "tun", Some([2, 0, 0, 0, 0, 9])),
        ],
        addresses: vec![
            Address {
                index: 1,
                ip: ip("127.0.0.1"),
                prefix_len: 8,
            },
            Address {
                index: 3,
                ip: ip("10.88.77.5"),
                prefix_len: 24,
            },
        ],
        routes: vec![
            route(Some(("10.88.77.0", 24)), None, 3, RTPROT_KERNEL, 254),
            route(None, Some("10.88.77.1"), 3, 4, 254),
            route(Some(("172.16.0.0", 12)), None, 3, 4, 254),
            route(Some(("10.0.0.0", 8)), Some("10.88.77.1"), 3, 4, 100),
            route(Some(("192.168.0.0", 16)), None, 4, 4, 254),
        ],
        neighbours: vec![
            Neighbour {
                index: 3,
                ip: ip("10.88.77.9"),
                mac: [2, 0, 0, 0, 0, 1],
                permanent: true,
            },
            Neighbour {
                index: 3,
                ip: ip("10.88.77.1"),
                mac: [2, 0, 0, 0, 0, 2],
                permanent: false,
            },
        ],
    };
    let (chosen, guest) = plan(&snapshot);
    assert_eq!(chosen.len(), 1, "lo and taps are not carried: {chosen:?}");
    assert_eq!(
        chosen[0].1,
        Carried {
            veth: "eth0".into(),
            tap: "tap0_pulse".into(),
            guest: "eth0".into()
        }
    );
    assert_eq!(guest.interfaces.len(), 1);
    let i = &guest.interfaces[0];
    assert_eq!(
        (i.mac.as_str(), i.name.as_str(), i.mtu),
        ("0a:58:0a:58:4d:05", "eth0", 1450)
    );
    assert_eq!(i.addresses.len(), 1);
    assert_eq!(
        (i.addresses[0].address.as_str(), i.addresses[0].prefix_len),
        ("10.88.77.5", 24)
    );
    let routes: Vec<_> = guest
        .routes
        .iter()
        .map(|r| {
            (
                r.destination.as_str(),
                r.gateway.as_str(),
                r.device.as_str(),
                r.scope,
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            ("", "10.88.77.1", "eth0", 0),
            ("172.16.0.0/12", "", "eth0", 253)
        ],
        "the kernel's subnet route, other tables and other devices' routes are left out"
    );
    assert_eq!(guest.neighbours.len(), 1);
    assert_eq!(guest.neighbours[0].address, "10.88.77.9");
    assert_eq!(guest.neighbours[0].mac, "02:00:00:00:00:01");
    let (ifs, rts, ngh) = requests(&guest);
    assert_eq!(
        (ifs.interfaces.len(), rts.routes.len(), ngh.neighbours.len()),
        (1, 2, 1)
    );
}

/// A network namespace made by the test: a parked thread in it, its file under /proc.
struct TestNetns {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestNetns {
    fn new() -> Option<Self> {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare takes a flag and moves only this thread.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tid_tx.send((r == 0).then_some(tid)).unwrap();
            let _ = stop_rx.recv();
        });
        let Some(tid) = tid_rx.recv().unwrap() else {
            // SAFETY: geteuid has no preconditions.
            assert_ne!(unsafe { libc::geteuid() }, 0, "root must get a netns");
            eprintln!("SKIPPED: no network namespace for this user");
            return None;
        };
        Some(Self {
            path: PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A CNI-like veth: `eth0` here, its peer in `other`, with an address and a default route.
    fn with_veth(self, other: &TestNetns) -> Self {
        let other = std::fs::File::open(&other.path).unwrap();
        in_netns(&self.path, || {
            let mut nl = Netlink::open().unwrap();
            nl.add_veth("eth0", "peer0").unwrap();
            let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
            let peer = nl.link_by_name("peer0").unwrap().unwrap();
            nl.move_to_netns(peer.index, &other).unwrap();
            assert!(nl.link_by_name("peer0").unwrap().is_none());
            nl.set_link(eth0.index, None, Some(1400), Some(true))
                .unwrap();
            nl.add_address(eth0.index, Ipv4Addr::new(10, 77, 0, 5), 24)
                .unwrap();
            nl.add_route(&Route {
                destination: None,
                gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                oif: Some(eth0.index),
                source: None,
                scope: RT_SCOPE_UNIVERSE,
                protocol: 0,
                table: 0,
            })
            .unwrap();
        })
        .unwrap();
        self
    }

    fn run<T: Send>(&self, f: impl FnOnce(&mut Netlink) -> T + Send) -> T {
        in_netns(&self.path, || f(&mut Netlink::open().unwrap())).unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn setup_joins_a_multi_queue_tap_to_the_veth_and_teardown_leaves_nothing() {
    let (Some(ns), Some(host)) = (TestNetns::new(), TestNetns::new()) else {
        return;
    };
    let ns = ns.with_veth(&host);
    let (network, nics, guest) = PodNetwork::setup(&ns.path, 2).unwrap();
    assert_eq!(network.carried.len(), 1);
    assert_eq!(nics.len(), 1);
    let nic = &nics[0];
    assert_eq!(
        (nic.tap.as_str(), nic.queue_pairs(), nic.mtu),
        ("tap0_pulse", 2, 1400)
    );
    let (eth0, tap) = ns.run(|nl| {
        (
            nl.link_by_name("eth0").unwrap().unwrap(),
            nl.link_by_name("tap0_pulse").unwrap().unwrap(),
        )
    });
    assert_eq!(nic.mac, eth0.mac.unwrap(), "the guest gets the veth's MAC");
    assert_eq!(
        (tap.mtu, tap.up),
        (1400, true),
        "the tap has the veth's MTU"
    );
    let (veth_filters, tap_filters) = ns.run(|nl| {
        (
            nl.ingress_filters(eth0.index).unwrap(),
            nl.ingress_filters(tap.index).unwrap(),
        )
    });
    assert!(
        veth_filters
            .iter()
            .any(|f| f.redirect_to == Some(tap.index)),
        "{veth_filters:?}"
    );
    assert!(
        tap_filters
            .iter()
            .any(|f| f.redirect_to == Some(eth0.index)),
        "{tap_filters:?}"
    );
    assert_eq!(guest.interfaces[0].addresses[0].address, "10.77.0.5");
    assert_eq!(guest.routes[0].gateway, "10.77.0.1");

    // The VMM goes: the tap goes with its descriptors; teardown removes the veth's qdisc.
    drop(nics);
    assert!(ns
        .run(|nl| nl.link_by_name("tap0_pulse").unwrap())
        .is_none());
    let removed = network.teardown().unwrap();
    assert_eq!(removed, vec!["the ingress qdisc of eth0".to_string()]);
    ns.run(|nl| {
        assert!(!nl.has_ingress_qdisc(eth0.index).unwrap());
        assert!(nl.ingress_filters(eth0.index).unwrap().is_empty());
    });
    assert!(network.teardown().unwrap().is_empty(), "twice is harmless");

    // Set up again; a dead shim's record is enough to clean up.
    let dir = tempfile::tempdir().unwrap();
    let (network, nics, _) = PodNetwork::setup(&ns.path, 1).unwrap();
    network.save(dir.path()).unwrap();
    drop(nics);
    cleanup_recorded(dir.path());
    ns.run(|nl| assert!(!nl.has_ingress_qdisc(eth0.index).unwrap()));
}

#[test]
fn a_namespace_without_a_veth_gives_no_nic_and_a_missing_one_is_named() {
    let Some(ns) = TestNetns::new() else { return };
    let (network, nics, guest) = PodNetwork::setup(&ns.path, 2).unwrap();
    assert!(network.carried.is_empty() && nics.is_empty() && guest.interfaces.is_empty());
    let err = PodNetwork::setup(Path::new("/run/netns/pulse-none"), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/run/netns/pulse-none"), "{err}");
    let gone = PodNetwork {
        netns: "/run/netns/pulse-none".into(),
        carried: Vec::new(),
    };
    assert!(
        gone.teardown().unwrap().is_empty(),
        "a namespace CNI removed"
    );
}

#[test]
fn a_failed_setup_removes_what_it_made() {
    let (Some(ns), Some(host)) = (TestNetns::new(), TestNetns::new()) else {
        return;
    };
    let ns = ns.with_veth(&host);
    // A tap name already taken in the namespace: the second veth's tap fails.
    let host_file = std::fs::File::open(&host.path).unwrap();
    ns.run(|nl| {
        nl.add_veth("eth1", "peer1").unwrap();
        let eth1 = nl.link_by_name("eth1").unwrap().unwrap();
        let peer1 = nl.link_by_name("peer1").unwrap().unwrap();
        nl.move_to_netns(peer1.index, &host_file).unwrap();
        nl.set_link(eth1.index, None, None, Some(true)).unwrap();
    });
    let blocker = ns.run(|_| pulse_netlink::create_tap("tap1_pulse", 1).unwrap());
    let err = PodNetwork::setup(&ns.path, 1).unwrap_err().to_string();
    assert!(err.contains("tap1_pulse"), "{err}");
    ns.run(|nl| {
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
        assert!(!nl.has_ingress_qdisc(eth0.index).unwrap(), "undone");
        assert!(nl.link_by_name("tap0_pulse").unwrap().is_none(), "undone");
    });
    drop(blocker);
}
