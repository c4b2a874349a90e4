//! The API's messages from what [`pulse_netlink`] reads: the agent lists the guest's
//! interfaces with them, the shim the pod's interfaces it carries into the guest.

use pulse_netlink::Address;

use crate::network::IpAddress;

/// The addresses of the link with index `link`, out of a dump of every link's addresses.
pub fn link_addresses(addresses: &[Address], link: u32) -> Vec<IpAddress> {
    addresses
        .iter()
        .filter(|a| a.index == link)
        .map(|a| IpAddress {
            address: a.ip.to_string(),
            prefix_len: u32::from(a.prefix_len),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn keeps_the_links_addresses_in_order() {
        let address = |index, ip: [u8; 4], prefix_len| Address {
            index,
            ip: Ipv4Addr::from(ip),
            prefix_len,
        };
        let dump = [
            address(2, [10, 0, 0, 2], 24),
            address(3, [192, 168, 1, 5], 16),
            address(2, [10, 0, 1, 2], 32),
        ];
        let listed: Vec<(String, u32)> = link_addresses(&dump, 2)
            .into_iter()
            .map(|a| (a.address, a.prefix_len))
            .collect();
        assert_eq!(
            listed,
            [("10.0.0.2".to_string(), 24), ("10.0.1.2".to_string(), 32)]
        );
        assert!(link_addresses(&dump, 9).is_empty());
    }
}
