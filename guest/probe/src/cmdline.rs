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

/// Everything the command line configures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// `probe.cpus=N`: the CPU count to assume when there is no MP table.
    pub cpus: Option<u32>,
    /// `probe.selftest=panic|fail|exception`.
    pub selftest: Selftest,
    /// Problems with the words the probe understands (bad values).
    pub errors: ErrorList,
}

/// Handler of one key: gets the value (empty for a bare `key`), returns an error string.
pub type Handler = fn(&mut Config, &str) -> Result<(), &'static str>;

/// Every key the probe understands, with its handler.
pub const KEYS: &[(&str, Handler)] = &[("probe.cpus", set_cpus), ("probe.selftest", set_selftest)];

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

fn set_cpus(cfg: &mut Config, value: &str) -> Result<(), &'static str> {
    match parse_u64(value) {
        Some(n) if (1..=MAX_CMDLINE_CPUS as u64).contains(&n) => {
            cfg.cpus = Some(n as u32);
            Ok(())
        }
        _ => Err("cmdline: bad probe.cpus"),
    }
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

    #[test]
    fn empty_and_unknown_words() {
        let c = parse("");
        assert_eq!(c.cpus, None);
        assert_eq!(c.selftest, Selftest::None);
        assert!(c.errors.is_empty());
        let c = parse(
            "console=ttyS0 reboot=t  quiet probe.unknown=3 virtio_mmio.device=8K@0xd0000000:5",
        );
        assert_eq!(c.cpus, None);
        assert!(c.errors.is_empty());
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
}
