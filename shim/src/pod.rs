//! Which pod a container belongs to, from the CRI annotations of its OCI spec.
//!
//! One shim process and one VM serve a pod. The CRI plugin marks the pod's
//! sandbox (pause) container with `io.kubernetes.cri.container-type=sandbox`
//! and every other container with `container-type=container` plus
//! `io.kubernetes.cri.sandbox-id=<pod>`. A container without these
//! annotations (plain `ctr run`) is a pod of one, named after itself.

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
    fn annotations_from_spec_json() {
        let spec = serde_json::json!({"annotations": {SANDBOX_ID: "p", "n": 1}});
        assert_eq!(annotations_of(&spec), ann(&[(SANDBOX_ID, "p")]));
        assert!(annotations_of(&serde_json::json!({})).is_empty());
    }
}
