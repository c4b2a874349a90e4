//! Each kernel test works in a network namespace of its own (root and `/dev/net/tun` needed;
//! without them it says SKIPPED).

use super::*;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Runs `f` in a new network namespace, or returns None where this process may not make one.
fn netns_test<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    match in_new_netns(f) {
        Ok(t) => Some(t),
        Err(e) => {
            // SAFETY: geteuid has no preconditions.
            assert_ne!(unsafe { libc::geteuid() }, 0, "root must get a netns: {e}");
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

fn link(nl: &mut Netlink, name: &str) -> Link {
    nl.link_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no link {name}"))
}

fn read_frame(fd: &OwnedFd, timeout_ms: i32) -> Option<Vec<u8>> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } <= 0 {
        return None;
    }
    let mut buf = vec![0u8; 2048];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n > 0, "read from the tap: {}", io::Error::last_os_error());
    buf.truncate(usize::try_from(n).unwrap());
    Some(buf)
}

/// An ARP request from `mac`/`from` for `to`, behind a zeroed 10-byte virtio-net header.
fn arp_request(mac: [u8; 6], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    f.extend([0xff; 6]);
    f.extend(mac);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(mac);
    f.extend(from.octets());
    f.extend([0; 6]);
    f.extend(to.octets());
    f
}

#[test]
fn a_frame_written_into_the_tap_leaves_by_the_veth_and_the_answer_comes_back_through_the_tap() {
    netns_test(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth("v0", "v1").unwrap();
        let tap_fds = create_tap("t0", 1).unwrap();
        let (v0, v1, t0) = (
            link(&mut nl, "v0"),
            link(&mut nl, "v1"),
            link(&mut nl, "t0"),
        );
        assert_eq!(t0.kind.as_deref(), Some("tun"));
        assert_eq!(v0.kind.as_deref(), Some("veth"));
        for l in [&v0, &v1, &t0] {
            nl.set_link(l.index, None, None, Some(true)).unwrap();
        }
        nl.add_address(v1.index, Ipv4Addr::new(10, 9, 0, 1), 24)
            .unwrap();
        nl.add_ingress_qdisc(v0.index).unwrap();
        nl.add_ingress_qdisc(t0.index).unwrap();
        assert!(nl.has_ingress_qdisc(v0.index).unwrap());
        assert!(!nl.has_ingress_qdisc(v1.index).unwrap());
        nl.redirect_ingress(v0.index, t0.index).unwrap();
        nl.redirect_ingress(t0.index, v0.index).unwrap();
        let filters = nl.ingress_filters(v0.index).unwrap();
        assert!(
            filters
                .iter()
                .any(|f| f.kind == "u32" && f.redirect_to == Some(t0.index)),
            "{filters:?}"
        );
        assert!(nl.ingress_filters(v1.index).unwrap().is_empty());

        // The guest's side: it uses the veth's MAC. Its ARP request leaves through v0 to v1,
        // whose answer comes back into v0 and is redirected to the tap.
        let mac = v0.mac.unwrap();
        let req = arp_request(mac, Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 1));
        // SAFETY: `req` is valid for reads of its length.
        let n = unsafe { libc::write(tap_fds[0].as_raw_fd(), req.as_ptr().cast(), req.len()) };
        assert_eq!(
            usize::try_from(n),
            Ok(req.len()),
            "{}",
            io::Error::last_os_error()
        );
        let mut answered = false;
        while let Some(frame) = read_frame(&tap_fds[0], 5000) {
            let eth = &frame[10..];
            if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
                assert_eq!(&eth[0..6], &mac, "to the guest's MAC");
                assert_eq!(&eth[6..12], &v1.mac.unwrap(), "from v1");
                assert_eq!(&eth[28..32], &[10, 9, 0, 1]);
                answered = true;
                break;
            }
        }
        assert!(answered, "no ARP answer came back through the tap");

        nl.del_ingress_qdisc(v0.index).unwrap();
        assert!(nl.ingress_filters(v0.index).unwrap().is_empty());
        assert!(!nl.has_ingress_qdisc(v0.index).unwrap());
        drop(tap_fds);
        assert!(
            nl.link_by_name("t0").unwrap().is_none(),
            "the tap goes with its last descriptor"
        );
    });
}

#[test]
fn a_multi_queue_tap_has_one_descriptor_per_queue_and_is_never_taken_over() {
    netns_test(|| {
        let fds = create_tap("mq0", 3).unwrap();
        assert_eq!(fds.len(), 3);
        let err = create_tap("mq0", 1).unwrap_err().to_string();
        assert!(err.contains("tap mq0: TUNSETIFF"), "{err}");
        assert!(create_tap("much-too-long-name", 1).is_err());
        let mut nl = Netlink::open().unwrap();
        let l = link(&mut nl, "mq0");
        nl.set_link(l.index, None, Some(1400), Some(true)).unwrap();
        let l = link(&mut nl, "mq0");
        assert_eq!((l.mtu, l.up), (1400, true));
    });
}

#[test]
fn addresses_routes_and_neighbours_are_set_and_read_back() {
    netns_test(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth("a0", "a1").unwrap();
        let a0 = link(&mut nl, "a0");
        nl.set_link(a0.index, Some("eth7"), Some(1450), None)
            .unwrap();
        let eth = link(&mut nl, "eth7");
        assert_eq!((eth.index, eth.mtu, eth.up), (a0.index, 1450, false));
        nl.set_link(eth.index, None, None, Some(true)).unwrap();
        nl.add_address(eth.index, Ipv4Addr::new(10, 88, 1, 5), 24)
            .unwrap();
        let addrs = nl.addresses().unwrap();
        assert!(addrs.contains(&Address {
            index: eth.index,
            ip: Ipv4Addr::new(10, 88, 1, 5),
            prefix_len: 24
        }));
        let default = Route {
            destination: None,
            gateway: Some(Ipv4Addr::new(10, 88, 1, 1)),
            oif: Some(eth.index),
            source: None,
            scope: RT_SCOPE_UNIVERSE,
            protocol: 0,
            table: 0,
        };
        nl.add_route(&default).unwrap();
        let other = Route {
            destination: Some((Ipv4Addr::new(192, 168, 4, 0), 22)),
            gateway: None,
            oif: Some(eth.index),
            source: Some(Ipv4Addr::new(10, 88, 1, 5)),
            scope: RT_SCOPE_LINK,
            protocol: 0,
            table: 0,
        };
        nl.add_route(&other).unwrap();
        let routes = nl.routes().unwrap();
        let main: Vec<_> = routes
            .iter()
            .filter(|r| r.table == u32::from(RT_TABLE_MAIN))
            .collect();
        assert!(
            main.iter().any(|r| r.destination.is_none()
                && r.gateway == default.gateway
                && r.oif == Some(eth.index)),
            "{main:?}"
        );
        assert!(
            main.iter().any(|r| r.destination == other.destination
                && r.source == other.source
                && r.scope == RT_SCOPE_LINK),
            "{main:?}"
        );
        assert!(
            main.iter().any(|r| r.protocol == RTPROT_KERNEL
                && r.destination == Some((Ipv4Addr::new(10, 88, 1, 0), 24))),
            "the address's subnet route: {main:?}"
        );
        let n = Neighbour {
            index: eth.index,
            ip: Ipv4Addr::new(10, 88, 1, 9),
            mac: [0x02, 0, 0, 0, 0, 9],
            permanent: true,
        };
        nl.add_neighbour(&n).unwrap();
        assert!(nl.neighbours().unwrap().contains(&n));
        let err = nl
            .add_route(&Route {
                gateway: Some(Ipv4Addr::new(172, 16, 0, 1)),
                ..default.clone()
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("adding the route default via 172.16.0.1"),
            "an unreachable gateway is named: {err}"
        );
        nl.del_link(eth.index).unwrap();
        assert!(nl.link_by_name("eth7").unwrap().is_none());
        assert!(
            nl.link_by_name("a1").unwrap().is_none(),
            "the peer goes too"
        );
    });
}

#[test]
fn a_missing_netns_file_is_named() {
    let err = in_netns(Path::new("/run/netns/pulse-no-such-ns"), || ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/run/netns/pulse-no-such-ns"), "{err}");
}

#[test]
fn macs_and_routes_print_and_parse() {
    let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x1f];
    assert_eq!(format_mac(&mac), "0a:58:0a:f4:00:1f");
    assert_eq!(parse_mac("0a:58:0a:f4:00:1f"), Some(mac));
    for bad in [
        "",
        "0a:58:0a:f4:00",
        "0a:58:0a:f4:00:1g",
        "0a:58:0a:f4:00:100",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
    let r = Route {
        destination: Some((Ipv4Addr::new(10, 0, 0, 0), 8)),
        gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        oif: Some(3),
        source: None,
        scope: 0,
        protocol: 0,
        table: 254,
    };
    assert_eq!(describe_route(&r), "10.0.0.0/8 via 10.0.0.1 dev #3");
}
