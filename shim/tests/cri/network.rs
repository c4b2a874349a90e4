//! Pod networking through the CRI: Pulse pods on the suite's bridge CNI network (the harness's
//! pulse.toml has `devices.net_queues = 2`), against servers on the host side of the bridge
//! (in containerd's network namespace, where the bridge is), each other and a runc pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::net::{echo_reply, host_get, http_reply, mgmt_get, HostServer};
use crate::harness::POD_SUBNET_PREFIX;
use crate::kubelet::{self, PodSandboxState};
use crate::{app_container, common, Node, Pod};
use k8s_cri::v1::NamespaceMode;

/// The bridge's address (the CNI bridge is the pods' gateway: `isGateway`).
fn gateway() -> String {
    format!("{POD_SUBNET_PREFIX}1")
}

/// `GET path` on the pod's management socket; the body of its 200 answer.
fn unix_get(socket: &Path, path: &str) -> String {
    let (head, body) = mgmt_get(socket, path);
    assert!(head.contains("200"), "{head}");
    body
}

/// The container command of a pod that serves `name` over HTTP on port 8080 (busybox httpd)
/// and stays up.
fn serving(name: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "mkdir -p /tmp/www && echo {name} > /tmp/www/index.html && \
             httpd -p 8080 -h /tmp/www && exec sleep 3600"
        ),
    ]
}

/// A pod with one serving container; (pod, container id, pod IP).
fn serving_pod(node: &Node, handler: &str, name: &str) -> (Pod, String, String) {
    let pod = node.run_pod(handler, name, Some(kubelet::resources(1500, 128 << 20)));
    node.ready_pod_status(&pod, handler);
    let status = node.ok("PodSandboxStatus", node.kubelet.pod_status(&pod.id));
    let ip = status.status.unwrap().network.unwrap().ip;
    let command = serving(name);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let id = node.start_container(&pod, &app_container("web", &command, &[]), handler);
    (pod, id, ip)
}

/// The pod's network namespace file, from its verbose status.
fn pod_netns(node: &Node, pod: &Pod) -> String {
    let status = node.ok("PodSandboxStatus", node.kubelet.pod_status(&pod.id));
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}")).unwrap();
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .expect("the pod's network namespace")
        .to_string()
}

/// `ip -o link show eth0` in the pod's namespace: (MAC, MTU) of CNI's veth.
fn veth_mac_mtu(node: &Node, netns: &str) -> (String, String) {
    let out = node.env.in_netns(&[
        "nsenter",
        &format!("--net={netns}"),
        "ip",
        "-o",
        "link",
        "show",
        "eth0",
    ]);
    let line = common::text(&out.stdout);
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    (after("link/ether"), after("mtu"))
}

/// A Pulse pod on the bridge network: the guest's eth0 is the veth's address, MAC and MTU,
/// with a queue pair per vCPU, at most 2 (`net_queues = 2`); the container reaches a TCP server
/// and an HTTP server on the host side of the bridge; the host reaches the container's server
/// at the pod IP; the pod's namespace holds the tap and the redirect filters, and after
/// RemovePodSandbox nothing is left.
pub fn pulse_pod_on_the_bridge_network() {
    let _one = common::serial();
    let node = Node::start();
    let containerd_ns = PathBuf::from(format!("/proc/{}/ns/net", node.env.containerd_pid()));
    let http = HostServer::start(containerd_ns.clone(), http_reply);
    let echo = HostServer::start(containerd_ns.clone(), echo_reply);
    let (pod, web, ip) = serving_pod(&node, "pulse", "netpod");
    let netns = pod_netns(&node, &pod);

    // The guest's interface: the veth's address, MAC and MTU; queue pairs from sysfs.
    let (mac, mtu) = veth_mac_mtu(&node, &netns);
    let link = node.sh_ok(&web, "ip -o link show eth0");
    assert!(
        link.contains(&format!("mtu {mtu} ")) && link.contains(&format!("link/ether {mac} ")),
        "the guest's eth0 ({link}) is not the veth's MAC {mac} and MTU {mtu}"
    );
    let addr = node.sh_ok(&web, "ip -o -4 addr show eth0");
    assert!(
        addr.contains(&format!(" inet {ip}/24 ")),
        "the guest's eth0 has not the pod IP {ip}: {addr}"
    );
    let route = node.sh_ok(&web, "ip route show default");
    assert!(
        route.contains(&format!("default via {} dev eth0", gateway())),
        "{route}"
    );
    // Queue pairs: the guest's vCPUs (3 for the pod's 1.5 CPUs, at most the host's), at most
    // net_queues = 2.
    let vcpus: usize = node.sh_ok(&web, "nproc").trim().parse().unwrap();
    let pairs = vcpus.min(2);
    let queues = node.sh_ok(&web, "ls /sys/class/net/eth0/queues | tr '\\n' ' '");
    let want: Vec<String> = (0..pairs)
        .map(|q| format!("rx-{q}"))
        .chain((0..pairs).map(|q| format!("tx-{q}")))
        .collect();
    assert_eq!(
        queues.trim(),
        want.join(" "),
        "{vcpus} vCPUs, net_queues = 2"
    );

    // The device report: the NIC on tap0_pulse with 2 queue pairs, as the guest sees it (with
    // the embedded backend: one MSI per queue, which the comparison checks).
    let socket = node
        .env
        .pulse_state_dir()
        .join(crate::harness::NS)
        .join(&pod.id)
        .join("mgmt.sock");
    let report: serde_json::Value = serde_json::from_str(&unix_get(&socket, "/report")).unwrap();
    let nets = common::net::host_devices(&report, "net");
    assert_eq!(nets.len(), 1, "{report}");
    assert_eq!(nets[0]["id"], "tap0_pulse", "{report}");
    assert_eq!(nets[0]["queues"], 2 * pairs, "{report}");
    if common::embedded() {
        assert_eq!(nets[0]["msi"], true, "{report}");
    }
    let mismatches = report["mismatches"].to_string();
    assert!(!mismatches.contains("net"), "{mismatches}");

    // In the pod's namespace: the tap, and the redirects both ways.
    let ns = format!("--net={netns}");
    let filters = common::text(
        &node
            .env
            .in_netns(&[
                "nsenter", &ns, "tc", "filter", "show", "dev", "eth0", "ingress",
            ])
            .stdout,
    );
    assert!(
        filters.contains("mirred (Egress Redirect to device tap0_pulse)"),
        "{filters}"
    );
    let filters = common::text(
        &node
            .env
            .in_netns(&[
                "nsenter",
                &ns,
                "tc",
                "filter",
                "show",
                "dev",
                "tap0_pulse",
                "ingress",
            ])
            .stdout,
    );
    assert!(
        filters.contains("mirred (Egress Redirect to device eth0)"),
        "{filters}"
    );

    // Container -> host side: plain TCP, then HTTP with busybox wget (no DNS).
    let got = node.sh_ok(&web, &format!("echo ping | nc {} {}", gateway(), echo.port));
    assert_eq!(got.trim(), "echo: ping", "TCP to the host side");
    let body = node.sh_ok(
        &web,
        &format!("wget -q -O - http://{}:{}/", gateway(), http.port),
    );
    assert_eq!(body, "hello from the host side of the bridge\n");

    // Host side -> the container's server at the pod IP.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        match host_get(&containerd_ns, &ip, 8080) {
            Ok(r) if r.contains("netpod") => break r,
            r if Instant::now() > deadline => panic!("no answer from {ip}:8080: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");

    node.remove_pod(&pod);
    assert!(!Path::new(&netns).exists(), "the pod's namespace is gone");
}

/// Two Pulse pods and a runc pod on one bridge: each reaches the others' HTTP servers.
pub fn pulse_and_runc_pods_reach_each_other() {
    let _one = common::serial();
    let node = Node::start();
    let (a, a_web, a_ip) = serving_pod(&node, "pulse", "pulse-a");
    let (b, b_web, b_ip) = serving_pod(&node, "pulse", "pulse-b");
    let (c, c_web, c_ip) = serving_pod(&node, "runc", "runc-c");
    for (from, what, to_ip, name) in [
        (&a_web, "pulse -> pulse", &b_ip, "pulse-b"),
        (&b_web, "pulse -> pulse", &a_ip, "pulse-a"),
        (&a_web, "pulse -> runc", &c_ip, "runc-c"),
        (&c_web, "runc -> pulse", &b_ip, "pulse-b"),
    ] {
        node.wait_sh(
            from,
            // Not `wget -T`: busybox 1.35's wget crashes with it.
            &format!("timeout 10 wget -q -O - http://{to_ip}:8080/"),
            &format!("{name}\n"),
            what,
            "ip -o addr; ip route",
        );
    }
    // All pods go before their cgroups (the harness removes every pod cgroup at once).
    for pod in [&a, &b, &c] {
        node.ok("StopPodSandbox", node.kubelet.stop_pod(&pod.id));
        node.ok("RemovePodSandbox", node.kubelet.remove_pod(&pod.id));
    }
    node.env.remove_pod_cgroups();
    node.env.assert_no_leaks();
}

/// A Pulse pod on the host's network (hostNetwork) is refused by name, and leaves nothing.
pub fn pulse_host_network_pod_is_refused() {
    let _one = common::serial();
    let node = Node::start();
    let uid = "hostnet-uid";
    let cgroup_parent = node.env.create_pod_cgroup(uid);
    let log_dir = node.env.pod_log_root().join("hostnet");
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut config = kubelet::pod_config("hostnet", uid, &log_dir, &cgroup_parent, None);
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .network = NamespaceMode::Node as i32;
    let err = node
        .kubelet
        .run_pod(&config, "pulse")
        .expect_err("a host-network pod must not start in a VM");
    assert!(
        err.message().contains("host's network"),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    // containerd keeps a failed sandbox as NotReady until it is removed, as kubelet does.
    for p in node.ok("ListPodSandbox", node.kubelet.list_pods()) {
        assert_ne!(p.state, PodSandboxState::SandboxReady as i32);
        let _ = node.kubelet.stop_pod(&p.id);
        let _ = node.kubelet.remove_pod(&p.id);
    }
    node.env.remove_pod_cgroups();
    node.env.assert_no_leaks();
}

/// Waits (30 s at most) until `check` holds.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "after 30 s: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kill -9` of a Pulse pod's shim: its VM dies with it and the tap with the VM; containerd's
/// cleanup of the dead shim (`delete`) removes the veth's ingress qdisc; then the pod goes as
/// usual and nothing is left.
pub fn pulse_pod_network_after_kill_9_of_the_shim() {
    let _one = common::serial();
    let node = Node::start();
    let (pod, _web, _ip) = serving_pod(&node, "pulse", "killed");
    let netns = pod_netns(&node, &pod);
    let ns = format!("--net={netns}");
    let has = |args: &[&str], needle: &str| {
        let mut cmd = vec!["nsenter", ns.as_str()];
        cmd.extend_from_slice(args);
        common::text(&node.env.in_netns(&cmd).stdout).contains(needle)
    };
    assert!(has(&["ip", "-o", "link"], "tap0_pulse"), "no tap");
    assert!(has(&["tc", "qdisc", "show", "dev", "eth0"], "ingress"));
    let shims = node.env.pulse_shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    common::send_signal(shims[0], nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the tap outlives the killed shim's VM", || {
        !has(&["ip", "-o", "link"], "tap0_pulse")
    });
    wait_until(
        "the veth's ingress qdisc outlives the dead shim's cleanup",
        || !has(&["tc", "qdisc", "show", "dev", "eth0"], "ingress"),
    );
    node.remove_pod(&pod);
}
