//! Queue counts as the block and network subsystems see them.

use std::fs;
use std::path::Path;

/// Hardware queues of a blk-mq disk: the entries of `<sys>/block/<disk>/mq`.
pub fn block_hw_queues(sys: &Path, disk: &str) -> Option<u32> {
    count_entries(&sys.join("block").join(disk).join("mq"), |_| true)
}

/// Receive and transmit queues of an interface:
/// `<sys>/class/net/<iface>/queues/{rx,tx}-*`.
pub fn net_queues(sys: &Path, iface: &str) -> Option<(u32, u32)> {
    let dir = sys.join("class/net").join(iface).join("queues");
    let rx = count_entries(&dir, |n| n.starts_with("rx-"))?;
    let tx = count_entries(&dir, |n| n.starts_with("tx-"))?;
    Some((rx, tx))
}

fn count_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> Option<u32> {
    let entries = fs::read_dir(dir).ok()?;
    let n = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .count();
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_subsystem_queues() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        for q in ["0", "1", "2"] {
            fs::create_dir_all(sys.join("block/vdb/mq").join(q)).unwrap();
        }
        for q in ["rx-0", "rx-1", "tx-0", "tx-1", "tx-2"] {
            fs::create_dir_all(sys.join("class/net/eth1/queues").join(q)).unwrap();
        }
        assert_eq!(block_hw_queues(sys, "vdb"), Some(3));
        assert_eq!(net_queues(sys, "eth1"), Some((2, 3)));
        assert_eq!(block_hw_queues(sys, "vdz"), None);
        assert_eq!(net_queues(sys, "eth9"), None);
    }
}
