//! `ctr run --cni` (docs/networking.md): ctr creates the task, runs CNI in
//! `/proc/<task pid>/ns/net`, then starts the task. The pid Pulse reports is a host process
//! holding the pod's own network namespace; at start the veth CNI put there is joined to the
//! NIC's tap and the guest's eth0 takes its MAC, MTU, address and routes.
//!
//! ctr 1.6 reads its CNI configuration from /etc/cni/net.d and the plugins from /opt/cni/bin
//! (neither can be changed), so [`CtrCni`] runs ctr in a mount namespace of its own where /etc
//! is a copy with the test's bridge network added and /opt holds the plugins' links: nothing
//! of the machine's is written (the nested rig's /etc is read-only anyway). ctr runs the
//! plugins in its own network namespace, so ctr also runs in one of the test's (`nsenter`),
//! where the bridge and the host-side server are. That namespace is held by a `sleep` of the
//! test's, not `ip netns add`, which would leave a mount at /run/netns.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::net::{host_get, http_reply, mgmt_get, HostServer};
use crate::common::{self, text, Env, IMAGE};

const CNI_BIN_DIR: &str = "/usr/lib/cni";
const NETWORK: &str = "pulse-ctr-test";
const BRIDGE: &str = "pctr0";
const SUBNET_PREFIX: &str = "10.88.78.";

/// The test's CNI network for ctr and the network namespace ctr runs in; removed on drop.
struct CtrCni {
    /// Holds the test's network namespace.
    holder: std::process::Child,
    /// `etc` (a copy of /etc with cni/net.d) and `opt` (cni/bin) for ctr's mount namespace.
    root: tempfile::TempDir,
    ipam: tempfile::TempDir,
}

impl CtrCni {
    /// `None` (with the reason) where the plugins are missing.
    fn install() -> Result<CtrCni, String> {
        for plugin in ["bridge", "host-local"] {
            if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
                return Err(format!(
                    "no CNI plugin {CNI_BIN_DIR}/{plugin} (Debian's containernetworking-plugins)"
                ));
            }
        }
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        let out = Command::new("cp")
            .args(["-a", "/etc/."])
            .arg(&etc)
            .output()
            .unwrap();
        assert!(out.status.success(), "copying /etc: {}", text(&out.stderr));
        let net_d = etc.join("cni/net.d");
        let _ = std::fs::remove_dir_all(&net_d);
        std::fs::create_dir_all(&net_d).unwrap();
        let plugins = root.path().join("opt/cni/bin");
        std::fs::create_dir_all(&plugins).unwrap();
        for plugin in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(Path::new(CNI_BIN_DIR).join(plugin), plugins.join(plugin))
                .unwrap();
        }
        let ipam = tempfile::tempdir().unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam.path(),
                    "ranges": [[{"subnet": format!("{SUBNET_PREFIX}0/24")}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            }]
        });
        std::fs::write(
            net_d.join("10-pulse-ctr-test.conflist"),
            conflist.to_string(),
        )
        .unwrap();
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let cni = CtrCni { holder, root, ipam };
        // unshare execs sleep once it is in its namespace.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(cni.netns_path()).ok().as_ref() == Some(&ours) {
            assert!(
                Instant::now() < deadline,
                "unshare --net never left our namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(cni)
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
    }

    /// `ctr ARGS` in the test's network namespace, with the test's /etc and /opt.
    fn ctr(&self, env: &Env, args: &[&str]) -> Command {
        let base = env.ctr_cmd(args);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path().display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"mount --bind "$1/etc" /etc && mount --bind "$1/opt" /opt && shift && exec "$@""#,
            )
            .arg("sh")
            .arg(self.root.path())
            .arg(base.get_program())
            .args(base.get_args())
            .stdin(Stdio::null());
        cmd
    }

    /// Addresses host-local still hands out (ctr's CNI DEL releases them).
    fn allocated(&self) -> Vec<String> {
        common::list_dir(&self.ipam.path().join(NETWORK))
            .into_iter()
            .filter(|f| f.starts_with(SUBNET_PREFIX))
            .collect()
    }
}

impl Drop for CtrCni {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The pid `ctr tasks ls` shows for `id`.
pub fn task_pid(env: &Env, id: &str) -> u32 {
    let listing = text(&env.ctr(&["tasks", "ls"]).stdout);
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id}: {listing}"))
}

/// The interface CNI made in namespace `netns`: (MAC, MTU, IPv4 address with prefix).
fn cni_interface(netns: &Path) -> (String, u32, String) {
    pulse_netlink::in_netns(netns, || {
        let mut nl = pulse_netlink::Netlink::open().unwrap();
        let eth0 = nl
            .links()
            .unwrap()
            .into_iter()
            .find(|l| l.name == "eth0")
            .expect("CNI's eth0 in the pod's namespace");
        let addr = nl
            .addresses()
            .unwrap()
            .into_iter()
            .find(|a| a.index == eth0.index)
            .expect("an address on eth0");
        (
            pulse_netlink::format_mac(&eth0.mac.unwrap()),
            eth0.mtu,
            format!("{}/{}", addr.ip, addr.prefix_len),
        )
    })
    .unwrap()
}

/// Links in `netns` other than loopback and the bridge (the veths' host ends).
fn veths(netns: &Path) -> Vec<String> {
    pulse_netlink::in_netns(netns, || {
        let mut nl = pulse_netlink::Netlink::open().unwrap();
        nl.links()
            .unwrap()
            .into_iter()
            .filter(|l| !l.loopback && l.name != BRIDGE)
            .map(|l| l.name)
            .collect()
    })
    .unwrap()
}

#[test]
fn ctr_run_cni_carries_the_cni_network_into_the_guest_and_leaves_nothing() {
    crate::require_env!();
    let _one = common::serial();
    let cni = match CtrCni::install() {
        Ok(cni) => cni,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let env = Env::start();
    env.write_config("vcpus = 2\n[devices]\nnet_queues = 2", "");
    let server = HostServer::start(cni.netns_path(), http_reply);
    let shim = common::shim_binary();
    let script = "mkdir -p /tmp/www && echo pulse-ctr-cni > /tmp/www/index.html && \
                  httpd -p 8080 -h /tmp/www && exec sleep 600";
    let run = cni
        .ctr(
            &env,
            &[
                "run",
                "--rm",
                "--cni",
                "--runtime",
                shim.to_str().unwrap(),
                IMAGE,
                "cni1",
                "sh",
                "-c",
                script,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_status("cni1", "RUNNING");

    // The task's pid is the holder of the pod's own namespace, where CNI put its veth.
    let pid = task_pid(&env, "cni1");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        text(&cmdline).contains("pulse-netns-holder"),
        "pid {pid} is not the namespace holder: {}",
        text(&cmdline)
    );
    let holder_ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let (mac, mtu, address) = cni_interface(&holder_ns);
    assert!(address.starts_with(SUBNET_PREFIX), "{address}");

    // The guest's eth0 is that interface, with its routes, and reaches the bridge's host side.
    let gateway = format!("{SUBNET_PREFIX}1");
    let (code, out) = super::exec_sh(
        &env,
        "cni1",
        "probe",
        &format!(
            // Not `wget -T`: busybox 1.35's wget crashes with it.
            "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -o -4 addr show dev eth0; \
             ip route; timeout 20 wget -q -O - http://{gateway}:{}/",
            server.port
        ),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{mac}\n{mtu}\n")),
        "{mac} {mtu}: {out}"
    );
    assert!(out.contains(&address), "{address}: {out}");
    assert!(out.contains(&format!("default via {gateway}")), "{out}");
    assert!(
        out.contains("hello from the host side of the bridge"),
        "{out}"
    );
    // And the host side reaches a server in the guest at the pod's address.
    let ip: Ipv4Addr = address.split('/').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match host_get(&cni.netns_path(), &ip.to_string(), 8080) {
            Ok(answer) if answer.contains("pulse-ctr-cni") => break,
            other => assert!(Instant::now() < deadline, "GET {ip}:8080: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The device report: the NIC's 2 queue pairs, as the VMM configured them.
    let socket = env.state_dir().join(common::NS).join("cni1/mgmt.sock");
    let (_, body) = mgmt_get(&socket, "/report");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let nic = *common::net::host_devices(&report, "net")
        .first()
        .unwrap_or_else(|| panic!("no NIC: {body}"));
    assert_eq!(nic["queues"], 4, "{body}");
    assert!(!report["mismatches"].to_string().contains("net:"), "{body}");

    // ctr's --rm: the kill ends the run, ctr's CNI DEL releases the address, the delete takes
    // the holder, its namespace and the veth with it.
    let out = env.ctr(&["tasks", "kill", "--signal", "SIGKILL", "cni1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = common::wait_with_timeout(run, Duration::from_secs(120))
        .expect("ctr run ends after the kill");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    env.assert_no_leaks();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || !text(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .contains("pulse-netns-holder"),
        "the holder {pid} is left"
    );
    assert_eq!(cni.allocated(), Vec::<String>::new(), "addresses left");
    // The kernel removes a dead namespace's veths from a work queue, a moment later.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = veths(&cni.netns_path());
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "veths left: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(server);
}
