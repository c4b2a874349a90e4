//! Parsing of `/proc/interrupts` and `/sys/kernel/irq/<n>/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::ReportError;

/// One numbered interrupt as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqLine {
    pub irq: u32,
    /// Interrupts delivered per CPU, in the column order of the header.
    pub per_cpu: Vec<u64>,
    /// Interrupt chip or domain name (`IO-APIC`, `PCI-MSIX-0000:00:02.0`).
    pub chip: String,
    /// Hardware irq within the chip, when the kernel prints one.
    pub hwirq: String,
    /// `edge` or `level`, when the kernel prints it.
    pub trigger: String,
    /// Names of the handlers registered on the line.
    pub actions: Vec<String>,
}

impl IrqLine {
    pub fn total(&self) -> u64 {
        self.per_cpu.iter().sum()
    }
}

/// The numbered lines of `/proc/interrupts` and the number of CPU columns.
#[derive(Debug, Clone, Default)]
pub struct InterruptTable {
    pub cpus: usize,
    pub lines: Vec<IrqLine>,
}

/// Parses the text of `/proc/interrupts`. Named rows (NMI, LOC, ...) are skipped.
pub fn parse_proc_interrupts(text: &str) -> Result<InterruptTable, ReportError> {
    let mut rows = text.lines();
    let header = rows
        .next()
        .ok_or_else(|| ReportError::Parse("/proc/interrupts is empty".into()))?;
    let cpus = header
        .split_whitespace()
        .filter(|c| c.starts_with("CPU"))
        .count();
    if cpus == 0 {
        return Err(ReportError::Parse(format!(
            "/proc/interrupts header has no CPU columns: {header:?}"
        )));
    }
    let mut lines = Vec::new();
    for row in rows {
        let Some((label, rest)) = row.split_once(':') else {
            continue;
        };
        let Ok(irq) = label.trim().parse::<u32>() else {
            continue; // NMI, LOC, ERR, ...
        };
        lines.push(parse_row(irq, rest, cpus)?);
    }
    Ok(InterruptTable { cpus, lines })
}

fn parse_row(irq: u32, rest: &str, cpus: usize) -> Result<IrqLine, ReportError> {
    let mut tokens = rest.split_whitespace().peekable();
    let mut per_cpu = Vec::with_capacity(cpus);
    for _ in 0..cpus {
        let count = tokens
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| {
                ReportError::Parse(format!(
                    "/proc/interrupts irq {irq}: expected {cpus} counts in {rest:?}"
                ))
            })?;
        per_cpu.push(count);
    }
    let tail: Vec<&str> = tokens.collect();
    // The chip name comes first, then "<hwirq>-<trigger>" (when the irq has a
    // domain), then the action names separated by ", ".
    let split = tail.iter().position(|t| is_hwirq_token(t));
    let (chip, hwirq, trigger, action_tokens) = match split {
        Some(pos) => {
            let (hw, trig) = tail[pos].rsplit_once('-').unwrap_or((tail[pos], ""));
            (
                tail[..pos].join(" "),
                hw.to_string(),
                trig.to_string(),
                &tail[pos + 1..],
            )
        }
        None => (
            tail.first().map(|s| s.to_string()).unwrap_or_default(),
            String::new(),
            String::new(),
            tail.get(1..).unwrap_or(&[]),
        ),
    };
    let actions = action_tokens
        .join(" ")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    Ok(IrqLine {
        irq,
        per_cpu,
        chip,
        hwirq,
        trigger,
        actions,
    })
}

/// `12-edge`, `0-level`, `512000-edge`: a hardware irq and a trigger type.
fn is_hwirq_token(token: &str) -> bool {
    match token.rsplit_once('-') {
        Some((hw, trig)) => {
            !hw.is_empty()
                && hw.chars().all(|c| c.is_ascii_digit())
                && matches!(trig, "edge" | "level" | "fasteoi")
        }
        None => false,
    }
}

/// Details of one irq from `/sys/kernel/irq/<n>/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysIrq {
    pub chip_name: Option<String>,
    pub hwirq: Option<String>,
    pub trigger: Option<String>,
    pub actions: Vec<String>,
    pub per_cpu: Vec<u64>,
}

/// Reads `/sys/kernel/irq/*`; an absent directory gives an empty map.
pub fn read_sys_kernel_irq(dir: &Path) -> BTreeMap<u32, SysIrq> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(irq) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let read = |name: &str| {
            fs::read_to_string(path.join(name))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        out.insert(
            irq,
            SysIrq {
                chip_name: read("chip_name"),
                hwirq: read("hwirq"),
                trigger: read("type"),
                actions: read("actions")
                    .map(|a| a.split(',').map(|s| s.trim().to_string()).collect())
                    .unwrap_or_default(),
                per_cpu: read("per_cpu_count")
                    .map(|c| c.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                    .unwrap_or_default(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "           CPU0       CPU1       
 26:          0         15  IO-APIC   4-edge      ttyS0
 36:          0      44296 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 40:          3          4  IO-APIC  12-edge      virtio0, virtio1
 50:          1          2  dummy-chip
NMI:          0          0   Non-maskable interrupts
ERR:          0
";

    #[test]
    fn parses_numbered_lines_and_skips_named_rows() {
        let table = parse_proc_interrupts(SAMPLE).unwrap();
        assert_eq!(table.cpus, 2);
        assert_eq!(table.lines.len(), 4);
        let l = &table.lines[1];
        assert_eq!(l.irq, 36);
        assert_eq!(l.per_cpu, vec![0, 44296]);
        assert_eq!(l.chip, "PCI-MSIX-0000:00:02.0");
        assert_eq!(l.hwirq, "1");
        assert_eq!(l.trigger, "edge");
        assert_eq!(l.actions, vec!["virtio1-req.0"]);
        assert_eq!(l.total(), 44296);
    }

    #[test]
    fn shared_line_lists_every_action() {
        let table = parse_proc_interrupts(SAMPLE).unwrap();
        assert_eq!(table.lines[2].actions, vec!["virtio0", "virtio1"]);
        assert_eq!(table.lines[2].chip, "IO-APIC");
        assert_eq!(table.lines[2].hwirq, "12");
    }

    #[test]
    fn line_without_domain_or_action() {
        let table = parse_proc_interrupts(SAMPLE).unwrap();
        let l = &table.lines[3];
        assert_eq!(l.chip, "dummy-chip");
        assert!(l.hwirq.is_empty());
        assert!(l.actions.is_empty());
    }

    #[test]
    fn short_row_is_an_error() {
        let err = parse_proc_interrupts("  CPU0 CPU1\n 5: 1\n").unwrap_err();
        assert!(err.to_string().contains("expected 2 counts"), "{err}");
    }

    #[test]
    fn header_without_cpus_is_an_error() {
        assert!(parse_proc_interrupts("garbage\n").is_err());
        assert!(parse_proc_interrupts("").is_err());
    }
}
