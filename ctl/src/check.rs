//! `pulse-ctl check`: whether this host can run Pulse, and why not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The runtime configuration (default: $PULSE_CONFIG, then /etc/pulse/pulse.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

struct Finding {
    ok: bool,
    required: bool,
    what: String,
    detail: String,
}

fn on_path(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Path::new(binary).is_file().then(|| PathBuf::from(binary));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

fn version(binary: &Path, arg: &str) -> String {
    Command::new(binary)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn run(args: CheckArgs) -> Result<bool> {
    let mut findings = Vec::new();
    let mut add = |ok: bool, required: bool, what: &str, detail: String| {
        findings.push(Finding {
            ok,
            required,
            what: what.into(),
            detail,
        })
    };

    let config_path = args
        .config
        .or_else(|| std::env::var_os("PULSE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/pulse/pulse.toml"));
    let config: Option<toml::Value> = match std::fs::read_to_string(&config_path) {
        Ok(text) => match toml::from_str(&text) {
            Ok(v) => {
                add(
                    true,
                    true,
                    "config",
                    format!("{} parses", config_path.display()),
                );
                Some(v)
            }
            Err(e) => {
                add(
                    false,
                    true,
                    "config",
                    format!("{}: {}", config_path.display(), e.message()),
                );
                None
            }
        },
        Err(e) => {
            add(
                false,
                true,
                "config",
                format!(
                    "{}: {e} (copy configs/pulse.toml there, or set PULSE_CONFIG)",
                    config_path.display()
                ),
            );
            None
        }
    };
    let get = |section: &str, key: &str, default: &str| -> String {
        config
            .as_ref()
            .and_then(|c| c.get(section)?.get(key)?.as_str().map(str::to_string))
            .unwrap_or_else(|| default.to_string())
    };
    let backend = get("hypervisor", "backend", "embedded");

    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    add(
        kvm.is_ok(),
        backend == "embedded",
        "/dev/kvm",
        match &kvm {
            Ok(_) => "opens read-write".into(),
            Err(e) => format!("{e}"),
        },
    );
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    add(
        hw,
        backend == "embedded",
        "vmx/svm",
        if hw {
            "hardware virtualization: Linux guests run at full speed".into()
        } else {
            "no VT-x/AMD-V flag: KVM here runs guests through its instruction emulator and cannot boot Linux; use backend = \"qemu\" (TCG)".into()
        },
    );
    let net_queues = config
        .as_ref()
        .and_then(|c| c.get("devices")?.get("net_queues")?.as_integer())
        .unwrap_or(0);
    if net_queues > 0 {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun");
        add(
            tun.is_ok(),
            true,
            "/dev/net/tun",
            match &tun {
                Ok(_) => format!("opens (devices.net_queues = {net_queues}: one tap per pod)"),
                Err(e) => format!("{e} (devices.net_queues = {net_queues} needs a tap per pod)"),
            },
        );
    }
    for (key, default) in [
        ("kernel", pulse_protocols::DEFAULT_GUEST_KERNEL),
        ("initramfs", pulse_protocols::DEFAULT_GUEST_INITRAMFS),
    ] {
        let path = get("vm", key, default);
        let ok = Path::new(&path).is_file();
        add(
            ok,
            true,
            &format!("vm.{key}"),
            if ok {
                path
            } else {
                format!("{path} is missing (make guest builds it)")
            },
        );
    }
    for (binary, why) in [
        (
            "containerd",
            "the container runtime daemon (apt-get install containerd)",
        ),
        (
            "containerd-shim-pulse-v2",
            "the shim, on containerd's PATH (cargo build --release -p pulse-shim)",
        ),
        (
            "mkfs.ext4",
            "container rootfs disks (apt-get install e2fsprogs)",
        ),
    ] {
        match on_path(binary) {
            Some(p) => {
                let v = if binary == "containerd" {
                    version(&p, "--version")
                } else {
                    String::new()
                };
                add(
                    true,
                    true,
                    binary,
                    format!("{} {v}", p.display()).trim().to_string(),
                )
            }
            None => add(false, true, binary, format!("not on PATH: {why}")),
        }
    }
    add(true, false, "backend", backend.clone());
    if backend == "qemu" {
        for (key, default, why) in [
            (
                "binary",
                "qemu-system-x86_64",
                "apt-get install qemu-system-x86",
            ),
            (
                "vhost_vsock_binary",
                "vhost-device-vsock",
                "cargo install vhost-device-vsock",
            ),
        ] {
            let binary = get("qemu", key, default);
            match on_path(&binary) {
                Some(p) => add(true, true, &format!("qemu.{key}"), p.display().to_string()),
                None => add(
                    false,
                    true,
                    &format!("qemu.{key}"),
                    format!("{binary} not found ({why})"),
                ),
            }
        }
    }
    // devices.shared_fs (on unless turned off): one virtiofsd per pod, with either backend.
    let shared_fs = config
        .as_ref()
        .and_then(|c| c.get("devices")?.get("shared_fs")?.as_bool())
        .unwrap_or(true);
    if shared_fs {
        let binary = get("qemu", "virtiofsd_binary", "virtiofsd");
        match on_path(&binary) {
            Some(p) => add(true, true, "qemu.virtiofsd_binary", p.display().to_string()),
            None => add(
                false,
                true,
                "qemu.virtiofsd_binary",
                format!(
                    "{binary} not found (cargo install virtiofsd; devices.shared_fs carries \
                     the containers' bind mounts of host paths)"
                ),
            ),
        }
    }

    let mut can = true;
    for f in &findings {
        let mark = if f.ok {
            "ok  "
        } else if f.required {
            "FAIL"
        } else {
            "warn"
        };
        println!("{mark} {:<26} {}", f.what, f.detail);
        can &= f.ok || !f.required;
    }
    if can {
        let accel = if backend == "qemu" {
            if hw {
                " (qemu, KVM)"
            } else {
                " (qemu, TCG software emulation)"
            }
        } else {
            ""
        };
        println!("\nthis host can run Pulse{accel}");
    } else if backend == "embedded" && !hw {
        println!(
            "\nthis host cannot run Pulse with backend = \"embedded\": it has no VT-x/AMD-V.\n\
             Set [hypervisor] backend = \"qemu\" in {} (QEMU's software emulator), then check again.",
            config_path.display()
        );
    } else {
        println!("\nthis host cannot run Pulse yet: see FAIL above");
    }
    Ok(can)
}
