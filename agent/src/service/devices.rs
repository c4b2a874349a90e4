//! `Devices`: the virtio device and interrupt report.

use std::sync::Arc;

use pulse_protocols::devices::{
    DeviceReport, DeviceReportRequest, InterruptVector, Provenance, Transport, TransportKind,
    VectorRole, VirtioDevice,
};
use pulse_protocols::devices_ttrpc::Devices;

use super::{internal, Agent};
use crate::devices;

pub struct DevicesService(pub Arc<Agent>);

handlers! {
    impl Devices for DevicesService {
        async fn get_device_report(&self, _: DeviceReportRequest) -> DeviceReport {
            let root = self.0.report_root.clone();
            let report = tokio::task::spawn_blocking(move || devices::collect(&root))
                .await
                .map_err(internal)?
                .map_err(|e| internal(format!("device report: {e}")))?;
            Ok(to_proto(report))
        }
    }
}

/// The report as the API's message.
pub fn to_proto(report: devices::DeviceReport) -> DeviceReport {
    DeviceReport {
        cpus: report.cpus,
        warnings: report.warnings,
        devices: report.devices.into_iter().map(device).collect(),
        ..Default::default()
    }
}

fn device(d: devices::VirtioDeviceReport) -> VirtioDevice {
    let kind = match d.transport {
        devices::TransportKind::Mmio => TransportKind::TRANSPORT_KIND_MMIO,
        devices::TransportKind::Pci => TransportKind::TRANSPORT_KIND_PCI,
        devices::TransportKind::Unknown => TransportKind::TRANSPORT_KIND_UNKNOWN,
    };
    VirtioDevice {
        name: d.name,
        index: d.index,
        device_id: d.device_id,
        device_type: d.device_type,
        vendor: d.vendor,
        driver: d.driver,
        transport: Some(Transport {
            kind: kind.into(),
            address: d.transport_address,
            bus_device: d.bus_device,
            ..Default::default()
        })
        .into(),
        num_queues: d.num_queues,
        block_hw_queues: d.block_hw_queues,
        net_rx_queues: d.net_rx_queues,
        net_tx_queues: d.net_tx_queues,
        subsystem_name: d.subsystem_name,
        msi_enabled: d.msi_enabled,
        msi_vectors: d.msi_vectors,
        vectors: d.vectors.into_iter().map(vector).collect(),
        provenance: d
            .provenance
            .into_iter()
            .map(|f| Provenance {
                field: f.field,
                source: f.source,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn vector(v: devices::Vector) -> InterruptVector {
    let role = match v.role {
        devices::VectorRole::Config => VectorRole::VECTOR_ROLE_CONFIG,
        devices::VectorRole::Queue => VectorRole::VECTOR_ROLE_QUEUE,
        devices::VectorRole::SharedQueues => VectorRole::VECTOR_ROLE_SHARED_QUEUES,
        devices::VectorRole::Legacy => VectorRole::VECTOR_ROLE_LEGACY,
    };
    InterruptVector {
        irq: v.irq,
        name: v.name,
        queue: v.queue,
        role: role.into(),
        chip: v.chip,
        hwirq: v.hwirq,
        trigger: v.trigger,
        per_cpu: v.per_cpu,
        total: v.total,
        ..Default::default()
    }
}
