//! The virtio-console driver (port 0, the guest console `hvc0`) and its workload, run on the
//! BSP: write a hello line, and, when asked, wait for one line of host input and write it
//! back after `echo: `.

use super::buf::{dma_addr, read_byte, write_bytes, DmaBufs};
use super::queue::Virtq;
use super::{idle, mmio, settle, IrqPacer};
use crate::arch::{self, Deadline};
use pulse_probe::devreport::ConsoleResult;
use pulse_probe::net_spec::{CONSOLE_ECHO_PREFIX, CONSOLE_HELLO};

const RX_SLOTS: usize = 8;
const RX_BUF: usize = 256;
const LINE_MAX: usize = 200;
const WORKLOAD_MS: u64 = 30_000;

#[repr(C, align(4096))]
struct Buffers {
    rx: [[u8; RX_BUF]; RX_SLOTS],
    hello: [u8; 64],
    echo: [u8; 256],
}

#[link_section = ".noinit.console_bufs"]
static BUFS: DmaBufs<Buffers> = DmaBufs::new();

fn rx_addr(slot: usize) -> u64 {
    dma_addr!(BUFS, rx[slot])
}

/// The two queues of port 0 and their doorbells.
#[derive(Clone, Copy)]
pub struct Queues {
    pub rx: Virtq,
    pub tx: Virtq,
    pub doorbells: [(u64, u32); 2],
}

/// Runs the console workload. `pacers` pace receiveq0 and transmitq0.
pub fn run(q: &Queues, echo: bool, pacers: &mut [IrqPacer; 2]) -> ConsoleResult {
    let mut r = ConsoleResult {
        echo_asked: echo,
        ..ConsoleResult::default()
    };
    let kick = |i: usize| mmio::ring_doorbell(q.doorbells[i].0, q.doorbells[i].1);
    let mut rx_avail = 0u16;
    for slot in 0..RX_SLOTS {
        q.rx.post_writable(&mut rx_avail, slot as u16, rx_addr(slot), RX_BUF as u32);
    }
    q.rx.publish(rx_avail);
    kick(0);

    let (hello, echo_buf) = (dma_addr!(BUFS, hello), dma_addr!(BUFS, echo));
    // With host input asked for, the hello waits for it: the host side is connected then
    // and sees every line.
    let send_hello = |tx_avail: &mut u16| {
        write_bytes(hello, CONSOLE_HELLO);
        q.tx.set_desc(0, hello, CONSOLE_HELLO.len() as u32, 0, 0);
        q.tx.put_avail(*tx_avail, 0);
        *tx_avail = tx_avail.wrapping_add(1);
        q.tx.publish(*tx_avail);
        kick(1);
    };
    let mut tx_avail = 0u16;
    if !echo {
        send_hello(&mut tx_avail);
    }

    let mut line = [0u8; LINE_MAX];
    let mut line_len = 0;
    let (mut rx_used, mut tx_used) = (0u16, 0u16);
    let mut deadline = Deadline::after_ms(WORKLOAD_MS);
    loop {
        let mut progress = false;
        while q.tx.pop_used(&mut tx_used).is_some() {
            r.writes_done += 1;
            progress = true;
        }
        let mut reposted = false;
        while let Some((id, len)) = q.rx.pop_used(&mut rx_used) {
            progress = true;
            let slot = id as usize;
            if slot >= RX_SLOTS {
                continue;
            }
            for k in 0..(len as usize).min(RX_BUF) {
                let b = read_byte(rx_addr(slot) + k as u64);
                r.bytes_received += 1;
                if r.line_received || !echo {
                    continue;
                }
                if b == b'\n' {
                    r.line_received = true;
                } else if line_len < LINE_MAX {
                    line[line_len] = b;
                    line_len += 1;
                }
            }
            q.rx.push_avail(&mut rx_avail, slot as u16);
            reposted = true;
        }
        if reposted {
            q.rx.publish(rx_avail);
            kick(0);
        }
        if r.line_received && !r.echo_sent {
            send_hello(&mut tx_avail);
            let n = CONSOLE_ECHO_PREFIX.len();
            write_bytes(echo_buf, CONSOLE_ECHO_PREFIX);
            write_bytes(echo_buf + n as u64, &line[..line_len]);
            write_bytes(echo_buf + (n + line_len) as u64, b"\n");
            q.tx.set_desc(1, echo_buf, (n + line_len + 1) as u32, 0, 0);
            q.tx.push_avail(&mut tx_avail, 1);
            q.tx.publish(tx_avail);
            kick(1);
            r.echo_sent = true;
        }
        arch::interrupt_window();
        pacers[0].rearm(&q.rx, rx_used);
        pacers[1].rearm(&q.tx, tx_used);
        let wanted_writes = 1 + u32::from(echo);
        if (r.writes_done >= wanted_writes && (!echo || r.echo_sent)) || deadline.expired() {
            break;
        }
        if !progress {
            idle();
        }
    }
    settle();
    r
}
