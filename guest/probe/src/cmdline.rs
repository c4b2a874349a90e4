//! The probe's command-line keys.
//!
//! The command line is a list of words separated by ASCII whitespace; a word is `key` or
//! `key=value`. Only the keys in [`KEYS`] mean anything to the probe; every other word
//! (`console=ttyS0`, `reboot=t`, ...) is ignored. A key may repeat; the handler decides what
//! that means (the simple ones keep the last value).
//!
//! Adding a key: add a field to [`Config`], write a `fn(&mut Config, &str) -> Result<(), &str>`
//! handler, and list it in [`KEYS`].

use crate::errors::ErrorList;

/// What `probe.selftest=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Selftest {
    #[default]
    None,
    /// Panic on purpose (exercises the panic handler, exit code 4).
    Panic,
    /// Report `ok:false` (exit code 1).
    Fail,
    /// Execute `ud2` (exercises the exception handlers, exit code 3).
    Exception,
}

/// What `probe.irq=` asks the virtio driver to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IrqMode {
    /// One MSI per queue (the MSI extension), falling back to legacy when not offered.
    #[default]
    Msi,
    /// The device's single IOAPIC line.
    Legacy,
}

impl IrqMode {
    pub fn name(self) -> &'static str {
        match self {
            IrqMode::Msi => "msi",
            IrqMode::Legacy => "legacy",
        }
    }
}

/// One `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` word (Linux's syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmioDevice {
    pub size: u64,
    pub base: u64,
    pub irq: u32,
}

/// Most `virtio_mmio.device` words kept.
pub const MAX_MMIO_DEVICES: usize = 8;

/// Virtio requests per queue when `probe.requests` is not given.
pub const DEFAULT_REQUESTS: u32 = 32;
/// Largest `probe.requests` accepted (bounds the run time and the disk area used).
pub const MAX_REQUESTS: u32 = 65536;

/// What the vsock workload does (`probe.vsock.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockPlan {
    /// `probe.vsock.listen=PORT`: the guest port the echo server listens on.
    pub listen_port: u32,
    /// `probe.vsock.conns=N`: host connections to echo before the workload is done.
    pub conns: u32,
    /// `probe.vsock.bytes=B`: bytes each of them sends (and gets back).
    pub bytes: u32,
    /// `probe.vsock.connect=PORT`: one guest-initiated connection to this host port.
    pub connect_port: Option<u32>,
    /// `probe.vsock.events=N`: transport-reset events to wait for at the end.
    pub events: u32,
}

impl Default for VsockPlan {
    fn default() -> Self {
        Self {
            listen_port: 1234,
            conns: 0,
            bytes: 65536,
            connect_port: None,
            events: 0,
        }
    }
}

/// What the net workload does (`probe.net.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetPlan {
    /// `probe.net.frames=F`: frames sent on every tx queue (at most 32).
    pub frames: u32,
    /// `probe.net.rx=R`: host frames every rx queue must receive.
    pub rx: u32,
}

impl Default for NetPlan {
    fn default() -> Self {
        Self { frames: 16, rx: 4 }
    }
}

/// Most host connections the vsock echo server tracks at once.
pub const MAX_VSOCK_CONNS: u32 = 128;

/// Everything the command line configures.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `probe.cpus=N`: the CPU count to assume when there is no MP table.
    pub cpus: Option<u32>,
    /// `probe.selftest=panic|fail|exception`.
    pub selftest: Selftest,
    /// `virtio_mmio.device=` words, in command-line order.
    pub devices: [MmioDevice; MAX_MMIO_DEVICES],
    pub n_devices: usize,
    /// `probe.irq=msi|legacy`.
    pub irq: IrqMode,
    /// `probe.requests=R` as given (see [`Config::requests_per_queue`]).
    pub requests: u32,
    /// `probe.masktest=1`.
    pub masktest: bool,
    pub vsock: VsockPlan,
    pub net: NetPlan,
    /// `probe.console.echo=1`: wait for a line of host input on hvc0 and echo it.
    pub console_echo: bool,
    /// `probe.blk.resize=1`: after the workload, ask the host (phase mark 3) to change the
    /// disk and wait for the configuration-change interrupt and the new capacity.
    pub blk_resize: bool,
    /// `probe.hostile=1`: instead of the workloads, break every rule of the transport and the
    /// devices, then check that the devices still work where the rules say they should.
    pub hostile: bool,
    /// Problems with the words the probe understands (bad values).
    pub errors: ErrorList,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cpus: None,
            selftest: Selftest::None,
            devices: [MmioDevice::default(); MAX_MMIO_DEVICES],
            n_devices: 0,
            irq: IrqMode::Msi,
            requests: DEFAULT_REQUESTS,
            masktest: false,
            vsock: VsockPlan::default(),
            net: NetPlan::default(),
            console_echo: false,
            blk_resize: false,
            hostile: false,
            errors: ErrorList::new(),
        }
    }
}

impl Config {
    pub fn devices(&self) -> &[MmioDevice] {
        &self.devices[..self.n_devices]
    }

    /// Requests actually run per queue: half writes, half reads, so an even number, at least 2.
    pub fn requests_per_queue(&self) -> u32 {
        (self.requests & !1).max(2)
    }
}

/// Handler of one key: gets the value (empty for a bare `key`), returns an error string.
pub type Handler = fn(&mut Config, &str) -> Result<(), &'static str>;

/// Every key the probe understands, with its handler. The simple ones, a number in a range or
/// a flag, are written in place.
pub const KEYS: &[(&str, Handler)] = &[
    ("probe.cpus", |c, v| {
        let n = bounded(v, 1..=MAX_CMDLINE_CPUS.into(), "cmdline: bad probe.cpus")?;
        c.cpus = Some(n);
        Ok(())
    }),
    ("probe.selftest", set_selftest),
    ("virtio_mmio.device", add_device),
    ("probe.irq", set_irq),
    ("probe.requests", |c, v| {
        c.requests = bounded(v, 1..=MAX_REQUESTS.into(), "cmdline: bad probe.requests")?;
        Ok(())
    }),
    ("probe.masktest", |c, v| {
        c.masktest = flag(v, "cmdline: bad probe.masktest")?;
        Ok(())
    }),
    ("probe.vsock.listen", |c, v| {
        c.vsock.listen_port = bounded(v, PORTS, "cmdline: bad probe.vsock.listen")?;
        Ok(())
    }),
    ("probe.vsock.conns", |c, v| {
        let range = 0..=MAX_VSOCK_CONNS.into();
        c.vsock.conns = bounded(v, range, "cmdline: bad probe.vsock.conns")?;
        Ok(())
    }),
    ("probe.vsock.bytes", |c, v| {
        c.vsock.bytes = bounded(v, 1..=16 << 20, "cmdline: bad probe.vsock.bytes")?;
        Ok(())
    }),
    ("probe.vsock.connect", |c, v| {
        c.vsock.connect_port = Some(bounded(v, PORTS, "cmdline: bad probe.vsock.connect")?);
        Ok(())
    }),
    ("probe.vsock.events", |c, v| {
        c.vsock.events = bounded(v, 0..=16, "cmdline: bad probe.vsock.events")?;
        Ok(())
    }),
    ("probe.net.frames", |c, v| {
        c.net.frames = bounded(v, 1..=32, "cmdline: bad probe.net.frames")?;
        Ok(())
    }),
    ("probe.net.rx", |c, v| {
        c.net.rx = bounded(v, 0..=4096, "cmdline: bad probe.net.rx")?;
        Ok(())
    }),
    ("probe.console.echo", |c, v| {
        c.console_echo = flag(v, "cmdline: bad probe.console.echo")?;
        Ok(())
    }),
    ("probe.blk.resize", |c, v| {
        c.blk_resize = flag(v, "cmdline: bad probe.blk.resize")?;
        Ok(())
    }),
    ("probe.hostile", |c, v| {
        c.hostile = flag(v, "cmdline: bad probe.hostile")?;
        Ok(())
    }),
];

/// vsock ports a key may name: all but 0 and the wildcard `u32::MAX`.
const PORTS: core::ops::RangeInclusive<u64> = 1..=u32::MAX as u64 - 1;

/// Largest value `probe.cpus` accepts (xAPIC ids are 8 bits).
pub const MAX_CMDLINE_CPUS: u32 = 255;

/// Parses a whole command line.
pub fn parse(cmdline: &str) -> Config {
    let mut cfg = Config::default();
    for word in cmdline.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        if let Some((_, handler)) = KEYS.iter().find(|(k, _)| *k == key) {
            if let Err(e) = handler(&mut cfg, value) {
                cfg.errors.push(e);
            }
        }
    }
    cfg
}

fn set_selftest(cfg: &mut Config, value: &str) -> Result<(), &'static str> {
    cfg.selftest = match value {
        "panic" => Selftest::Panic,
        "fail" => Selftest::Fail,
        "exception" => Selftest::Exception,
        "none" => Selftest::None,
        _ => return Err("cmdline: bad probe.selftest"),
    };
    Ok(())
}

fn add_device(cfg: &mut Config, value: &str) -> Result<(), &'static str> {
    let dev = parse_mmio_device(value).ok_or("cmdline: bad virtio_mmio.device")?;
    if cfg.n_devices == MAX_MMIO_DEVICES {
        return Err("cmdline: too many virtio_mmio.device words");
    }
    cfg.devices[cfg.n_devices] = dev;
    cfg.n_devices += 1;
    Ok(())
}

/// `<size>@<base>:<irq>[:<id>]`: size with an optional K/M/G suffix, base and irq as numbers
/// (decimal or 0x hex); the platform-device id Linux allows at the end is ignored.
pub fn parse_mmio_device(value: &str) -> Option<MmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split_once(':').map_or(rest, |(irq, _id)| irq);
    let size = parse_size(size)?;
    let base = parse_u64(base)?;
    let irq = u32::try_from(parse_u64(irq)?).ok()?;
    // A window must at least hold the registers, and must not wrap.
    if size < 0x100 || base.checked_add(size).is_none() {
        return None;
    }
    Some(MmioDevice { size, base, irq })
}

/// A number with an optional binary suffix (K, M, G; either case), like Linux's memparse.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let v = parse_u64(digits)?;
    v.checked_mul(1 << shift)
}

fn set_irq(cfg: &mut Config, value: &str) -> Result<(), &'static str> {
    cfg.irq = match value {
        "msi" => IrqMode::Msi,
        "legacy" => IrqMode::Legacy,
        _ => return Err("cmdline: bad probe.irq"),
    };
    Ok(())
}

/// A flag: `1` or the bare key for true, `0` for false, or `err`.
fn flag(value: &str, err: &'static str) -> Result<bool, &'static str> {
    match value {
        "1" | "" => Ok(true),
        "0" => Ok(false),
        _ => Err(err),
    }
}

/// A number in `range`, or `err`.
fn bounded(
    value: &str,
    range: core::ops::RangeInclusive<u64>,
    err: &'static str,
) -> Result<u32, &'static str> {
    parse_u64(value)
        .filter(|n| range.contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(err)
}

/// Parses a decimal number or a `0x` hexadecimal one; `None` on anything else or overflow.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cmdline` parsed, checked to have no errors.
    fn parse_clean(cmdline: &str) -> Config {
        let c = parse(cmdline);
        assert!(c.errors.is_empty(), "{cmdline}: {:?}", c.errors.as_slice());
        c
    }

    #[test]
    fn empty_and_unknown_words() {
        let c = parse_clean("");
        assert_eq!(c.cpus, None);
        assert_eq!(c.selftest, Selftest::None);
        let c = parse_clean(
            "console=ttyS0 reboot=t  quiet probe.unknown=3 virtio_mmio.device=8K@0xd0000000:5",
        );
        assert_eq!(c.cpus, None);
        assert_eq!(c.irq, IrqMode::Msi);
        assert_eq!(c.requests_per_queue(), 32);
        assert!(!c.masktest);
        assert_eq!(
            c.devices(),
            &[MmioDevice {
                size: 8192,
                base: 0xd000_0000,
                irq: 5
            }]
        );
    }

    #[test]
    fn mmio_devices() {
        let c = parse_clean(
            "virtio_mmio.device=8K@0xd0000000:5 virtio_mmio.device=4096@0xd0002000:6:1 \
             virtio_mmio.device=1M@3489677312:7",
        );
        let bases: std::vec::Vec<_> = c
            .devices()
            .iter()
            .map(|d| (d.base, d.size, d.irq))
            .collect();
        assert_eq!(
            bases,
            [
                (0xd000_0000, 8192, 5),
                (0xd000_2000, 4096, 6),
                (0xd000_4000, 1 << 20, 7)
            ]
        );
        for bad in [
            "virtio_mmio.device=8K@0xd0000000",
            "virtio_mmio.device=8X@0xd0000000:5",
            "virtio_mmio.device=@0xd0000000:5",
            "virtio_mmio.device=8K@zz:5",
            "virtio_mmio.device=8K@0xd0000000:-1",
            "virtio_mmio.device=16@0xd0000000:5",
            "virtio_mmio.device=8K@0xffffffffffffffff:5",
            "virtio_mmio.device",
        ] {
            let c = parse(bad);
            assert_eq!(c.n_devices, 0, "{bad}");
            assert_eq!(c.errors.as_slice(), &["cmdline: bad virtio_mmio.device"]);
        }
        let many = "virtio_mmio.device=8K@0xd0000000:5 ".repeat(9);
        let c = parse(&many);
        assert_eq!(c.n_devices, MAX_MMIO_DEVICES);
        assert_eq!(
            c.errors.as_slice(),
            &["cmdline: too many virtio_mmio.device words"]
        );
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("0x10k"), Some(16 << 10));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("K"), None);
    }

    #[test]
    fn driver_options() {
        let c = parse_clean("probe.irq=legacy probe.requests=64 probe.masktest=1");
        assert_eq!(c.irq, IrqMode::Legacy);
        assert_eq!(c.requests_per_queue(), 64);
        assert!(c.masktest);
        // odd counts round down to even, never below 2
        assert_eq!(parse("probe.requests=33").requests_per_queue(), 32);
        assert_eq!(parse("probe.requests=1").requests_per_queue(), 2);
        assert_eq!(parse("probe.requests=3").requests_per_queue(), 2);
        for (bad, msg) in [
            ("probe.irq=msix", "cmdline: bad probe.irq"),
            ("probe.requests=0", "cmdline: bad probe.requests"),
            ("probe.requests=x", "cmdline: bad probe.requests"),
            ("probe.requests=65537", "cmdline: bad probe.requests"),
            ("probe.masktest=2", "cmdline: bad probe.masktest"),
        ] {
            let c = parse(bad);
            assert_eq!(c.errors.as_slice(), &[msg], "{bad}");
            assert_eq!(c.irq, IrqMode::Msi);
            assert_eq!(c.requests_per_queue(), 32);
            assert!(!c.masktest);
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse("probe.cpus=2").cpus, Some(2));
        assert_eq!(parse("a=b\tprobe.cpus=0x10\n").cpus, Some(16));
        assert_eq!(parse("probe.cpus=3 probe.cpus=4").cpus, Some(4));
        for bad in [
            "probe.cpus=0",
            "probe.cpus=",
            "probe.cpus",
            "probe.cpus=x",
            "probe.cpus=256",
        ] {
            let c = parse(bad);
            assert_eq!(c.cpus, None, "{bad}");
            assert_eq!(c.errors.as_slice(), &["cmdline: bad probe.cpus"]);
        }
        // a key is matched whole, never by prefix
        assert_eq!(parse("probe.cpusx=2").cpus, None);
    }

    #[test]
    fn selftest() {
        assert_eq!(parse("probe.selftest=panic").selftest, Selftest::Panic);
        assert_eq!(parse("probe.selftest=fail").selftest, Selftest::Fail);
        assert_eq!(
            parse("probe.selftest=exception").selftest,
            Selftest::Exception
        );
        let c = parse("probe.selftest=boom");
        assert_eq!(c.selftest, Selftest::None);
        assert_eq!(c.errors.as_slice(), &["cmdline: bad probe.selftest"]);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("0xfeE00000"), Some(0xfee0_0000));
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("-1"), None);
    }

    #[test]
    fn vsock_keys() {
        let c = parse_clean("probe.vsock.listen=2000 probe.vsock.conns=100 probe.vsock.bytes=65536 probe.vsock.connect=5000 probe.vsock.events=1");
        assert_eq!(
            c.vsock,
            VsockPlan {
                listen_port: 2000,
                conns: 100,
                bytes: 65536,
                connect_port: Some(5000),
                events: 1
            }
        );
        let c = parse("probe.vsock.conns=129 probe.vsock.bytes=0 probe.vsock.listen=x");
        assert_eq!(
            c.errors.as_slice(),
            &[
                "cmdline: bad probe.vsock.conns",
                "cmdline: bad probe.vsock.bytes",
                "cmdline: bad probe.vsock.listen"
            ]
        );
        assert_eq!(c.vsock, VsockPlan::default());
    }

    #[test]
    fn hostile_key() {
        assert!(!parse("").hostile);
        assert!(parse("probe.hostile=1").hostile);
        assert!(parse("probe.hostile").hostile);
        let c = parse("probe.hostile=yes");
        assert!(!c.hostile);
        assert_eq!(c.errors.as_slice(), &["cmdline: bad probe.hostile"]);
    }

    #[test]
    fn net_and_console_keys() {
        let c = parse_clean("probe.net.frames=8 probe.net.rx=2 probe.console.echo=1");
        assert_eq!(c.net, NetPlan { frames: 8, rx: 2 });
        assert!(c.console_echo);
        let c = parse("probe.net.frames=33 probe.console.echo=yes");
        assert_eq!(
            c.errors.as_slice(),
            &[
                "cmdline: bad probe.net.frames",
                "cmdline: bad probe.console.echo"
            ]
        );
    }

    #[test]
    fn every_key_names_itself_when_its_value_is_bad() {
        for (key, _) in KEYS {
            let word = std::format!("{key}=bogus");
            let c = parse(&word);
            let expected = std::format!("cmdline: bad {key}");
            assert_eq!(c.errors.as_slice(), &[expected.as_str()], "{word}");
        }
    }

    #[test]
    fn flags_and_bounds() {
        let c =
            parse_clean("probe.masktest probe.blk.resize=1 probe.console.echo=0 probe.cpus=255");
        assert!(c.masktest && c.blk_resize && !c.console_echo);
        assert_eq!(c.cpus, Some(255));
        let c = parse("probe.blk.resize=2 probe.cpus=256 probe.requests=0 probe.vsock.listen=0");
        assert!(!c.blk_resize);
        assert_eq!(c.cpus, None);
        assert_eq!(c.errors.as_slice().len(), 4);
        let c = parse("probe.vsock.connect=4294967294 probe.vsock.listen=4294967295");
        assert_eq!(c.vsock.connect_port, Some(u32::MAX - 1));
        assert_eq!(c.errors.as_slice(), &["cmdline: bad probe.vsock.listen"]);
    }
}
