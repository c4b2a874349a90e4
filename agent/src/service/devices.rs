//! `Devices`: the virtio device and interrupt report.

use std::sync::Arc;

use pulse_protocols::devices::{DeviceReport, DeviceReportRequest};
use pulse_protocols::devices_ttrpc::Devices;

use super::{internal, Agent};
use crate::devices;

pub struct DevicesService(pub Arc<Agent>);

handlers! {
    impl Devices for DevicesService {
        async fn get_device_report(&self, _: DeviceReportRequest) -> DeviceReport {
            let root = self.0.report_root.clone();
            tokio::task::spawn_blocking(move || devices::collect(&root))
                .await
                .map_err(internal)?
                .map_err(|e| internal(format!("device report: {e}")))
        }
    }
}
