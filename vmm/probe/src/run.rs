//! A probe run: the VM's configuration from the options, the host peers, the report.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use pulse_vmm::boot::KernelSource;
use pulse_vmm::config::VmConfig;
use pulse_vmm::devices::block::{BlockConfig, DEFAULT_QUEUE_SIZE};
use pulse_vmm::devices::console::{ConsoleConfig, ConsoleSink};
use pulse_vmm::devices::net::{NetConfig, TapSource};
use pulse_vmm::devices::serial::SerialOutput;
use pulse_vmm::devices::vsock::VsockConfig;
use pulse_vmm::vm::Vm;

use crate::console_peer::ConsolePeer;
use crate::net_peer::NetPeer;
use crate::report::{Observed, ProbeReport};
use crate::resize::Resizer;
use crate::vsock_peer::{PeerPlan, VsockPeer};
use crate::{
    IrqMode, ProbeError, ProbeOptions, NET_FRAMES, NET_RX, PROBE_ELF, VSOCK_CID, VSOCK_GUEST_PORT,
    VSOCK_HOST_PORT,
};

/// Boots the embedded probe with `options` and collects the report.
pub fn run(options: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let threads_before = pulse_vmm::metrics::process_threads();
    if options.hostile {
        return run_hostile(options, threads_before);
    }
    let started = Instant::now();
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let mut config = probe_config(options, &buffer);
    config.msi = options.offer_msi;
    let mut words = cmdline_start(options);
    // The disk lives as long as the run; the temporary file is removed when it drops.
    let mut disk = None;
    if let Some(queues) = options.blk_queues {
        let per_queue = u64::from(options.requests).div_ceil(2) * 4096;
        let size = (u64::from(queues) * per_queue).max(16 << 20);
        let (file, block) = probe_disk(size, queues)?;
        config.block.push(block);
        disk = Some(file);
        words.push(format!("probe.irq={}", options.irq.word()));
        words.push(format!("probe.requests={}", options.requests));
        if options.blk_resize {
            words.push("probe.blk.resize=1".to_string());
        }
    }
    if options.blk_queues.is_none()
        && (options.vsock.is_some() || options.net_queues.is_some() || options.console)
    {
        words.push(format!("probe.irq={}", options.irq.word()));
    }
    if let Some(pairs) = options.net_queues {
        config.net.push(probe_nic("pprobe", pairs));
        words.push(format!(
            "probe.net.frames={NET_FRAMES} probe.net.rx={NET_RX}"
        ));
    }
    // The sockets live in a private directory that goes with the run.
    let sockets = if options.vsock.is_some() || options.console {
        Some(tempfile::tempdir().map_err(ProbeError::Vsock)?)
    } else {
        None
    };
    let console_path = sockets.as_ref().map(|d| d.path().join("console.sock"));
    if options.console {
        config.console = Some(ConsoleConfig {
            sink: ConsoleSink::UnixSocket(console_path.clone().expect("socket directory")),
        });
        words.push("probe.console.echo=1".to_string());
    }
    let mut peer = None;
    if let (Some(w), Some(dir)) = (options.vsock, &sockets) {
        let uds = dir.path().join("vsock.sock");
        config.vsock = Some(VsockConfig {
            guest_cid: VSOCK_CID,
            uds_path: uds.clone(),
        });
        words.push(format!(
            "probe.vsock.listen={VSOCK_GUEST_PORT} probe.vsock.conns={} probe.vsock.bytes={} \
             probe.vsock.connect={VSOCK_HOST_PORT} probe.vsock.events=1",
            w.conns, w.bytes
        ));
        peer = Some(
            VsockPeer::bind(PeerPlan {
                uds,
                guest_port: VSOCK_GUEST_PORT,
                conns: w.conns,
                bytes: w.bytes,
                listen_port: VSOCK_HOST_PORT,
                resets: 1,
            })
            .map_err(ProbeError::Vsock)?,
        );
    }
    words.extend(options.extra_cmdline.iter().cloned());
    config.cmdline = words.join(" ");

    let mut vm = Vm::start(&config)?;
    let peer = peer.map(|p| p.start(vm.vsock().cloned()));
    let net_peer = options
        .net_queues
        .zip(vm.nets().first().cloned())
        .map(|(pairs, net)| NetPeer::start(net, pairs, NET_RX));
    let console_peer = console_path
        .filter(|_| options.console)
        .map(ConsolePeer::start);
    let resizer = match (options.blk_resize, vm.blocks().first()) {
        (true, Some(block)) => Some(Resizer::start(vm.phase_marks_handle(), block.clone())),
        _ => None,
    };
    let exit = vm.wait(Some(options.timeout));
    let vsock_host = peer.map(|p| p.finish());
    let net_host = net_peer.map(NetPeer::finish);
    let console_host = console_peer.map(ConsolePeer::finish);
    let resize_host = resizer.map(Resizer::finish);
    let observed = Observed::take(&vm, exit, started);
    drop(vm);
    drop(disk);
    drop(sockets);

    let mut report = observed.report(
        options,
        options.irq,
        threads_before,
        &buffer,
        u64::from(options.requests),
    );
    report.ok &= vsock_host.as_ref().is_none_or(|(plan, r)| r.ok(plan))
        && net_host.as_ref().is_none_or(|r| r.ok(NET_FRAMES, NET_RX))
        && console_host.as_ref().is_none_or(|r| r.ok)
        && resize_host.as_ref().is_none_or(|r| r.error.is_none());
    report.vsock_host = vsock_host.map(|(_, r)| r);
    report.net_host = net_host;
    report.console_host = console_host;
    report.resize_host = resize_host;
    Ok(report)
}

/// The hostile mode: every device type, the guest as an adversary (see
/// [`ProbeOptions::hostile`]). The report is the usual one; `ok` also needs every thread a
/// device started to be gone when it should be ([`crate::ThreadReport::balanced`]).
fn run_hostile(
    options: &ProbeOptions,
    threads_before: Option<u64>,
) -> Result<ProbeReport, ProbeError> {
    let started = Instant::now();
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let mut config = probe_config(options, &buffer);
    let (disk, block) = probe_disk(16 << 20, options.blk_queues.unwrap_or(2))?;
    config.block.push(block);
    config.net.push(probe_nic("phost", 1));
    let sockets = tempfile::tempdir().map_err(ProbeError::Vsock)?;
    config.vsock = Some(VsockConfig {
        guest_cid: VSOCK_CID,
        uds_path: sockets.path().join("vsock.sock"),
    });
    config.console = Some(ConsoleConfig {
        sink: ConsoleSink::UnixSocket(sockets.path().join("console.sock")),
    });
    let mut words = cmdline_start(options);
    words.push("probe.irq=msi".to_string());
    words.push("probe.hostile=1".to_string());
    words.extend(options.extra_cmdline.iter().cloned());
    config.cmdline = words.join(" ");

    let mut vm = Vm::start(&config)?;
    let exit = vm.wait(Some(options.timeout));
    let observed = Observed::take(&vm, exit, started);
    drop(vm);
    drop(disk);
    drop(sockets);

    let mut report = observed.report(options, IrqMode::Msi, threads_before, &buffer, 0);
    report.ok &= report.threads.balanced();
    Ok(report)
}

/// The VM both modes start from: the probe's ELF, the options' sizes, the test devices, the
/// serial output captured in `buffer`.
fn probe_config(options: &ProbeOptions, buffer: &Arc<Mutex<Vec<u8>>>) -> VmConfig {
    let mut config = VmConfig::new(KernelSource::Bytes(Arc::from(PROBE_ELF)));
    config.vcpus = options.vcpus;
    config.memory_mib = options.memory_mib;
    config.boot_protocol = options.boot_protocol;
    config.seccomp = options.seccomp;
    config.test_devices = true;
    config.serial = SerialOutput::Capture {
        buffer: buffer.clone(),
        echo: options.echo_serial,
    };
    config
}

/// The command line's first words: the serial console and the vCPUs to bring online.
fn cmdline_start(options: &ProbeOptions) -> Vec<String> {
    vec![
        "console=ttyS0".to_string(),
        format!("probe.cpus={}", options.vcpus),
    ]
}

/// A temporary disk image of `size` bytes (removed when the file drops) and its device.
fn probe_disk(
    size: u64,
    queues: u16,
) -> Result<(tempfile::NamedTempFile, BlockConfig), ProbeError> {
    let file = tempfile::NamedTempFile::new().map_err(ProbeError::Disk)?;
    file.as_file().set_len(size).map_err(ProbeError::Disk)?;
    let block = BlockConfig {
        path: file.path().to_path_buf(),
        read_only: false,
        queues,
        queue_size: DEFAULT_QUEUE_SIZE,
        serial: Some("probe-disk".into()),
    };
    Ok((file, block))
}

/// A NIC on a tap named after `prefix` and this process (so parallel runs do not clash).
fn probe_nic(prefix: &str, queue_pairs: u16) -> NetConfig {
    NetConfig {
        tap: TapSource::Name(format!("{prefix}{}", std::process::id() % 100_000)),
        queue_pairs,
        ..NetConfig::new("")
    }
}
