//! `Sandbox`: set the guest up for a pod, tear it down, describe it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pulse_protocols::sandbox::{
    CreateSandboxRequest, CreateSandboxResponse, DestroySandboxRequest, DestroySandboxResponse,
    GuestDetails, GuestDetailsRequest,
};
use pulse_protocols::sandbox_ttrpc::Sandbox;
use ttrpc::Code;

use super::{internal, status, Agent};
use crate::{guest, shared};
use std::path::Path;

pub struct SandboxService(pub Arc<Agent>);

impl SandboxService {
    /// Whether the agent is the guest's PID 1, whose to set up `what` is; says so when not.
    fn owns_the_guest(&self, what: &str) -> bool {
        if !self.0.init_mode {
            tracing::info!("not PID 1: leaving {what} alone");
        }
        self.0.init_mode
    }
}

/// Sets the guest's clock to the host's time, `unix_nanos`.
fn sync_clock(unix_nanos: i64) -> ttrpc::Result<()> {
    let step = crate::clock::sync_to_host(unix_nanos)
        .map_err(|e| internal(format!("setting the guest's clock to the host's: {e}")))?;
    if let Some(step) = step {
        tracing::info!(step_ns = step, "the guest's clock was set to the host's");
    }
    Ok(())
}

/// The pod's virtio-fs share (`tag` not empty) and shared-memory tmpfs (`shm_bytes` > 0).
fn mount_pod_filesystems(tag: &str, shm_bytes: u64) -> ttrpc::Result<()> {
    if !tag.is_empty() {
        shared::validate_tag(tag).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        shared::mount_shared_fs(tag, Path::new(shared::SHARED_DIR)).map_err(internal)?;
        tracing::info!(
            tag,
            "the pod's virtio-fs share is at {}",
            shared::SHARED_DIR
        );
    }
    if shm_bytes != 0 {
        shared::mount_sandbox_shm(shm_bytes, Path::new(shared::SANDBOX_SHM_DIR))
            .map_err(internal)?;
    }
    Ok(())
}

handlers! {
    impl Sandbox for SandboxService {
        async fn create_sandbox(&self, req: CreateSandboxRequest) -> CreateSandboxResponse {
            if !req.hostname.is_empty() && self.owns_the_guest("the hostname") {
                nix::unistd::sethostname(&req.hostname).map_err(|e| {
                    let msg = format!("setting hostname {:?}: {e}", req.hostname);
                    status(Code::INVALID_ARGUMENT, msg)
                })?;
            }
            if req.host_time_unix_nanos != 0 && self.owns_the_guest("the clock") {
                sync_clock(req.host_time_unix_nanos)?;
            }
            let filesystems = !req.shared_fs_tag.is_empty() || req.shm_size_bytes != 0;
            if filesystems && self.owns_the_guest("the pod's shared filesystems") {
                mount_pod_filesystems(&req.shared_fs_tag, req.shm_size_bytes)?;
            }
            *self.0.sandbox_id.lock().unwrap_or_else(|p| p.into_inner()) = req.sandbox_id;
            Ok(CreateSandboxResponse::default())
        }

        async fn destroy_sandbox(&self, _req: DestroySandboxRequest) -> DestroySandboxResponse {
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

        async fn get_guest_details(&self, _: GuestDetailsRequest) -> GuestDetails {
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
}
