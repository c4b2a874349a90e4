//! `Sandbox`: set the guest up for a pod, tear it down, describe it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pulse_protocols::sandbox::{
    CreateSandboxRequest, CreateSandboxResponse, DestroySandboxRequest, DestroySandboxResponse,
    GuestDetails, GuestDetailsRequest,
};
use pulse_protocols::sandbox_ttrpc::Sandbox;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use super::{internal, Agent};
use crate::{guest, shared};
use std::path::Path;

pub struct SandboxService(pub Arc<Agent>);

/// The pod's virtio-fs share (`tag` not empty) and shared-memory tmpfs (`shm_bytes` > 0).
fn mount_pod_filesystems(tag: &str, shm_bytes: u64) -> ttrpc::Result<()> {
    let refused = |e: shared::SharedError| {
        ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, e.to_string()))
    };
    if !tag.is_empty() {
        shared::validate_tag(tag).map_err(|e| {
            ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INVALID_ARGUMENT, e.to_string()))
        })?;
        shared::mount_shared_fs(tag, Path::new(shared::SHARED_DIR)).map_err(refused)?;
        tracing::info!(
            tag,
            "the pod's virtio-fs share is at {}",
            shared::SHARED_DIR
        );
    }
    if shm_bytes != 0 {
        shared::mount_sandbox_shm(shm_bytes, Path::new(shared::SANDBOX_SHM_DIR))
            .map_err(refused)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Sandbox for SandboxService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        if !req.hostname.is_empty() {
            if self.0.init_mode {
                nix::unistd::sethostname(&req.hostname).map_err(|e| {
                    ttrpc::Error::RpcStatus(ttrpc::get_status(
                        Code::INVALID_ARGUMENT,
                        format!("setting hostname {:?}: {e}", req.hostname),
                    ))
                })?;
            } else {
                tracing::info!("not PID 1: leaving the hostname alone");
            }
        }
        if req.host_time_unix_nanos != 0 {
            if self.0.init_mode {
                match crate::clock::sync_to_host(req.host_time_unix_nanos) {
                    Ok(Some(step)) => {
                        tracing::info!(step_ns = step, "the guest's clock was set to the host's")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                            Code::INTERNAL,
                            format!("setting the guest's clock to the host's: {e}"),
                        )))
                    }
                }
            } else {
                tracing::info!("not PID 1: leaving the clock alone");
            }
        }
        if !req.shared_fs_tag.is_empty() || req.shm_size_bytes != 0 {
            if self.0.init_mode {
                mount_pod_filesystems(&req.shared_fs_tag, req.shm_size_bytes)?;
            } else {
                tracing::info!("not PID 1: leaving the pod's shared filesystems alone");
            }
        }
        *self.0.sandbox_id.lock().unwrap_or_else(|p| p.into_inner()) = req.sandbox_id;
        Ok(CreateSandboxResponse::default())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<DestroySandboxResponse> {
        self.0.stopping.store(true, Ordering::SeqCst);
        let removed = self.0.manager.remove_all().await;
        let powering_off = self.0.init_mode;
        if powering_off {
            // main powers off once this reply has had time to go out.
            self.0.power_off.notify_one();
        } else {
            self.0.stopping.store(false, Ordering::SeqCst);
        }
        Ok(DestroySandboxResponse {
            removed_containers: u32::try_from(removed).unwrap_or(u32::MAX),
            powering_off,
            ..Default::default()
        })
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetails> {
        let mut details = tokio::task::spawn_blocking(guest::details)
            .await
            .map_err(internal)?
            .map_err(|e| internal(format!("guest details: {e}")))?;
        details.sandbox_id = self
            .0
            .sandbox_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(details)
    }
}
