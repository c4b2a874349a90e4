//! Which pod a container belongs to, from the CRI annotations of its OCI spec.
//!
//! One shim process and one VM serve a pod. The CRI plugin marks the pod's
//! sandbox (pause) container with `io.kubernetes.cri.container-type=sandbox`
//! and every other container with `container-type=container` plus
//! `io.kubernetes.cri.sandbox-id=<pod>`. A container without these
//! annotations (plain `ctr run`) is a pod of one, named after itself.
//!
//! The pod's CPU and memory limits size its VM ([`PodResources`], [`size_vm`]), as Kata's
//! static sandbox sizing does: the VM is booted for the pod's first container, so what the
//! whole pod may use must be known then. containerd 1.6's CRI plugin passes it on the sandbox
//! container as annotations (`io.kubernetes.cri.sandbox-cpu-quota`, `-cpu-period`,
//! `-memory`), from `LinuxPodSandboxConfig.resources`, which kubelet fills with the sum of the
//! pod's container limits (a kubelet that predates the field leaves it out); a pod of one (`ctr run --cpu-quota ...
//! --memory-limit ...`) brings its container's own `linux.resources`.

use std::collections::HashMap;

/// `io.kubernetes.cri.container-type`
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// `io.kubernetes.cri.sandbox-id`
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container's place in its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodRole {
    /// The pod's sandbox container: it creates the pod (and its VM).
    Sandbox {
        /// The pod's id (the sandbox container's own id).
        pod: String,
    },
    /// A container that joins an existing pod.
    Member {
        /// The pod's id.
        pod: String,
    },
    /// A container on its own: a pod of one.
    Single {
        /// The pod's id: the container's id.
        pod: String,
    },
}

impl PodRole {
    /// Works out the role of container `id` from its annotations.
    pub fn of(id: &str, annotations: &HashMap<String, String>) -> PodRole {
        let sandbox_id = annotations.get(SANDBOX_ID).filter(|s| !s.is_empty());
        match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => PodRole::Sandbox {
                pod: sandbox_id.cloned().unwrap_or_else(|| id.to_string()),
            },
            Some("container") => match sandbox_id {
                Some(pod) if pod != id => PodRole::Member { pod: pod.clone() },
                _ => PodRole::Single {
                    pod: id.to_string(),
                },
            },
            _ => PodRole::Single {
                pod: id.to_string(),
            },
        }
    }

    /// The pod's id: the grouping key of the shim socket and the VM.
    pub fn pod(&self) -> &str {
        match self {
            PodRole::Sandbox { pod } | PodRole::Member { pod } | PodRole::Single { pod } => pod,
        }
    }

    /// Whether this container may boot the pod's VM (a member must find it running).
    pub fn creates_pod(&self) -> bool {
        !matches!(self, PodRole::Member { .. })
    }
}

/// `io.kubernetes.cri.sandbox-cpu-quota`: the pod's CFS quota, µs per period (containerd 1.6+).
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// `io.kubernetes.cri.sandbox-cpu-period`: the pod's CFS period, µs.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// `io.kubernetes.cri.sandbox-memory`: the pod's memory limit, bytes.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// Most vCPUs and memory a VM gets (the ranges `vm.vcpus` and `vm.memory_mib` accept).
const MAX_VCPUS: u32 = 64;
const MAX_MEMORY_MIB: u64 = 65536;

/// What the pod's containers may use together; zero where there is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodResources {
    /// CFS quota, µs per `cpu_period` (0: no CPU limit).
    pub cpu_quota: u64,
    /// CFS period, µs.
    pub cpu_period: u64,
    /// Memory limit, bytes (0: none).
    pub memory_bytes: u64,
}

impl PodResources {
    /// From the sandbox container's `io.kubernetes.cri.sandbox-*` annotations; `None` when
    /// the CRI passed none (a kubelet without `LinuxPodSandboxConfig.resources` does not).
    /// Non-positive values (kubelet's "no limit") count as no limit.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Option<PodResources> {
        let get = |key: &str| -> Option<u64> {
            let value = annotations.get(key)?.trim().parse::<i64>().ok()?;
            Some(u64::try_from(value).unwrap_or(0))
        };
        let quota = get(SANDBOX_CPU_QUOTA);
        let period = get(SANDBOX_CPU_PERIOD);
        let memory = get(SANDBOX_MEMORY);
        if quota.is_none() && memory.is_none() {
            return None;
        }
        Some(PodResources {
            cpu_quota: quota.unwrap_or(0),
            cpu_period: period.unwrap_or(0),
            memory_bytes: memory.unwrap_or(0),
        })
    }

    /// From an OCI spec's `linux.resources` (`cpu.quota`, `cpu.period`, `memory.limit`): a
    /// pod of one's own limits. `None` without any.
    pub fn from_spec(spec: &serde_json::Value) -> Option<PodResources> {
        let resources = spec.get("linux")?.get("resources")?;
        let num = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_i64)
                .and_then(|n| u64::try_from(n).ok())
        };
        let cpu = resources.get("cpu");
        let quota = num(cpu.and_then(|c| c.get("quota")));
        let period = num(cpu.and_then(|c| c.get("period")));
        let memory = num(resources.get("memory").and_then(|m| m.get("limit")));
        if quota.unwrap_or(0) == 0 && memory.unwrap_or(0) == 0 {
            return None;
        }
        Some(PodResources {
            cpu_quota: quota.unwrap_or(0),
            cpu_period: period.unwrap_or(0),
            memory_bytes: memory.unwrap_or(0),
        })
    }

    /// The resources that size the VM of the pod `spec` starts: the CRI's pod annotations
    /// for a sandbox container, the container's own limits for a pod of one.
    pub fn of_pod(role: &PodRole, spec: &serde_json::Value) -> Option<PodResources> {
        match role {
            PodRole::Sandbox { .. } => PodResources::from_annotations(&annotations_of(spec)),
            PodRole::Single { .. } => PodResources::from_annotations(&annotations_of(spec))
                .or_else(|| PodResources::from_spec(spec)),
            PodRole::Member { .. } => None,
        }
    }

    /// Whole CPUs the limit needs: the quota over the period, rounded up (a period of 0
    /// is the kernel's default, 100 ms).
    pub fn vcpus(&self) -> u32 {
        if self.cpu_quota == 0 {
            return 0;
        }
        let period = if self.cpu_period == 0 {
            100_000
        } else {
            self.cpu_period
        };
        u32::try_from(self.cpu_quota.div_ceil(period)).unwrap_or(u32::MAX)
    }

    /// MiB the limit needs, rounded up.
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes.div_ceil(1 << 20)
    }
}

/// The VM's vCPUs and memory for a pod: the configured `vm.vcpus` and `vm.memory_mib` (what
/// the guest itself needs: its kernel, the agent, the pause process) plus what the pod's
/// limits need, as Kata's static sandbox sizing adds the workload to its defaults. vCPUs are
/// capped at `host_cpus` (more would only overcommit the host) and 64, memory at 64 GiB; a
/// pod without limits gets the configured size. Returns (vCPUs, MiB).
pub fn size_vm(
    base_vcpus: u8,
    base_memory_mib: u64,
    pod: Option<&PodResources>,
    host_cpus: u32,
) -> (u8, u64) {
    let Some(pod) = pod else {
        return (base_vcpus, base_memory_mib);
    };
    let base = u32::from(base_vcpus);
    let wanted = base.saturating_add(pod.vcpus());
    let cap = host_cpus.clamp(1, MAX_VCPUS).max(base);
    let vcpus = u8::try_from(wanted.min(cap)).unwrap_or(u8::MAX);
    let memory = base_memory_mib
        .saturating_add(pod.memory_mib())
        .min(MAX_MEMORY_MIB.max(base_memory_mib));
    (vcpus, memory)
}

/// Why a container's own limits (`resources`, from its spec) do not fit the running VM of
/// `vcpus` and `memory_mib`, if they do not: the VM was sized when the pod started (without
/// the CRI's pod annotations, from a kubelet that does not send the pod's resources, it has
/// the configured size only).
pub fn exceeds_vm(resources: &PodResources, vcpus: u8, memory_mib: u64) -> Option<String> {
    let mut why = Vec::new();
    if resources.vcpus() > u32::from(vcpus) {
        why.push(format!(
            "a CPU limit of {} whole CPUs in a VM of {vcpus} vCPUs",
            resources.vcpus()
        ));
    }
    if resources.memory_mib() >= memory_mib {
        why.push(format!(
            "a memory limit of {} MiB in a VM of {memory_mib} MiB",
            resources.memory_mib()
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The annotations of an OCI spec in JSON form (empty when there are none).
pub fn annotations_of(spec: &serde_json::Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_annotations_is_a_pod_of_one() {
        let role = PodRole::of("c1", &HashMap::new());
        assert_eq!(role, PodRole::Single { pod: "c1".into() });
        assert!(role.creates_pod());
    }

    #[test]
    fn sandbox_and_member_share_the_pod() {
        let sandbox = PodRole::of(
            "pod1",
            &ann(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod1")]),
        );
        let member = PodRole::of(
            "app",
            &ann(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod1")]),
        );
        assert_eq!(sandbox.pod(), "pod1");
        assert_eq!(member, PodRole::Member { pod: "pod1".into() });
        assert!(sandbox.creates_pod() && !member.creates_pod());
    }

    #[test]
    fn sandbox_without_id_names_itself() {
        let role = PodRole::of("p", &ann(&[(CONTAINER_TYPE, "sandbox")]));
        assert_eq!(role, PodRole::Sandbox { pod: "p".into() });
    }

    #[test]
    fn member_without_a_pod_id_stands_alone() {
        let role = PodRole::of("x", &ann(&[(CONTAINER_TYPE, "container")]));
        assert_eq!(role, PodRole::Single { pod: "x".into() });
    }

    #[test]
    fn the_cri_sandbox_annotations_are_the_pods_resources() {
        // What containerd 1.6.20 put on a sandbox whose pod may use 1.5 CPUs and 128 MiB.
        let a = ann(&[
            (CONTAINER_TYPE, "sandbox"),
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_CPU_QUOTA, "150000"),
            ("io.kubernetes.cri.sandbox-cpu-shares", "1536"),
            (SANDBOX_MEMORY, "134217728"),
        ]);
        let r = PodResources::from_annotations(&a).unwrap();
        assert_eq!(
            r,
            PodResources {
                cpu_quota: 150_000,
                cpu_period: 100_000,
                memory_bytes: 128 << 20
            }
        );
        assert_eq!((r.vcpus(), r.memory_mib()), (2, 128));
        // Without limits kubelet passes 0 (or -1 for the quota): no limit.
        let none = PodResources::from_annotations(&ann(&[
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_CPU_QUOTA, "-1"),
            (SANDBOX_MEMORY, "0"),
        ]))
        .unwrap();
        assert_eq!((none.vcpus(), none.memory_mib()), (0, 0));
        assert_eq!(
            PodResources::from_annotations(&ann(&[(CONTAINER_TYPE, "sandbox")])),
            None
        );
        // A value that is not a number is no limit, not a failure.
        let bad = PodResources::from_annotations(&ann(&[(SANDBOX_MEMORY, "lots")]));
        assert_eq!(bad, None);
    }

    #[test]
    fn a_pod_of_one_brings_its_own_limits() {
        let spec = serde_json::json!({"linux": {"resources": {
            "cpu": {"quota": 50000, "period": 100000, "shares": 1024},
            "memory": {"limit": 67108864}
        }}});
        let single = PodRole::of("c1", &HashMap::new());
        let r = PodResources::of_pod(&single, &spec).unwrap();
        assert_eq!((r.vcpus(), r.memory_mib()), (1, 64));
        // Shares alone (ctr always sets some) are no limit.
        let shares = serde_json::json!({"linux": {"resources": {"cpu": {"shares": 1024}}}});
        assert_eq!(PodResources::of_pod(&single, &shares), None);
        assert_eq!(PodResources::of_pod(&single, &serde_json::json!({})), None);
        // A member joins a VM that is already running: it never sizes one.
        let member = PodRole::Member { pod: "p".into() };
        assert_eq!(PodResources::of_pod(&member, &spec), None);
        // A CRI sandbox is sized by the pod's annotations, not by its own (pause) limits.
        let sandbox = PodRole::Sandbox { pod: "p".into() };
        assert_eq!(PodResources::of_pod(&sandbox, &spec), None);
    }

    #[test]
    fn the_vm_is_the_configured_size_plus_the_pods_limits() {
        let pod = PodResources {
            cpu_quota: 150_000,
            cpu_period: 100_000,
            memory_bytes: 128 << 20,
        };
        assert_eq!(size_vm(1, 256, Some(&pod), 8), (3, 384));
        assert_eq!(size_vm(1, 256, None, 8), (1, 256));
        // A quota of a fraction of a CPU still needs a whole vCPU; memory rounds up to MiB.
        let small = PodResources {
            cpu_quota: 10_000,
            cpu_period: 100_000,
            memory_bytes: 1,
        };
        assert_eq!(size_vm(1, 256, Some(&small), 8), (2, 257));
        // A default period (0) is 100 ms.
        let default_period = PodResources {
            cpu_quota: 200_000,
            ..Default::default()
        };
        assert_eq!(default_period.vcpus(), 2);
        // Capped at the host's CPUs (never below the configured count) and at 64 / 64 GiB.
        assert_eq!(size_vm(1, 256, Some(&pod), 2), (2, 384));
        assert_eq!(size_vm(4, 256, Some(&pod), 2), (4, 384));
        let huge = PodResources {
            cpu_quota: u64::MAX,
            cpu_period: 1,
            memory_bytes: u64::MAX,
        };
        assert_eq!(size_vm(1, 256, Some(&huge), 1000), (64, 65536));
    }

    #[test]
    fn a_container_whose_limits_exceed_the_vm_is_named() {
        let two_cpus_1g = PodResources {
            cpu_quota: 200_000,
            cpu_period: 100_000,
            memory_bytes: 1 << 30,
        };
        let why = exceeds_vm(&two_cpus_1g, 1, 256).unwrap();
        assert!(
            why.contains("2 whole CPUs in a VM of 1 vCPUs")
                && why.contains("1024 MiB in a VM of 256 MiB"),
            "{why}"
        );
        assert_eq!(exceeds_vm(&two_cpus_1g, 3, 2048), None);
        let memory_only = PodResources {
            memory_bytes: 256 << 20,
            ..Default::default()
        };
        assert!(
            exceeds_vm(&memory_only, 1, 256).is_some(),
            "the guest needs some too"
        );
    }

    #[test]
    fn annotations_from_spec_json() {
        let spec = serde_json::json!({"annotations": {SANDBOX_ID: "p", "n": 1}});
        assert_eq!(annotations_of(&spec), ann(&[(SANDBOX_ID, "p")]));
        assert!(annotations_of(&serde_json::json!({})).is_empty());
    }
}
