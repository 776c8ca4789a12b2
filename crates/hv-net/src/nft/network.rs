//! The nftables table a network owns: `inet hv_<network>` ([`table_name`]).
//!
//! - NAT (libvirt's `virbr0`): masquerade what leaves the subnet for elsewhere; forward out of
//!   the bridge only from the subnet, and into it only replies (`ct state established,related`).
//! - Isolated: nothing is forwarded to or from the bridge; guests still reach the host (DHCP).

use nftables::types::{NfChainType, NfHook};

use super::rules::{self as r, ChainSpec, TableSpec, PRIO_FILTER, PRIO_SRCNAT};
use super::{Family, Nft, NftError, Result, TableName};
use crate::types::Ipv4Cidr;
use crate::IfName;

/// The name of the table a network owns: `hv_` + the network name escaped injectively
/// ([`IfName::escaped`]: `my-net` -> `hv_my_2dnet`, `my_net` -> `hv_my_5fnet`). A network
/// name (1 to 13 of `A-Z a-z 0-9 _ -`) is always a valid interface name; anything else is
/// refused.
pub fn table_name(network: &str) -> Result<TableName> {
    let name = IfName::new(network).map_err(|e| NftError::InvalidTable(e.to_string()))?;
    Ok(TableName::from_parts(&[&name.escaped()]))
}

/// A NAT network's table for `bridge` serving `subnet`.
pub fn nat_table(name: TableName, bridge: &IfName, subnet: Ipv4Cidr) -> TableSpec {
    let daddr = || r::payload("ip", "daddr");
    let postrouting = vec![vec![
        r::eq(r::payload("ip", "saddr"), r::prefix(subnet)),
        r::ne(daddr(), r::prefix(subnet)),
        r::ne(daddr(), r::prefix(Ipv4Cidr { addr: [224, 0, 0, 0].into(), prefix: 24 })),
        r::ne(daddr(), r::ip([255, 255, 255, 255].into())),
        r::masquerade(),
    ]];
    let mut reply = vec![r::oifname(bridge), r::eq(daddr(), r::prefix(subnet))];
    reply.extend(r::ct_established(&["established", "related"]));
    let forward = vec![
        vec![r::iifname(bridge), r::oifname(bridge), r::accept()],
        vec![r::iifname(bridge), r::eq(r::payload("ip", "saddr"), r::prefix(subnet)), r::accept()],
        vec![r::iifname(bridge), r::drop()],
        reply,
        vec![r::oifname(bridge), r::drop()],
    ];
    TableSpec {
        family: Family::Inet,
        name,
        chains: vec![
            ChainSpec::base(
                "postrouting",
                NfChainType::NAT,
                NfHook::Postrouting,
                PRIO_SRCNAT,
                postrouting,
            ),
            ChainSpec::base("forward", NfChainType::Filter, NfHook::Forward, PRIO_FILTER, forward),
        ],
    }
}

/// An isolated network's table for `bridge`.
pub fn isolated_table(name: TableName, bridge: &IfName) -> TableSpec {
    let forward = vec![
        vec![r::iifname(bridge), r::oifname(bridge), r::accept()],
        vec![r::iifname(bridge), r::drop()],
        vec![r::oifname(bridge), r::drop()],
    ];
    TableSpec {
        family: Family::Inet,
        name,
        chains: vec![ChainSpec::base(
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            PRIO_FILTER,
            forward,
        )],
    }
}

/// Installs (or replaces) a NAT network's table; returns its name.
pub fn apply_nat(nft: &Nft, network: &str, bridge: &IfName, subnet: Ipv4Cidr) -> Result<TableName> {
    let name = table_name(network)?;
    nft.replace_table(&nat_table(name.clone(), bridge, subnet))?;
    Ok(name)
}

/// Installs (or replaces) an isolated network's table; returns its name.
pub fn apply_isolated(nft: &Nft, network: &str, bridge: &IfName) -> Result<TableName> {
    let name = table_name(network)?;
    nft.replace_table(&isolated_table(name.clone(), bridge))?;
    Ok(name)
}

/// Removes a network's table (no error if it is gone).
pub fn remove(nft: &Nft, network: &str) -> Result<()> {
    nft.delete_table(Family::Inet, &table_name(network)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_masquerades_the_subnet_only() {
        let br = IfName::new("hvdefault").unwrap();
        let t = nat_table(table_name("default").unwrap(), &br, "192.168.122.1/24".parse().unwrap());
        let json = serde_json::to_string(&t.replace()).unwrap();
        assert!(json.contains(r#"{"prefix":{"addr":"192.168.122.0","len":24}}"#), "{json}");
        assert!(json.contains(r#"{"masquerade":null}"#), "{json}");
        assert!(json.contains(r#"{"meta":{"key":"oifname"}},"right":"hvdefault""#), "{json}");
        assert!(json.contains(r#""type":"nat","hook":"postrouting","prio":100"#), "{json}");
    }

    #[test]
    fn table_names_are_injective() {
        assert_eq!(table_name("my-net").unwrap().as_str(), "hv_my_2dnet");
        assert_eq!(table_name("my_net").unwrap().as_str(), "hv_my_5fnet");
        assert_eq!(table_name("n1").unwrap().as_str(), "hv_n1");
        assert!(table_name("x;y").is_err());
    }
}
