//! How a net device is described: its MAC, its tap, and the string and table forms of its
//! settings in a configuration file.

use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::Deserialize;

use super::DEFAULT_QUEUE_SIZE;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address.
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's random source.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        let r = h.finish().to_le_bytes();
        Self([(r[0] & 0xfe) | 0x02, r[1], r[2], r[3], r[4], r[5]])
    }

    /// Whether it is a group (multicast/broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    /// `aa:bb:cc:dd:ee:ff` (or with `-`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::Mac(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Self(mac))
    }
}

/// Where the tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// A tap by name: opened, or created if absent (and then removed when the device goes).
    Name(String),
    /// An inherited, already open tap descriptor (one queue pair); duplicated, never closed.
    Fd(RawFd),
    /// Inherited descriptors of one multi-queue tap, one per queue pair, duplicated, never
    /// closed. The embedder made the tap and owns its link: it may live in another network
    /// namespace, so the VMM neither brings it up nor sets its MTU (`mtu` is only offered to
    /// the guest).
    Fds(Vec<RawFd>),
}

/// Settings of one virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap.
    pub tap: TapSource,
    /// Queue pairs (1 to [`MAX_QUEUE_PAIRS`](super::MAX_QUEUE_PAIRS); 1 for an inherited descriptor).
    pub queue_pairs: u16,
    /// The guest's MAC; random (locally administered) if not given.
    pub mac: Option<MacAddr>,
    /// Size of each rx/tx queue (a power of two, 2 to 32768).
    pub queue_size: u16,
    /// MTU offered to the guest (VIRTIO_NET_F_MTU) and set on the tap.
    pub mtu: Option<u16>,
    /// Bring the tap's link up (if it is down).
    pub link_up: bool,
}

impl NetConfig {
    /// One queue pair on tap `name`, default queue size, random MAC, link brought up.
    pub fn new(name: &str) -> Self {
        Self {
            tap: TapSource::Name(name.to_string()),
            queue_pairs: 1,
            mac: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            mtu: None,
            link_up: true,
        }
    }
}

/// Why a net device description does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// An option this device does not have.
    #[error("unknown net option '{0}' (tap, fd, queues, mac, queue_size, mtu, up)")]
    UnknownOption(String),
    /// A value that is not a number.
    #[error("net option {key}: '{value}' is not a number")]
    Number {
        /// Option.
        key: String,
        /// Value given.
        value: String,
    },
    /// A malformed MAC address.
    #[error("'{0}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    /// Neither `tap=` nor `fd=`.
    #[error("net device without a tap (tap=NAME or fd=N)")]
    NoTap,
    /// Both `tap=` and `fd=`.
    #[error("net device with both tap= and fd=")]
    TapAndFd,
    /// A boolean option with another value.
    #[error("net option {key}: '{value}' is not on/off")]
    Bool {
        /// Option.
        key: String,
        /// Value given.
        value: String,
    },
}

/// The table form of a net device in a configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetConfigTable {
    tap: Option<String>,
    fd: Option<RawFd>,
    #[serde(alias = "queue_pairs")]
    queues: Option<u16>,
    mac: Option<String>,
    queue_size: Option<u16>,
    mtu: Option<u16>,
    #[serde(alias = "link_up")]
    up: Option<bool>,
}

impl TryFrom<NetConfigTable> for NetConfig {
    type Error = NetConfigError;

    fn try_from(t: NetConfigTable) -> Result<Self, Self::Error> {
        let tap = match (t.tap, t.fd) {
            (Some(_), Some(_)) => return Err(NetConfigError::TapAndFd),
            (Some(name), None) => TapSource::Name(name),
            (None, Some(fd)) => TapSource::Fd(fd),
            (None, None) => return Err(NetConfigError::NoTap),
        };
        Ok(Self {
            tap,
            queue_pairs: t.queues.unwrap_or(1),
            mac: t.mac.as_deref().map(str::parse).transpose()?,
            queue_size: t.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
            mtu: t.mtu,
            link_up: t.up.unwrap_or(true),
        })
    }
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    /// `tap=NAME[,queues=N][,mac=aa:bb:cc:dd:ee:ff][,queue_size=N][,mtu=N][,up=on|off]`, or
    /// `fd=N` instead of `tap=NAME`; a bare first word is the tap name (`tap0,queues=2`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = NetConfigTable::default();
        for (i, part) in s.split(',').enumerate() {
            if part.is_empty() {
                continue;
            }
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let number = |v: &str| {
                v.parse::<u16>().map_err(|_| NetConfigError::Number {
                    key: key.to_string(),
                    value: v.to_string(),
                })
            };
            match key {
                "tap" | "ifname" => t.tap = Some(value.to_string()),
                "fd" => {
                    t.fd = Some(value.parse().map_err(|_| NetConfigError::Number {
                        key: key.to_string(),
                        value: value.to_string(),
                    })?)
                }
                "queues" | "queue_pairs" => t.queues = Some(number(value)?),
                "queue_size" => t.queue_size = Some(number(value)?),
                "mtu" => t.mtu = Some(number(value)?),
                "mac" => t.mac = Some(value.to_string()),
                "up" | "link_up" => {
                    t.up = Some(match value {
                        "" | "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => {
                            return Err(NetConfigError::Bool {
                                key: key.to_string(),
                                value: value.to_string(),
                            })
                        }
                    })
                }
                _ if i == 0 && !part.contains('=') => t.tap = Some(part.to_string()),
                _ => return Err(NetConfigError::UnknownOption(part.to_string())),
            }
        }
        t.try_into()
    }
}

impl<'de> Deserialize<'de> for NetConfig {
    /// Either the string form (see [`NetConfig::from_str`]) or a table with the same keys.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::config::string_or_table::<_, _, NetConfigTable>(
            d,
            "a net device: \"tap=NAME,queues=N\" or a table with tap, queues, ...",
        )
    }
}
