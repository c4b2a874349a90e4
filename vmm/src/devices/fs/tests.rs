//! The device against a real virtiofsd (`cargo install virtiofsd`, or `PULSE_VIRTIOFSD`):
//! FUSE requests the test writes into guest memory as a driver would are answered by the
//! backend through the rings, with the interrupt relayed (legacy) or sent straight to the
//! queue's irqfd (MSI). Without virtiofsd (or not as root) these tests say so and pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::driver_ring::{wait_until, CountingInterrupt, DriverRing};
use crate::devices::virtio::ActiveQueue;
use crate::interrupts::Interrupt;
use crate::memory::{create_shared_guest_memory, GuestMemoryMmap};

// The same lookup as the VM test's.
#[path = "../../../tests/common/virtiofsd.rs"]
mod virtiofsd_binary;

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
/// Guest addresses of the test's rings and buffers.
const RING_BASE: [u64; 2] = [0x10_0000, 0x20_0000];
const REQUEST: u64 = 0x40_0000;
const REPLY: u64 = 0x50_0000;

fn virtiofsd() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: virtiofsd's namespace sandbox needs root");
        return None;
    }
    virtiofsd_binary::find()
}

/// virtiofsd serving `shared` on a socket in `dir`.
struct Backend {
    child: Child,
    socket: PathBuf,
}

impl Backend {
    fn start(binary: &Path, dir: &Path, shared: &Path) -> Backend {
        let socket = dir.join("fs.sock");
        let child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(shared)
            .args(["--cache", "auto", "--sandbox", "namespace"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { child, socket }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A driver in front of the device: one ring per queue in shared guest memory.
struct Driver {
    mem: GuestMemoryMmap,
    rings: Vec<DriverRing>,
    kicks: Vec<EventFd>,
    unique: u64,
}

impl Driver {
    fn new(mem: &GuestMemoryMmap) -> Self {
        Self {
            mem: mem.clone(),
            rings: RING_BASE
                .iter()
                .map(|b| DriverRing::new(mem, GuestAddress(*b), 16))
                .collect(),
            kicks: Vec::new(),
            unique: 0,
        }
    }

    /// The queues to activate the device with (the driver keeps each doorbell's clone).
    fn queues(&mut self) -> Vec<ActiveQueue> {
        let (queues, kicks) = (0u16..)
            .zip(&self.rings)
            .map(|(i, ring)| ring.active_queue(i))
            .unzip();
        self.kicks = kicks;
        queues
    }

    /// Activates `fs` on this driver's rings.
    fn activate(
        &mut self,
        fs: &mut Fs,
        features: u64,
        irq: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        fs.activate(Activation::new(
            self.mem.clone(),
            features,
            self.queues(),
            irq,
        ))
    }

    /// Sends one FUSE request on the first request queue and waits for its reply; returns the
    /// reply's bytes (`len` as the device wrote it).
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let len = 40 + u32::try_from(body.len()).unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&len.to_le_bytes());
        header.extend_from_slice(&opcode.to_le_bytes());
        header.extend_from_slice(&self.unique.to_le_bytes());
        header.extend_from_slice(&nodeid.to_le_bytes());
        header.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
        header.extend_from_slice(body);
        self.mem
            .write_slice(&header, GuestAddress(REQUEST))
            .unwrap();
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(REPLY))
            .unwrap();
        let ring = &mut self.rings[1];
        let before = ring.used_idx();
        let head = ring.add_chain(&[(REQUEST, len, false), (REPLY, 4096, true)]);
        ring.publish(&[head]);
        self.kicks[1].write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ring.used_idx() == before {
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not answer opcode {opcode}"
            );
            // Not sleep: a vCPU thread's filter has no nanosleep (the confined test below).
            std::thread::yield_now();
        }
        let (id, written) = ring.used_elem(before);
        assert_eq!(id, u32::from(head));
        ring.recycle();
        let mut reply = vec![0u8; written as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY))
            .unwrap();
        assert!(reply.len() >= 16, "reply of {} bytes", reply.len());
        let error = i32::from_le_bytes(reply[4..8].try_into().unwrap());
        assert_eq!(error, 0, "opcode {opcode} failed: errno {}", -error);
        assert_eq!(
            u64::from_le_bytes(reply[8..16].try_into().unwrap()),
            self.unique
        );
        reply
    }

    fn init(&mut self) {
        let mut body = Vec::new();
        for v in [7u32, 31, 0x2_0000, 0, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&[0u8; 44]);
        let reply = self.request(FUSE_INIT, 0, &body);
        assert_eq!(u32::from_le_bytes(reply[16..20].try_into().unwrap()), 7);
    }

    /// The size of `name` in the shared directory's root, as LOOKUP answers it.
    fn lookup_size(&mut self, name: &str) -> u64 {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let reply = self.request(FUSE_LOOKUP, 1, &body);
        // fuse_out_header (16), fuse_entry_out: 40 bytes, then fuse_attr: ino, size.
        u64::from_le_bytes(reply[64..72].try_into().unwrap())
    }
}

/// The interrupt of a guest with MSI: queue 1's vector is `irqfd`.
struct MsiInterrupt {
    counting: CountingInterrupt,
    irqfd: EventFd,
}

impl Interrupt for MsiInterrupt {
    fn trigger(&self, queue: u16) {
        self.counting.trigger(queue);
    }
    fn trigger_config(&self) {
        self.counting.trigger_config();
    }
    fn needs_reset(&self) {
        self.counting.needs_reset();
    }
    fn queue_irqfd(&self, queue: u16) -> Option<EventFd> {
        (queue == 1).then(|| self.irqfd.try_clone().unwrap())
    }
}

/// A virtiofsd sharing a fresh temporary directory (which goes after the backend).
struct Virtiofsd {
    backend: Backend,
    _dir: tempfile::TempDir,
}

impl Virtiofsd {
    /// None where there is no virtiofsd to test with.
    fn start() -> Option<Self> {
        let binary = virtiofsd()?;
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::start(&binary, dir.path(), &shared_dir(dir.path()));
        Some(Self { backend, _dir: dir })
    }

    /// A device on this backend, tagged `pulse-shared`.
    fn device(&self) -> Fs {
        Fs::new(FsConfig::new(&self.backend.socket, "pulse-shared")).unwrap()
    }
}

fn shared_dir(dir: &Path) -> PathBuf {
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "hello from the host\n").unwrap();
    shared
}

#[test]
fn configuration_is_checked() {
    FsConfig::new("/run/fs.sock", "pulse-shared")
        .validate()
        .unwrap();
    let mut c = FsConfig::new("/run/fs.sock", "");
    assert!(c.validate().unwrap_err().contains("tag"));
    c.tag = "t".repeat(MAX_TAG_LEN + 1);
    assert!(c.validate().is_err());
    c.tag = "a b".into();
    assert!(c.validate().is_err());
    c.tag = "ok".into();
    c.request_queues = 0;
    assert!(c.validate().unwrap_err().contains("request_queues"));
    c.request_queues = 1;
    c.queue_size = 100;
    assert!(c.validate().unwrap_err().contains("queue_size"));
    let err = Fs::new(FsConfig::new("/nonexistent/fs.sock", "t"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/fs.sock"), "{err}");
}

#[test]
fn the_backend_answers_through_the_rings_and_the_interrupt_is_relayed() {
    let Some(virtiofsd) = Virtiofsd::start() else {
        return;
    };
    let mut fs = virtiofsd.device();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), [DEFAULT_QUEUE_SIZE; 2]);
    assert_eq!(fs.queue_name(1), "requests.0");
    assert_ne!(fs.features() & features::VERSION_1, 0);
    assert_eq!(
        fs.features() & !GUEST_FEATURES,
        0,
        "nothing but ring features"
    );
    let mut config = [0u8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..12], b"pulse-shared");
    assert_eq!(config[12..36], [0u8; 24]);
    assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);

    let mem = create_shared_guest_memory(16).unwrap();
    let mut driver = Driver::new(&mem);
    let irq = Arc::new(CountingInterrupt::default());
    // Without EVENT_IDX: this driver never moves used_event, so with it the backend would
    // interrupt once only.
    let features = fs.features() & !features::RING_EVENT_IDX;
    driver.activate(&mut fs, features, irq.clone()).unwrap();
    // Each reply's interrupt reaches Interrupt::trigger through the relay (waiting for it
    // before the next request: an eventfd adds up writes the relay has not read yet).
    let relayed_after = |before: u64| {
        let relayed = wait_until(Duration::from_secs(5), || irq.queue(1) > before);
        assert!(relayed, "no interrupt relayed");
        irq.queue(1)
    };
    driver.init();
    let n = relayed_after(0);
    assert_eq!(driver.lookup_size("hello"), 20);
    relayed_after(n);
    assert_eq!(irq.queue(0), 0, "the high-priority queue was not used");

    // A reset stops the rings; the device starts again on fresh ones.
    fs.reset();
    let mut driver = Driver::new(&mem);
    driver.activate(&mut fs, features, irq.clone()).unwrap();
    driver.init();
    assert_eq!(driver.lookup_size("hello"), 20);
    drop(fs);
}

#[test]
fn with_msi_the_backend_interrupts_the_queues_irqfd_directly() {
    let Some(virtiofsd) = Virtiofsd::start() else {
        return;
    };
    let mut fs = virtiofsd.device();
    let mem = create_shared_guest_memory(16).unwrap();
    let mut driver = Driver::new(&mem);
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let irq = Arc::new(MsiInterrupt {
        counting: CountingInterrupt::default(),
        irqfd: irqfd.try_clone().unwrap(),
    });
    let features = fs.features();
    driver.activate(&mut fs, features, irq.clone()).unwrap();
    driver.init();
    assert_eq!(driver.lookup_size("hello"), 20);
    assert!(
        irqfd.read().unwrap() >= 1,
        "the backend wrote the queue's irqfd"
    );
    assert_eq!(
        irq.counting.queue(1),
        0,
        "nothing passed through the VMM for queue 1"
    );
}

#[test]
fn anonymous_guest_memory_is_refused_at_activation() {
    let Some(virtiofsd) = Virtiofsd::start() else {
        return;
    };
    let mut fs = virtiofsd.device();
    let mem = crate::memory::create_guest_memory(16).unwrap();
    let mut driver = Driver::new(&mem);
    let features = fs.features();
    let err = driver
        .activate(&mut fs, features, Arc::new(CountingInterrupt::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not file-backed"), "{err}");
    let mut driver_queues = driver.queues();
    driver_queues.pop();
    let err = fs
        .activate(Activation::new(
            create_shared_guest_memory(16).unwrap(),
            features,
            driver_queues,
            Arc::new(CountingInterrupt::default()),
        ))
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady(1)), "{err}");
}

const CONFINED_CHILD_ENV: &str = "PULSE_FS_CONFINED_CHILD";
const CONFINED_CHILD_TEST: &str = "devices::fs::tests::confined_child_entry";

/// The child of [`activation_and_reset_run_under_the_vcpu_filter`]: the embedder's thread
/// connects (as `Vm::start` does), then a thread confined as a vCPU (filters on) activates the
/// device, drives two requests and resets it, as a guest's register writes make a vCPU do;
/// the relay starts through the spawner under the `fs` filter. A forbidden call ends the
/// process with status 159.
#[test]
fn confined_child_entry() {
    let Ok(socket) = std::env::var(CONFINED_CHILD_ENV) else {
        return;
    };
    let _lease = confine::prepare(confine::Policy { seccomp: true }).unwrap();
    let fs = Fs::new(FsConfig::new(socket, "pulse-shared")).unwrap();
    let mem = create_shared_guest_memory(16).unwrap();
    let thread = confine::spawn(ThreadKind::Vcpu, "vcpu-fs-test".into(), move || {
        let mut fs = fs;
        let mut driver = Driver::new(&mem);
        let irq = Arc::new(CountingInterrupt::default());
        let features = fs.features() & !features::RING_EVENT_IDX;
        driver.activate(&mut fs, features, irq.clone()).unwrap();
        driver.init();
        let size = driver.lookup_size("hello");
        fs.reset();
        drop(fs);
        size
    })
    .unwrap();
    let size = thread.join().unwrap();
    println!("FS-CHILD-DONE size={size}");
}

#[test]
fn activation_and_reset_run_under_the_vcpu_filter() {
    let Some(virtiofsd) = Virtiofsd::start() else {
        return;
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            CONFINED_CHILD_TEST,
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CONFINED_CHILD_ENV, &virtiofsd.backend.socket)
        // A backtrace would open files to symbolize it (see docs/confinement.md).
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("FS-CHILD-DONE size=20"),
        "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
}
