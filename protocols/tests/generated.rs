//! The generated messages encode and decode, and a generated service
//! answers a generated client over a unix socket.

use std::sync::Arc;

use protobuf::Message;
use pulse_protocols::devices::{DeviceReport, InterruptVector, VectorRole, VirtioDevice};
use pulse_protocols::health::{VersionRequest, VersionResponse};
use pulse_protocols::health_ttrpc::{create_health, Health, HealthClient};
use ttrpc::r#async::{Client, Server, TtrpcContext};

#[test]
fn device_report_round_trips() {
    let report = DeviceReport {
        cpus: 2,
        devices: vec![VirtioDevice {
            name: "virtio0".into(),
            num_queues: 4,
            msi_enabled: true,
            vectors: vec![InterruptVector {
                irq: 25,
                role: VectorRole::VECTOR_ROLE_QUEUE.into(),
                per_cpu: vec![812, 130],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let bytes = report.write_to_bytes().unwrap();
    let back = DeviceReport::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, report);
    assert_eq!(
        back.devices[0].vectors[0].role.enum_value(),
        Ok(VectorRole::VECTOR_ROLE_QUEUE)
    );
}

struct Fixed;

#[async_trait::async_trait]
impl Health for Fixed {
    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        Ok(VersionResponse {
            agent_version: "test".into(),
            api_version: pulse_protocols::API_VERSION,
            ..Default::default()
        })
    }
}

#[tokio::test]
async fn generated_service_and_client_talk() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("h.sock").display());
    let mut server = Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_health(Arc::new(Fixed)));
    server.start().await.unwrap();

    let client = HealthClient::new(Client::connect(&addr).await.unwrap());
    let ctx = || ttrpc::context::with_timeout(5_000_000_000);
    let v = client.version(ctx(), &VersionRequest::new()).await.unwrap();
    assert_eq!((v.agent_version.as_str(), v.api_version), ("test", 1));
    // A method the service does not implement is a clear error, not a hang.
    let err = client.check(ctx(), &Default::default()).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("Check is not supported"),
        "{err:?}"
    );
    server.shutdown().await.unwrap();
}
