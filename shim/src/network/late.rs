//! `ctr run --cni`: the pod's network namespace is Pulse's own, and CNI fills it after the VM
//! booted.
//!
//! ctr (containerd 1.6) creates the task, then runs CNI on `/proc/<task pid>/ns/net`, then
//! starts the task. A pod whose spec asks for a new network namespace without a path therefore
//! gets one here: a small holder process ([`NetnsHolder`]) sits in a namespace of its own and
//! its pid is the one containerd sees for the pod's container (never a guest pid, which would
//! name an unrelated host process and have CNI configure its namespace). With
//! `devices.net_queues` > 0 the VM boots with one NIC on a tap in that namespace; when the pod's container starts, the interface CNI added (if any) is
//! joined to the tap as in [`super::PodNetwork::setup`], and the guest's NIC takes the veth's
//! MAC, MTU, addresses and routes. Without `--cni` nothing was added and the guest's NIC stays
//! down.
//!
//! Everything lives in the holder's namespace: when the holder dies (at teardown, or with the
//! shim through `PR_SET_PDEATHSIG`) the namespace goes, and with it the tap's filters and the
//! veth (ctr releases the address itself with CNI DEL).

use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use pulse_netlink::NetlinkError;

use super::{in_pod_netns, join, plan, snapshot, GuestNetwork, NetworkError, NicDevice};
use crate::cgroup::PodCgroup;
use crate::hypervisor::child::confine;
use crate::hypervisor::HypervisorError;

/// The first argument that makes the shim's binary a namespace holder ([`hold_if_asked`]).
pub const HOLDER_ARG: &str = "pulse-netns-holder";

/// The MTU the NIC boots with (virtio-net's `mtu` is also the guest's maximum: a larger one
/// would make Linux allocate 64 KiB receive buffers without mergeable buffers).
pub const BOOT_MTU: u16 = 1500;

/// Why the holder could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The pod's cgroup could not be joined.
    #[error("confining the network namespace holder: {0}")]
    Confine(#[source] HypervisorError),
    /// fork/exec failed.
    #[error("starting the network namespace holder: {0}")]
    Spawn(std::io::Error),
}

/// A process that does nothing but keep a network namespace of its own alive.
#[derive(Debug)]
pub struct NetnsHolder {
    child: tokio::process::Child,
    pid: u32,
}

impl NetnsHolder {
    /// Starts the shim's own binary as a holder (see [`hold_if_asked`]) in the pod's cgroup;
    /// its command line names the shim and the sandbox directory (for `ps`, and the tests'
    /// leak checks).
    pub fn spawn(cgroup: Option<&PodCgroup>, sandbox_dir: &Path) -> Result<Self, HolderError> {
        let shim = std::env::current_exe().map_err(HolderError::Spawn)?;
        let dir = sandbox_dir.to_string_lossy();
        Self::spawn_program(
            "/proc/self/exe",
            &shim.to_string_lossy(),
            &[HOLDER_ARG, &dir],
            cgroup,
        )
    }

    /// Starts `program` (named `arg0`) with `args` in a new network namespace, killed when
    /// the shim dies.
    pub fn spawn_program(
        program: &str,
        arg0: &str,
        args: &[&str],
        cgroup: Option<&PodCgroup>,
    ) -> Result<Self, HolderError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg0(arg0)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // The pod's cgroup, SIGKILL when the shim dies: as the VM's other helpers.
        confine(&mut cmd, cgroup, Vec::new()).map_err(HolderError::Confine)?;
        // SAFETY: the closure runs in the child between fork and exec (after confine's) and
        // makes one async-signal-safe call, unshare.
        unsafe {
            cmd.as_std_mut().pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(HolderError::Spawn)?;
        let pid = child.id().unwrap_or(0);
        Ok(Self { child, pid })
    }

    /// Its pid: what containerd sees as the pod's container.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its network namespace.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// Kills it and waits for it: its namespace goes with it.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Makes this process a holder when its first argument is [`HOLDER_ARG`]: it waits for a
/// signal for good. Called first thing in the shim's `main`.
pub fn hold_if_asked() {
    if std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new(HOLDER_ARG)) {
        return;
    }
    loop {
        // SAFETY: pause has no preconditions; it returns when a handled signal arrives.
        unsafe { libc::pause() };
    }
}

/// The pod's own namespace, its holder and the NIC the VM booted with.
#[derive(Debug)]
pub struct LateNetwork {
    holder: NetnsHolder,
    /// The NIC's tap and the MAC it booted with; none with `devices.net_queues` = 0.
    nic: Option<(String, [u8; 6])>,
    connected: bool,
}

impl LateNetwork {
    /// Starts the holder and, with `queue_pairs`, makes a NIC's tap with that many queues in
    /// its namespace.
    pub fn prepare(
        cgroup: Option<&PodCgroup>,
        sandbox_dir: &Path,
        queue_pairs: Option<u16>,
    ) -> Result<(LateNetwork, Option<NicDevice>), NetworkError> {
        let holder = NetnsHolder::spawn(cgroup, sandbox_dir)?;
        let Some(queue_pairs) = queue_pairs else {
            let late = LateNetwork {
                holder,
                nic: None,
                connected: false,
            };
            return Ok((late, None));
        };
        let tap = super::tap_name(0);
        let boot_mac = local_mac();
        let pairs = usize::from(queue_pairs.max(1));
        let name = tap.clone();
        let fds = in_pod_netns(&holder.netns(), move |nl| {
            let fds = pulse_netlink::create_tap(&name, pairs)?;
            let link = nl.link_by_name(&name)?.ok_or_else(|| {
                NetlinkError::Invalid(format!("tap {name} vanished after its creation"))
            })?;
            nl.set_link(link.index, None, Some(u32::from(BOOT_MTU)), Some(true))?;
            Ok(fds)
        })?;
        let nic = NicDevice {
            tap: tap.clone(),
            fds,
            mac: boot_mac,
            mtu: BOOT_MTU,
        };
        Ok((
            LateNetwork {
                holder,
                nic: Some((tap, boot_mac)),
                connected: false,
            },
            Some(nic),
        ))
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// Once, when the pod's container starts: joins the interface CNI added to the namespace
    /// meanwhile to the tap and returns the guest's settings (the NIC takes the veth's MAC);
    /// `None` when nothing was added (`ctr run` without `--cni`). Blocking (it enters the
    /// namespace).
    pub fn connect(&mut self) -> Result<Option<GuestNetwork>, NetworkError> {
        if std::mem::replace(&mut self.connected, true) {
            return Ok(None);
        }
        let nic = self.nic.clone();
        in_pod_netns(&self.holder.netns(), move |nl| {
            let (chosen, mut guest) = plan(&snapshot(nl)?);
            let Some((veth, _)) = chosen.first() else {
                return Ok(None);
            };
            let Some((tap, boot_mac)) = nic else {
                tracing::warn!(
                    veth = %veth.name,
                    "devices.net_queues is 0: the VM has no NIC for the interface CNI added"
                );
                return Ok(None);
            };
            if chosen.len() > 1 {
                tracing::warn!(
                    carried = %veth.name,
                    left = ?chosen[1..].iter().map(|(l, _)| &l.name).collect::<Vec<_>>(),
                    "the VM has one NIC for the pod's own namespace: only the first interface is carried"
                );
            }
            let tap = nl
                .link_by_name(&tap)?
                .ok_or_else(|| NetlinkError::Invalid(format!("the pod's tap {tap} is gone")))?;
            join(nl, veth, &tap)?;
            guest.interfaces.truncate(1);
            let nic = &mut guest.interfaces[0];
            nic.set_mac = std::mem::take(&mut nic.mac);
            nic.mac = pulse_netlink::format_mac(&boot_mac);
            if nic.mtu > u32::from(BOOT_MTU) {
                tracing::warn!(
                    veth = %veth.name,
                    mtu = nic.mtu,
                    "the guest's NIC booted with MTU {BOOT_MTU}, its maximum: it keeps that"
                );
                nic.mtu = u32::from(BOOT_MTU);
            }
            let name = nic.name.clone();
            guest.routes.retain(|r| r.device == name);
            guest.neighbours.retain(|n| n.device == name);
            Ok(Some(guest))
        })
    }

    /// Kills the holder: its namespace, the veth and the tap's filters go with it.
    pub async fn stop(&mut self) {
        self.holder.stop().await;
    }
}

/// A random, locally administered unicast MAC.
fn local_mac() -> [u8; 6] {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let bits = hasher.finish().to_le_bytes();
    [0x02, bits[0], bits[1], bits[2], bits[3], bits[4]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn boot_macs_are_local_unicast_and_differ() {
        let (a, b) = (local_mac(), local_mac());
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_holder_has_a_namespace_of_its_own_which_goes_with_it() {
        if !root() {
            eprintln!("SKIPPED: needs root (unshare of a network namespace)");
            return;
        }
        let mut holder = NetnsHolder::spawn_program("sleep", "sleep", &["1000"], None).unwrap();
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        // spawn returns once the child exec'd, after its unshare.
        let theirs = std::fs::read_link(holder.netns()).unwrap();
        assert_ne!(theirs, ours);
        holder.stop().await;
        assert!(
            std::fs::read_link(holder.netns()).is_err(),
            "the holder is gone"
        );
    }
}
