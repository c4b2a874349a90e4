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

    pub fn pod_status(&self, id: &str) -> Result<cri::PodSandboxStatusResponse, Status> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        self.rt(async |mut c| c.pod_sandbox_status(req).await)
    }

    pub fn list_pods(&self) -> Result<Vec<cri::PodSandbox>, Status> {
        self.rt(async |mut c| {
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
        })
        .map(|r| r.items)
    }

    pub fn pod_stats(&self, id: &str) -> Result<cri::PodSandboxStats, Status> {
        let req = cri::PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt(async |mut c| c.pod_sandbox_stats(req).await)
            .and_then(|r| {
                r.stats
                    .ok_or_else(|| Status::internal("no stats in the answer"))
            })
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt(async |mut c| c.stop_pod_sandbox(req).await)
            .map(drop)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt(async |mut c| c.remove_pod_sandbox(req).await)
            .map(drop)
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

    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.rt(async |mut c| c.start_container(req).await)
            .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, Status> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        self.rt(async |mut c| c.container_status(req).await)
            .and_then(|r| {
                r.status
                    .ok_or_else(|| Status::internal("no status in the answer"))
            })
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

    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse, Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: strings(cmd),
            timeout: timeout_s,
        };
        self.rt(async |mut c| c.exec_sync(req).await)
    }

    /// The streaming server's URL for an exec.
    pub fn exec(&self, req: cri::ExecRequest) -> Result<String, Status> {
        self.rt(async |mut c| c.exec(req).await).map(|r| r.url)
    }

    /// The streaming server's URL for an attach.
    pub fn attach(&self, req: cri::AttachRequest) -> Result<String, Status> {
        self.rt(async |mut c| c.attach(req).await).map(|r| r.url)
    }

    pub fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let req = cri::ReopenContainerLogRequest {
            container_id: id.into(),
        };
        self.rt(async |mut c| c.reopen_container_log(req).await)
            .map(drop)
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, Status> {
        let req = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.rt(async |mut c| c.container_stats(req).await)
            .and_then(|r| {
                r.stats
                    .ok_or_else(|| Status::internal("no stats in the answer"))
            })
    }

    pub fn update_resources(
        &self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> Result<(), Status> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        };
        self.rt(async |mut c| c.update_container_resources(req).await)
            .map(drop)
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), Status> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        self.rt(async |mut c| c.stop_container(req).await).map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), Status> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.rt(async |mut c| c.remove_container(req).await)
            .map(drop)
    }
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
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
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
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
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
