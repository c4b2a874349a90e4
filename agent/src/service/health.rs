//! `Health`: is the agent up, and which version is it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pulse_protocols::health::{
    CheckRequest, CheckResponse, ServingState, VersionRequest, VersionResponse,
};
use pulse_protocols::health_ttrpc::Health;

use super::Agent;

pub struct HealthService(pub Arc<Agent>);

handlers! {
    impl Health for HealthService {
        async fn check(&self, _: CheckRequest) -> CheckResponse {
            let state = if self.0.stopping.load(Ordering::SeqCst) {
                ServingState::SERVING_STATE_STOPPING
            } else {
                ServingState::SERVING_STATE_SERVING
            };
            Ok(CheckResponse {
                state: state.into(),
                uptime_seconds: self.0.started.elapsed().as_secs(),
                containers: u32::try_from(self.0.manager.count().await).unwrap_or(u32::MAX),
                ..Default::default()
            })
        }

        async fn version(&self, _: VersionRequest) -> VersionResponse {
            Ok(VersionResponse {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                api_version: pulse_protocols::API_VERSION,
                init_mode: self.0.init_mode,
                ..Default::default()
            })
        }
    }
}
