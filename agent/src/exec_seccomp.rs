//! The container's seccomp profile for the processes exec'd into it.
//!
//! runc loads a container's profile into every process `runc exec` starts (`ctr tasks exec`,
//! `kubectl exec`); libcontainer 0.7's tenant builder rebuilds the spec's `linux` section for
//! an exec without it, so an exec'd process ran unconfined. The agent hands the profile to its
//! executor, which loads it in the new process before its program runs
//! ([`crate::workload::OrderedEnvExecutor`]'s `validate`, after libcontainer set the user and
//! the capabilities).
//!
//! Loading a filter needs `no_new_privs` or CAP_SYS_ADMIN. A process with `noNewPrivileges` has
//! the first; for one without (Kubernetes' default, allowPrivilegeEscalation) the agent lends it
//! CAP_SYS_ADMIN and CAP_SETPCAP for the load, and the executor sets the process's own
//! capabilities right after it, as runc loads the filter before it drops the capabilities.

use libcontainer::capabilities::drop_privileges;
use libcontainer::syscall::syscall::create_syscall;
use oci_spec::runtime::{Capabilities, Capability, LinuxSeccomp, Process};
use serde::{Deserialize, Serialize};

/// What the executor of an exec'd process loads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSeccomp {
    /// The container's profile (`linux.seccomp` of its spec).
    pub profile: LinuxSeccomp,
    /// The process's own capabilities, set once the filter is loaded, when the agent lent it
    /// some for the load.
    pub restore: Option<oci_spec::runtime::LinuxCapabilities>,
}

/// The capabilities lent for the load: loading needs CAP_SYS_ADMIN, giving them back (the
/// bounding set) CAP_SETPCAP.
const LENT: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// `process` ready to load `profile` in its executor: without `noNewPrivileges` and without
/// CAP_SYS_ADMIN, it gets CAP_SYS_ADMIN and CAP_SETPCAP until the filter is loaded.
pub fn prepare(mut process: Process, profile: LinuxSeccomp) -> (Process, ExecSeccomp) {
    let mut restore = None;
    if process.no_new_privileges() != Some(true) {
        if let Some(own) = process.capabilities().clone() {
            let has = |set: &Option<Capabilities>, c: &Capability| {
                set.as_ref().is_some_and(|s| s.contains(c))
            };
            let can_load = has(own.effective(), &Capability::SysAdmin)
                && has(own.permitted(), &Capability::SysAdmin);
            if !can_load {
                let with_lent = |set: &Option<Capabilities>| {
                    let mut set = set.clone().unwrap_or_default();
                    set.extend(LENT);
                    Some(set)
                };
                let mut lent = own.clone();
                lent.set_bounding(with_lent(own.bounding()))
                    .set_permitted(with_lent(own.permitted()))
                    .set_effective(with_lent(own.effective()));
                process.set_capabilities(Some(lent));
                restore = Some(own);
            }
        }
    }
    (process, ExecSeccomp { profile, restore })
}

/// In the exec'd process, before its program: loads the filter, then sets the process's own
/// capabilities when some were lent. An error stops the exec (never an unconfined process).
pub fn apply(seccomp: &ExecSeccomp) -> Result<(), String> {
    libcontainer::seccomp::initialize_seccomp(&seccomp.profile)
        .map_err(|e| format!("loading the container's seccomp profile: {e}"))?;
    if let Some(own) = &seccomp.restore {
        drop_privileges(own, &*create_syscall())
            .map_err(|e| format!("setting the capabilities after the seccomp load: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, LinuxSeccompBuilder, ProcessBuilder};

    fn process(no_new_privileges: Option<bool>, caps: &[Capability]) -> Process {
        let set: Capabilities = caps.iter().copied().collect();
        let mut p = ProcessBuilder::default()
            .args(vec!["sh".to_string()])
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(set.clone())
                    .permitted(set.clone())
                    .effective(set.clone())
                    .inheritable(Capabilities::new())
                    .ambient(Capabilities::new())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        p.set_no_new_privileges(no_new_privileges);
        p
    }

    fn profile() -> LinuxSeccomp {
        LinuxSeccompBuilder::default().build().unwrap()
    }

    #[test]
    fn without_no_new_privs_the_load_borrows_cap_sys_admin_and_gives_it_back() {
        let own = [Capability::Chown, Capability::Kill];
        let (p, s) = prepare(process(None, &own), profile());
        let caps = p.capabilities().clone().unwrap();
        for set in [caps.bounding(), caps.permitted(), caps.effective()] {
            let set = set.clone().unwrap();
            for c in own.iter().chain(LENT.iter()) {
                assert!(set.contains(c), "{c:?} missing from {set:?}");
            }
        }
        assert!(caps.ambient().clone().unwrap().is_empty());
        assert!(caps.inheritable().clone().unwrap().is_empty());
        let restore = s.restore.expect("the own capabilities");
        assert_eq!(
            restore.effective().clone().unwrap(),
            own.into_iter().collect::<Capabilities>()
        );
    }

    #[test]
    fn no_new_privs_or_cap_sys_admin_need_no_loan() {
        let own = [Capability::Chown];
        let (p, s) = prepare(process(Some(true), &own), profile());
        assert!(s.restore.is_none());
        assert_eq!(
            p.capabilities()
                .clone()
                .unwrap()
                .effective()
                .clone()
                .unwrap(),
            own.into_iter().collect::<Capabilities>()
        );
        let admin = [Capability::SysAdmin, Capability::Chown];
        let (_, s) = prepare(process(None, &admin), profile());
        assert!(s.restore.is_none());
    }
}
