//! The one-line JSON report on COM1 (a line that starts with `{"probe":`).

use crate::serial::{self, Serial};
use core::fmt::Write;
use pulse_probe::devreport::DeviceReport;
use pulse_probe::json::Object;
use pulse_probe::{PROBE_NAME, PROBE_VERSION};

/// The fields every report starts with.
pub fn header(o: &mut Object<'_, Serial>, ok: bool) {
    o.str("probe", PROBE_NAME)
        .str("version", PROBE_VERSION)
        .bool("ok", ok);
}

/// Everything the final report says.
pub struct Report<'a> {
    pub ok: bool,
    pub boot: &'a str,
    pub cmdline: &'a str,
    pub cpus_expected: u32,
    pub cpus_online: u32,
    pub apic_ids: &'a [u32],
    pub mptable: bool,
    pub ioapic: Option<u32>,
    pub mem_mib: u64,
    pub irq_selftest: bool,
    /// `probe.irq` as asked (a device may still have fallen back to legacy).
    pub irq_mode: &'a str,
    pub devices: &'a [DeviceReport],
    pub errors: &'a [&'a str],
}

pub fn print(r: &Report<'_>) {
    serial::with(|s| {
        let mut o = Object::new(s);
        header(&mut o, r.ok);
        o.str("boot", r.boot)
            .str("cmdline", r.cmdline)
            .u64("cpus_expected", r.cpus_expected as u64)
            .u64("cpus_online", r.cpus_online as u64)
            .u32_list("apic_ids", r.apic_ids)
            .bool("mptable", r.mptable);
        match r.ioapic {
            Some(a) => o.hex("ioapic", a as u64),
            None => o.null("ioapic"),
        };
        o.u64("mem_mib", r.mem_mib)
            .bool("irq_selftest", r.irq_selftest)
            .str("irq_mode", r.irq_mode);
        {
            let mut devices = o.array("devices");
            for d in r.devices {
                d.write(&mut devices);
            }
            let _ = devices.end();
        }
        o.str_list("errors", r.errors);
        let _ = o.end();
        let _ = s.write_str("\n");
    });
}
