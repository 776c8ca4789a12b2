//! The nftables table a network owns: `inet hv_<network>`.
//!
//! - NAT (libvirt's `virbr0`): masquerade what leaves the subnet for elsewhere; forward out of
//!   the bridge only from the subnet, and into it only replies (`ct state established,related`).
//! - Isolated: nothing is forwarded to or from the bridge; guests still reach the host (DHCP).

use super::{quote, Family, Nft, Result};
use crate::types::Ipv4Cidr;

/// The name of the table a network owns (`hv_` + the network name, `-` as `_`).
pub fn table_name(network: &str) -> String {
    format!("hv_{}", network.replace('-', "_"))
}

/// The body of a NAT network's table for `bridge` serving `subnet`.
pub fn nat_rules(bridge: &str, subnet: Ipv4Cidr) -> String {
    let br = quote(bridge);
    let net = subnet.network();
    format!(
        "  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {net} ip daddr != {net} ip daddr != 224.0.0.0/24 ip daddr != 255.255.255.255 masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {br} oifname {br} accept
    iifname {br} ip saddr {net} accept
    iifname {br} drop
    oifname {br} ip daddr {net} ct state established,related accept
    oifname {br} drop
  }}
"
    )
}

/// The body of an isolated network's table for `bridge`.
pub fn isolated_rules(bridge: &str) -> String {
    let br = quote(bridge);
    format!(
        "  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {br} oifname {br} accept
    iifname {br} drop
    oifname {br} drop
  }}
"
    )
}

/// Installs (or replaces) a NAT network's table.
pub fn apply_nat(nft: &Nft, network: &str, bridge: &str, subnet: Ipv4Cidr) -> Result<String> {
    let name = table_name(network);
    nft.replace_table(Family::Inet, &name, &nat_rules(bridge, subnet))?;
    Ok(name)
}

/// Installs (or replaces) an isolated network's table.
pub fn apply_isolated(nft: &Nft, network: &str, bridge: &str) -> Result<String> {
    let name = table_name(network);
    nft.replace_table(Family::Inet, &name, &isolated_rules(bridge))?;
    Ok(name)
}

/// Removes a network's table (no error if it is gone).
pub fn remove(nft: &Nft, network: &str) -> Result<()> {
    nft.delete_table(Family::Inet, &table_name(network))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_masquerades_the_subnet_only() {
        let r = nat_rules("hvdefault", "192.168.122.1/24".parse().unwrap());
        assert!(r.contains("ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24"));
        assert!(r.contains("masquerade"));
        assert!(r.contains("oifname \"hvdefault\" drop"));
        assert_eq!(table_name("my-net"), "hv_my_net");
    }
}
