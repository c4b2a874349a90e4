//! virtio-console with `driver_ring` playing the guest: output to a file and to a socket
//! client, input from a socket client and a pipe, bad chains.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::sink::{Output, Sink};
use super::worker::{ConsoleWorker, Vring};
use super::*;
use crate::devices::driver_ring::{
    assert_broken_once, assert_resets, desc_len, wait_until, CountingInterrupt, DriverRing,
    DESC_F_NEXT, DESC_F_WRITE,
};
use crate::devices::virtio::{features as vf, Activation, ActiveQueue, VirtioDevice};
use crate::devices::worker::{FaultLog, LoopContext};
use crate::memory::{create_guest_memory, GuestMemoryMmap};

const QSIZE: u16 = 64;
const WAIT: Duration = Duration::from_secs(5);

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

/// The guest side: both rings, their doorbells and a buffer allocator.
struct Guest {
    mem: GuestMemoryMmap,
    rx: DriverRing,
    tx: DriverRing,
    rx_bell: EventFd,
    tx_bell: EventFd,
    next: u64,
    rx_bufs: Vec<(u16, u64)>,
    rx_seen: u16,
}

impl Guest {
    fn new() -> Self {
        let mem = create_guest_memory(16).unwrap();
        Self {
            rx: DriverRing::new(&mem, GuestAddress(0x1_0000), QSIZE),
            tx: DriverRing::new(&mem, GuestAddress(0x2_0000), QSIZE),
            mem,
            rx_bell: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            tx_bell: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            next: 0x10_0000,
            rx_bufs: Vec::new(),
            rx_seen: 0,
        }
    }

    fn queues(&self) -> Vec<ActiveQueue> {
        vec![
            ActiveQueue {
                index: RECEIVEQ,
                queue: self.rx.queue(),
                notifier: self.rx_bell.try_clone().unwrap(),
            },
            ActiveQueue {
                index: TRANSMITQ,
                queue: self.tx.queue(),
                notifier: self.tx_bell.try_clone().unwrap(),
            },
        ]
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next;
        self.next += (len as u64 + 63) & !63;
        at
    }

    /// Publishes `text` as one output chain cut into the given pieces; rings the doorbell.
    fn write(&mut self, pieces: &[&[u8]]) {
        let mut descs = Vec::new();
        for p in pieces {
            let at = self.alloc(p.len());
            self.mem.write_slice(p, GuestAddress(at)).unwrap();
            descs.push((at, desc_len(p.len()), false));
        }
        let head = self.tx.add_chain(&descs);
        self.tx.publish(&[head]);
        self.tx_bell.write(1).unwrap();
    }

    fn post_rx(&mut self, count: usize, len: u32) {
        let mut heads = Vec::new();
        for _ in 0..count {
            let at = self.alloc(len as usize);
            let head = self.rx.add_chain(&[(at, len, true)]);
            self.rx_bufs.push((head, at));
            heads.push(head);
        }
        self.rx.publish(&heads);
        self.rx_bell.write(1).unwrap();
    }

    /// Input the guest received since the last call.
    fn input(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            let (id, len) = self.rx.used_elem(self.rx_seen);
            let at = self
                .rx_bufs
                .iter()
                .rev()
                .find(|b| u32::from(b.0) == id)
                .unwrap()
                .1;
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
            out.extend(buf);
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }
}

fn activate(console: &mut Console, guest: &Guest) -> Arc<CountingInterrupt> {
    let irq = Arc::new(CountingInterrupt::default());
    console
        .activate(Activation::new(
            guest.mem.clone(),
            vf::VERSION_1,
            guest.queues(),
            irq.clone(),
        ))
        .unwrap();
    irq
}

/// A console on the sink `sink` makes of the path of `name` in a fresh temporary directory:
/// the device, that path, and the directory (for the test to keep).
fn console_at(
    name: &str,
    sink: fn(std::path::PathBuf) -> ConsoleSink,
) -> (Console, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let console = Console::new(ConsoleConfig {
        sink: sink(path.clone()),
    })
    .unwrap();
    (console, path, dir)
}

/// A client of the console's socket at `path`, whose reads give up after 5 s.
fn connect(path: &std::path::Path) -> UnixStream {
    let client = UnixStream::connect(path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
}

/// Reads as many bytes as `want` has from the socket and asserts they are `want`.
fn expect_output(client: &mut UnixStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, want, "{}", String::from_utf8_lossy(&got));
}

fn file_contents(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn output_reaches_a_file() {
    let (mut console, path, _dir) = console_at("console.log", ConsoleSink::File);
    let mut guest = Guest::new();
    let irq = activate(&mut console, &guest);
    guest.write(&[b"hello "]);
    guest.write(&[b"wor", b"", b"ld\n"]);
    assert!(wait_until(WAIT, || file_contents(&path) == "hello world\n"));
    assert!(wait_until(WAIT, || guest.tx.used_idx() == 2));
    let tx = &console.counters()[1];
    assert_eq!(load(&tx.chains), 2);
    assert_eq!(load(&tx.bytes), 12);
    assert_eq!(load(&tx.errors), 0);
    assert!(irq.queue(1) >= 1);
    assert_eq!(load(&tx.interrupts), irq.queue(1));
    assert_eq!(console.completed_requests(), vec![0, 2]);
}

#[test]
fn unix_socket_client_gets_output_and_gives_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let mut console: Console = Console::new(
        format!("unix:{}", path.display())
            .parse::<ConsoleConfig>()
            .unwrap(),
    )
    .unwrap();
    let mut guest = Guest::new();
    let _irq = activate(&mut console, &guest);
    // Output before anyone connects is kept for the first client.
    guest.write(&[b"boot messages\n"]);
    assert!(wait_until(WAIT, || guest.tx.used_idx() == 1));
    let mut client = connect(&path);
    expect_output(&mut client, b"boot messages\n");
    guest.write(&[b"$ "]);
    expect_output(&mut client, b"$ ");
    // Input: typed before the guest has posted buffers, it waits in the socket.
    client.write_all(b"ls -l\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(guest.rx.used_idx(), 0);
    guest.post_rx(4, 64);
    let mut input = Vec::new();
    assert!(wait_until(WAIT, || {
        input.extend(guest.input());
        input == b"ls -l\n"
    }));
    assert_eq!(load(&console.counters()[0].bytes), 6);
    assert_eq!(console.connections(), 1);

    // A second client replaces the first.
    let mut second = connect(&path);
    assert!(wait_until(WAIT, || console.connections() == 2));
    guest.write(&[b"to the second\n"]);
    expect_output(&mut second, b"to the second\n");
    let mut rest = Vec::new();
    assert_eq!(
        client.read_to_end(&mut rest).unwrap(),
        0,
        "first client closed"
    );

    // The client goes away and comes back; the device keeps working.
    drop(second);
    guest.write(&[b"nobody\n"]);
    assert!(wait_until(WAIT, || guest.tx.used_idx() == 4));
    let mut third = connect(&path);
    expect_output(&mut third, b"nobody\n");
    third.write_all(b"x").unwrap();
    assert!(wait_until(WAIT, || guest.input() == b"x"));
    drop(console);
    assert!(!path.exists(), "socket file removed with the device");
}

#[test]
fn socket_backlog_is_bounded() {
    let (mut console, path, _dir) = console_at("c.sock", ConsoleSink::UnixSocket);
    let mut guest = Guest::new();
    let _irq = activate(&mut console, &guest);
    // 40 chains of 4 KiB with nobody connected: only the last 64 KiB are kept.
    for i in 0..40u8 {
        let chunk = vec![b'a' + i % 26; 4096];
        guest.write(&[&chunk]);
    }
    assert!(wait_until(WAIT, || guest.tx.used_idx() == 40));
    let tx = &console.counters()[1];
    assert_eq!(load(&tx.dropped), 40 * 4096 - sink::BACKLOG_BYTES as u64);
    let mut client = connect(&path);
    let mut got = vec![0u8; sink::BACKLOG_BYTES];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got[0], b'a' + 24, "oldest kept chunk");
    assert_eq!(*got.last().unwrap(), b'a' + 13, "newest chunk (39 % 26)");
}

#[test]
fn socket_paths() {
    let dir = tempfile::tempdir().unwrap();
    // A stale socket file is replaced.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let console = Console::new(ConsoleConfig {
        sink: ConsoleSink::UnixSocket(stale.clone()),
    })
    .unwrap();
    assert!(UnixStream::connect(&stale).is_ok());
    // A socket someone listens on is refused, and so is a path that is not a socket.
    let err = Console::new(ConsoleConfig {
        sink: ConsoleSink::UnixSocket(stale.clone()),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("stale.sock") && err.contains("another process"),
        "{err}"
    );
    drop(console);
    assert!(!stale.exists());
    let file = dir.path().join("regular");
    std::fs::write(&file, b"keep me").unwrap();
    let err = Console::new(ConsoleConfig {
        sink: ConsoleSink::UnixSocket(file.clone()),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let err = Console::new(ConsoleConfig {
        sink: ConsoleSink::File(dir.path().join("no/such/dir/log")),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no/such/dir/log"), "{err}");
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array, valid for the call.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

#[test]
fn pipe_input_waits_for_buffers_and_is_split_to_fit() {
    let (read_end, mut write_end) = pipe();
    let mut console = Console::with_sink(
        ConsoleConfig::default(),
        Sink::with_input(Output::None, read_end),
    );
    let mut guest = Guest::new();
    let _irq = activate(&mut console, &guest);
    write_end.write_all(b"abcde").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(guest.rx.used_idx(), 0, "no buffer yet");
    guest.post_rx(3, 2);
    let mut got = Vec::new();
    assert!(wait_until(WAIT, || {
        got.extend(guest.input());
        got.len() == 5
    }));
    assert_eq!(got, b"abcde");
    assert_eq!(guest.rx.used_idx(), 3, "2 + 2 + 1 bytes");
    // Output to `none` is counted as dropped.
    guest.write(&[b"gone"]);
    assert!(wait_until(WAIT, || load(&console.counters()[1].dropped) == 4));
    // End of input: the device keeps serving output.
    drop(write_end);
    guest.post_rx(1, 16);
    guest.write(&[b"more"]);
    assert!(wait_until(WAIT, || guest.tx.used_idx() == 2));
}

#[test]
fn bad_chains_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let mut guest = Guest::new();
    let (read_end, mut write_end) = pipe();
    let out = std::fs::File::create(&path).unwrap();
    let counters: Vec<Arc<QueueCounters>> = vec![Arc::default(), Arc::default()];
    let vring = |index: u16, ring: &DriverRing, c: &Arc<QueueCounters>| Vring {
        index,
        queue: ring.queue(),
        notifier: EventFd::new(0).unwrap(),
        counters: c.clone(),
    };
    let irq = Arc::new(CountingInterrupt::default());
    let mut ctx = LoopContext::new(irq.clone(), Arc::new(FaultLog::new("console"))).unwrap();
    let mut worker = ConsoleWorker::new(
        guest.mem.clone(),
        vring(0, &guest.rx, &counters[0]),
        vring(1, &guest.tx, &counters[1]),
        Sink::with_input(Output::File(out), read_end),
        Arc::default(),
    );
    let at = guest.alloc(0x2_0000);
    guest.mem.write_slice(b"BAD!", GuestAddress(at)).unwrap();
    // Output: a writable descriptor, a buffer outside memory, a loop, a chain over 64 KiB, a
    // head outside the table; then a good one.
    guest.tx.write_desc(0, at, 4, DESC_F_WRITE, 0);
    guest.tx.write_desc(1, 0xff_0000_0000, 4, 0, 0);
    guest.tx.write_desc(2, at, 4, DESC_F_NEXT, 3);
    guest.tx.write_desc(3, at, 4, DESC_F_NEXT, 2);
    guest.tx.write_desc(4, at, 0x1_0001, 0, 0);
    guest.tx.publish(&[0, 1, 2, 4, 900]);
    worker.process_tx(&mut ctx);
    assert_eq!(load(&counters[1].errors), 5);
    assert_eq!(
        guest.tx.used_idx(),
        4,
        "the head outside the table has no used entry"
    );
    guest.tx.recycle();
    for _ in 0..5 {
        guest.tx.add_chain(&[(0, 0, false)]);
    }
    guest.write(&[b"good\n"]);
    worker.process_tx(&mut ctx);
    assert_eq!(std::fs::read(&path).unwrap(), b"good\n");
    assert_eq!(load(&counters[1].bytes), 5);
    // Input: a readable descriptor, a buffer outside memory; then a good one.
    write_end.write_all(b"in").unwrap();
    guest.rx.write_desc(0, at, 16, 0, 0);
    guest.rx.write_desc(1, 0xff_0000_0000, 16, DESC_F_WRITE, 0);
    guest.rx.write_desc(2, at + 0x100, 16, DESC_F_WRITE, 0);
    guest.rx.publish(&[0, 1, 2]);
    guest.rx_bufs.push((2, at + 0x100));
    worker.process_rx(&mut ctx);
    assert_eq!(load(&counters[0].errors), 2);
    assert_eq!(guest.rx.used_idx(), 3);
    assert_eq!(guest.rx.used_elem(0).1, 0);
    assert_eq!(guest.rx.used_elem(1).1, 0);
    guest.rx_seen = 2;
    assert_eq!(guest.input(), b"in");
    assert!(worker.rx_blocked(), "no buffer left: waits for the guest");
    // More input stays in the pipe until a buffer comes.
    write_end.write_all(b"later").unwrap();
    worker.process_rx(&mut ctx);
    assert_eq!(guest.rx.used_idx(), 3);
    guest.rx.write_desc(3, at + 0x200, 16, DESC_F_WRITE, 0);
    guest.rx.publish(&[3]);
    guest.rx_bufs.push((3, at + 0x200));
    worker.process_rx(&mut ctx);
    assert_eq!(guest.input(), b"later");
}

#[test]
fn reset_keeps_the_sink() {
    let (mut console, path, _dir) = console_at("console.sock", ConsoleSink::UnixSocket);
    let mut client = connect(&path);
    for round in 0..3u8 {
        let mut guest = Guest::new();
        let _irq = activate(&mut console, &guest);
        guest.write(&[&[b'0' + round]]);
        let mut b = [0u8; 1];
        client.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'0' + round);
        console.reset();
    }
    assert_eq!(console.connections(), 1, "the client stayed connected");
}

#[test]
fn config_space_and_features() {
    let console = Console::new(ConsoleConfig::default()).unwrap();
    assert_eq!(console.device_type(), 3);
    assert_eq!(console.queue_max_sizes(), vec![QUEUE_SIZE; 2]);
    assert_eq!(console.queue_name(0), "input");
    assert_eq!(console.queue_name(1), "output");
    let f = console.features();
    assert_ne!(f & vf::VERSION_1, 0);
    assert_eq!(f & 0b111, 0, "no SIZE, MULTIPORT, EMERG_WRITE");
    assert_eq!(f & (vf::RING_RESET | vf::NOTIF_CONFIG_DATA), 0);
    let mut c = [0xffu8; CONFIG_LEN];
    console.read_config(0, &mut c);
    assert_eq!(&c[0..4], &[0; 4], "cols, rows");
    assert_eq!(
        u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        1,
        "max_nr_ports"
    );
    let guest = Guest::new();
    let mut console = console;
    let err = console
        .activate(Activation::new(
            guest.mem.clone(),
            vf::VERSION_1,
            guest.queues().into_iter().take(1).collect(),
            Arc::new(CountingInterrupt::default()),
        ))
        .err()
        .unwrap();
    assert!(matches!(err, ActivateError::QueueNotReady(1)));
}

#[test]
fn sink_strings_parse() {
    for (s, sink) in [
        ("file:/tmp/x.log", ConsoleSink::File("/tmp/x.log".into())),
        ("stdio", ConsoleSink::Stdout),
        ("stdout", ConsoleSink::Stdout),
        (
            "unix:/run/c.sock",
            ConsoleSink::UnixSocket("/run/c.sock".into()),
        ),
        ("none", ConsoleSink::None),
    ] {
        assert_eq!(s.parse::<ConsoleSink>().unwrap(), sink);
        let back: ConsoleSink = sink.to_string().parse().unwrap();
        assert_eq!(back, sink);
    }
    for bad in ["", "file:", "unix:", "tcp:1.2.3.4:5", "stdin"] {
        let err = bad.parse::<ConsoleSink>().unwrap_err().to_string();
        assert!(
            err.contains(&format!("'{bad}'")) && err.contains("file:PATH"),
            "{err}"
        );
    }
    #[derive(serde::Deserialize)]
    struct File {
        a: ConsoleConfig,
        b: ConsoleConfig,
    }
    let f: File = toml::from_str(
        r#"
        a = "unix:/tmp/c.sock"
        b = { sink = "file:/tmp/c.log" }
        "#,
    )
    .unwrap();
    assert_eq!(f.a.sink, ConsoleSink::UnixSocket("/tmp/c.sock".into()));
    assert_eq!(f.b.sink, ConsoleSink::File("/tmp/c.log".into()));
    let err = toml::from_str::<File>("a = \"tcp:x\"\nb = \"none\"")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("invalid console sink"), "{err}");
    let err = toml::from_str::<File>("a = { sink = \"none\", colour = 1 }\nb = \"none\"")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn an_avail_index_past_the_transmit_ring_breaks_the_queue_and_the_device_still_stops() {
    let mut console = Console::new(ConsoleConfig {
        sink: ConsoleSink::None,
    })
    .unwrap();
    let guest = Guest::new();
    let irq = activate(&mut console, &guest);
    // transmitq0's avail idx: ring base + 16 bytes per descriptor + 2.
    let avail_idx = GuestAddress(0x2_0000 + 16 * u64::from(QSIZE) + 2);
    guest.mem.write_obj(QSIZE + 5, avail_idx).unwrap();
    guest.tx_bell.write(1).unwrap();
    assert!(wait_until(WAIT, || irq.needs_reset_requests() == 1));
    guest.tx_bell.write(1).unwrap();
    let faults = console.faults().clone();
    assert_resets(console);
    assert_broken_once(&irq, &faults);
}
