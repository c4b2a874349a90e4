//! Lookups in the device report that every reader of it (the agent's tests,
//! the guest tests, the shim) would otherwise write itself.

use crate::devices::{DeviceReport, VirtioDevice};

impl DeviceReport {
    /// The device the guest kernel named `name` (`virtio0`).
    pub fn device_named(&self, name: &str) -> Option<&VirtioDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The first device of a type (`block`, `net`, `vsock`, ...).
    pub fn device_of_type(&self, device_type: &str) -> Option<&VirtioDevice> {
        self.devices.iter().find(|d| d.device_type == device_type)
    }
}

impl VirtioDevice {
    /// Where the value of `field` (`msi_enabled`, `num_queues`, ...) came from.
    pub fn source_of(&self, field: &str) -> Option<&str> {
        self.provenance
            .iter()
            .find(|p| p.field == field)
            .map(|p| p.source.as_str())
    }
}

#[cfg(test)]
mod tests {
    use crate::devices::{DeviceReport, Provenance, VirtioDevice};

    fn device(name: &str, device_type: &str) -> VirtioDevice {
        VirtioDevice {
            name: name.into(),
            device_type: device_type.into(),
            provenance: vec![Provenance {
                field: "num_queues".into(),
                source: format!("/sys/block/{name}/mq"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn finds_devices_by_name_or_type_and_sources_by_field() {
        let report = DeviceReport {
            devices: vec![
                device("virtio0", "block"),
                device("virtio1", "net"),
                device("virtio2", "block"),
            ],
            ..Default::default()
        };
        assert_eq!(
            report
                .device_named("virtio1")
                .map(|d| d.device_type.as_str()),
            Some("net")
        );
        assert!(report.device_named("virtio9").is_none());
        assert_eq!(
            report.device_of_type("block").map(|d| d.name.as_str()),
            Some("virtio0")
        );
        assert!(report.device_of_type("vsock").is_none());
        let blk = report.device_named("virtio2").unwrap();
        assert_eq!(blk.source_of("num_queues"), Some("/sys/block/virtio2/mq"));
        assert_eq!(blk.source_of("msi_enabled"), None);
    }
}
