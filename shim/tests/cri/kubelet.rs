//! A small kubelet-shaped CRI v1 client: the configs kubelet builds for a pod and its
//! containers, and blocking calls over containerd's socket (k8s-cri's tonic client).

use std::collections::HashMap;
use std::path::Path;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

pub use cri::{
    ContainerConfig, ContainerState, LinuxContainerResources, PodSandboxConfig, PodSandboxState,
};

pub struct Kubelet {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Kubelet {
    /// Connects to the CRI plugin on containerd's unix socket.
    pub fn connect(socket: &Path) -> anyhow::Result<Kubelet> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async {
            // The URI is a placeholder: the connector dials the socket.
            Endpoint::try_from("http://[::]:0")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        });
        let channel = channel
            .map_err(|e| anyhow::anyhow!("connecting to the CRI on {}: {e}", socket.display()))?;
        Ok(Kubelet {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn rt<T>(
        &self,
        call: impl AsyncFnOnce(RuntimeServiceClient<Channel>) -> Result<tonic::Response<T>, Status>,
    ) -> Result<T, Status> {
        let client = self.runtime.clone();
        self.rt
            .block_on(call(client))
            .map(tonic::Response::into_inner)
    }

    pub fn version(&self) -> Result<cri::VersionResponse, Status> {
        self.rt(async |mut c| c.version(cri::VersionRequest::default()).await)
    }

    /// The image's id as the CRI plugin knows it (it is in its image store).
    pub fn image_status(&self, image: &str) -> Result<Option<cri::Image>, Status> {
        let mut c = self.images.clone();
        let req = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        self.rt
            .block_on(c.image_status(req))
            .map(|r| r.into_inner().image)
    }

    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.rt(async |mut c| c.run_pod_sandbox(req).await)
            .map(|r| r.pod_sandbox_id)
    }

    pub fn list_pods(&self) -> Result<Vec<cri::PodSandbox>, Status> {
        self.rt(async |mut c| {
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
        })
        .map(|r| r.items)
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.rt(async |mut c| c.create_container(req).await)
            .map(|r| r.container_id)
    }

    /// The pod's containers.
    pub fn list_containers(&self, pod: &str) -> Result<Vec<cri::Container>, Status> {
        let req = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        };
        self.rt(async |mut c| c.list_containers(req).await)
            .map(|r| r.containers)
    }

    /// The streaming server's URL for an exec.
    pub fn exec(&self, req: cri::ExecRequest) -> Result<String, Status> {
        self.rt(async |mut c| c.exec(req).await).map(|r| r.url)
    }

    /// The streaming server's URL for an attach.
    pub fn attach(&self, req: cri::AttachRequest) -> Result<String, Status> {
        self.rt(async |mut c| c.attach(req).await).map(|r| r.url)
    }
}

/// `Kubelet`'s calls on one pod or container, one entry each: `fn name(&self, args) -> T =
/// call(request)` sends the request built from the arguments through the runtime client's
/// `call` and returns its reply; `.field` after the call returns that field of the reply,
/// which must be there (an INTERNAL status says it was not); without `-> T` the method returns
/// nothing.
macro_rules! calls_by_id {
    ($(
        fn $name:ident(&self $(, $arg:ident: $arg_ty:ty)*) $(-> $ret:ty)? =
            $call:ident($req:expr) $(.$part:ident)?;
    )*) => {
        impl Kubelet {$(
            pub fn $name(
                &self $(, $arg: $arg_ty)*
            ) -> Result<calls_by_id!(@ret $($ret)?), Status> {
                let reply = self.rt(async |mut c| c.$call($req).await);
                calls_by_id!(@reply reply $(, $ret)? $(, $part)?)
            }
        )*}
    };
    (@ret) => { () };
    (@ret $ret:ty) => { $ret };
    (@reply $reply:ident) => { $reply.map(drop) };
    (@reply $reply:ident, $ret:ty) => { $reply };
    (@reply $reply:ident, $ret:ty, $part:ident) => {
        $reply.and_then(|r| {
            let missing = concat!("no ", stringify!($part), " in the answer");
            r.$part.ok_or_else(|| Status::internal(missing))
        })
    };
}

calls_by_id! {
    fn pod_status(&self, id: &str) -> cri::PodSandboxStatusResponse =
        pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        });
    fn pod_stats(&self, id: &str) -> cri::PodSandboxStats =
        pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: id.into() }).stats;
    fn stop_pod(&self, id: &str) =
        stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() });
    fn remove_pod(&self, id: &str) =
        remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() });
    fn start_container(&self, id: &str) =
        start_container(cri::StartContainerRequest { container_id: id.into() });
    fn container_status(&self, id: &str) -> cri::ContainerStatus =
        container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .status;
    fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> cri::ExecSyncResponse =
        exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: strings(cmd),
            timeout: timeout_s,
        });
    fn reopen_log(&self, id: &str) =
        reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.into() });
    fn container_stats(&self, id: &str) -> cri::ContainerStats =
        container_stats(cri::ContainerStatsRequest { container_id: id.into() }).stats;
    fn update_resources(&self, id: &str, resources: LinuxContainerResources) =
        update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        });
    fn stop_container(&self, id: &str, timeout_s: i64) =
        stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        });
    fn remove_container(&self, id: &str) =
        remove_container(cri::RemoveContainerRequest { container_id: id.into() });
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// The namespaces kubelet asks for, for the pod and each of its containers alike: the pod's
/// network and IPC namespaces, a PID namespace per container.
fn namespace_options() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod as kubelet describes it: metadata, hostname, the log directory, DNS, the Linux
/// security context (the pod's own PID, IPC and network namespaces), the pod's cgroup
/// parent, and the sum of its containers' resources (LinuxPodSandboxConfig.resources).
pub fn pod_config(
    name: &str,
    uid: &str,
    log_directory: &Path,
    cgroup_parent: &str,
    resources: Option<LinuxContainerResources>,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "pulse-cri-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["pulse-cri-test.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: Vec::new(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("pulse.test/pod".to_string(), name.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            resources,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container as kubelet describes it.
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub command: &'a [&'a str],
    /// Relative to the pod's log directory, as kubelet names it (`<name>/<restart>.log`).
    pub log_path: String,
    /// (host path, container path, read-only)
    pub mounts: Vec<(String, String, bool)>,
    pub envs: &'a [(&'a str, &'a str)],
    pub resources: Option<LinuxContainerResources>,
    pub stdin: bool,
}

pub fn container_config(spec: &ContainerSpec) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: spec.name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(spec.image)),
        command: strings(spec.command),
        working_dir: "/".into(),
        envs: spec
            .envs
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        mounts: spec
            .mounts
            .iter()
            .map(|(host, container, ro)| cri::Mount {
                host_path: host.clone(),
                container_path: container.clone(),
                readonly: *ro,
                ..Default::default()
            })
            .collect(),
        labels: HashMap::from([("container".to_string(), spec.name.to_string())]),
        log_path: spec.log_path.clone(),
        stdin: spec.stdin,
        stdin_once: false,
        tty: false,
        linux: Some(cri::LinuxContainerConfig {
            resources: spec.resources.clone(),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// CPU and memory as kubelet passes a limit (`cpu_quota`/`cpu_period` in µs, bytes).
pub fn resources(millicpu: i64, memory_bytes: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: millicpu * 100,
        cpu_shares: millicpu * 1024 / 1000,
        memory_limit_in_bytes: memory_bytes,
        oom_score_adj: 1000,
        ..Default::default()
    }
}
