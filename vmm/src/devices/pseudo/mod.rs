//! Devices for test guests only (the probe, the VMM's own tests): mapped when the VM's config
//! asks for them ([`crate::VmConfig::test_devices`]), never for the shim's guests, so a
//! production guest cannot stop its VM through the debug-exit port or fill the phase-mark list.

pub mod debug_exit;
pub mod phase_marker;
