//! virtio-net (virtio 1.2, 5.1) and virtio-console (5.3) as the probe's drivers use them, and
//! the frames the probe and the VMM's probe harness exchange.

/// Feature bits of virtio-net.
pub mod net_feature {
    pub const MAC: u64 = 1 << 5;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const MQ: u64 = 1 << 22;
}

/// virtio-net configuration space offsets.
pub const NET_CFG_MAC: u64 = 0;
pub const NET_CFG_MAX_PAIRS: u64 = 8;

/// `struct virtio_net_hdr_v1` (with `num_buffers`): what precedes every frame.
pub const NET_HDR_LEN: usize = 12;

/// Control queue: class MQ, command VQ_PAIRS_SET, and the ack values, as the VMM defines them.
pub use pulse_virtio_spec::net::ctrl;

/// The EtherType of the probe's own frames (IEEE local experimental).
pub const PROBE_ETHERTYPE: u16 = 0x88b5;
/// Payload marks: frames the probe sends start with `PROBE_MARK`, frames from the host
/// harness carry `HOST_MARK` at the start of their UDP payload.
pub const PROBE_MARK: &[u8; 6] = b"PPROBE";
pub const HOST_MARK: &[u8; 6] = b"PHOST ";
/// Offset of the UDP payload in an untagged IPv4 frame without IP options.
pub const UDP_PAYLOAD_OFFSET: usize = 14 + 20 + 8;
/// Length of the probe's frames (the Ethernet minimum without FCS).
pub const PROBE_FRAME_LEN: usize = 60;

/// The probe's frame number `seq` on queue pair `pair`, from `mac`: broadcast, EtherType
/// [`PROBE_ETHERTYPE`], then the mark, the pair (u16 BE) and the sequence (u32 BE).
pub fn probe_frame(mac: [u8; 6], pair: u16, seq: u32) -> [u8; PROBE_FRAME_LEN] {
    let mut f = [0u8; PROBE_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
    f[14..20].copy_from_slice(PROBE_MARK);
    f[20..22].copy_from_slice(&pair.to_be_bytes());
    f[22..26].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Whether `frame` (without the virtio-net header) is one of the host harness's: IPv4, UDP,
/// payload starting with [`HOST_MARK`].
pub fn is_host_frame(frame: &[u8]) -> bool {
    frame.len() >= UDP_PAYLOAD_OFFSET + HOST_MARK.len()
        && frame[12..14] == [0x08, 0x00]
        && frame[14] == 0x45
        && frame[23] == 17
        && frame[UDP_PAYLOAD_OFFSET..UDP_PAYLOAD_OFFSET + HOST_MARK.len()] == *HOST_MARK
}

/// virtio-console: what the probe writes on `hvc0`, and how it answers host input.
pub const CONSOLE_HELLO: &[u8] = b"pulse-probe: hello on hvc0\n";
pub const CONSOLE_ECHO_PREFIX: &[u8] = b"echo: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_frames() {
        let f = probe_frame([2, 0, 0, 0, 0, 9], 3, 0x0102_0304);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..20], b"PPROBE");
        assert_eq!(&f[20..26], &[0, 3, 1, 2, 3, 4]);
        assert!(!is_host_frame(&f));
    }

    #[test]
    fn host_frames() {
        let mut f = [0u8; 64];
        f[12] = 0x08;
        f[14] = 0x45;
        f[23] = 17;
        f[UDP_PAYLOAD_OFFSET..UDP_PAYLOAD_OFFSET + 6].copy_from_slice(HOST_MARK);
        assert!(is_host_frame(&f));
        f[23] = 6;
        assert!(!is_host_frame(&f));
        assert!(!is_host_frame(&f[..40]));
    }
}
