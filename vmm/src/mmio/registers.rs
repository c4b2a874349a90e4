//! Register offsets of a virtio-mmio window, and the values of the MSI extension: the map in
//! pulse-virtio-spec, which the probe guest's driver shares.

pub use pulse_virtio_spec::mmio::*;
