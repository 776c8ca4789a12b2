//! The forwarding policy of tenant networks and floating IPs, as nftables tables built with
//! hv-net's typed rule helpers.
//!
//! Each tenant network's table (hv-net's name for it, `inet hv_<network>`, so hv-net's own
//! destroy removes it) replaces hv-net's `isolated`/`nat` table with one that also lets in
//! what floating IPs map to its ports:
//!
//! - frames within the bridge pass; nothing else enters or leaves it, except
//! - with a router (NAT): the subnet out, masqueraded, and the replies back in;
//! - the fixed addresses that floating IPs map to: new flows to them (after DNAT).
//!
//! Tables of different networks each drop what leaves or enters their bridge, so one
//! project's network never reaches another's (a drop in any table is final).
//!
//! Each tenant network's bridged traffic is tracked in a conntrack zone of its own (chain
//! `zone`, at raw priority, before conntrack: [`hv_net::nft::port::conns::bridge_zone`]), as Neutron gives each network's
//! ports theirs: projects may use the same subnet, and without zones a connection of one
//! network would match a packet of another with the same addresses and ports as
//! `established`, past the receiver's security groups. Only frames bridged between the
//! network's ports get the zone: what is addressed to the bridge's own MAC (the gateway, so
//! what is routed: a router's NAT, a floating IP) stays in zone 0 both ways, where the
//! other direction of those connections is seen.
//!
//! An external network's table lets everything through its bridge (it is the outside).
//! Floating IPs are one `ip hv_fip` table: DNAT of the floating address to the fixed one in
//! prerouting, SNAT of the fixed address to the floating one in postrouting (ahead of the
//! networks' masquerade), and each floating address is put on the external bridge as a /32 so
//! the host answers ARP for it.

use std::net::Ipv4Addr;

use hv_net::nft::rules::{
    self as r, ChainSpec, Rule, TableSpec, PRIO_FILTER, PRIO_RAW, PRIO_SRCNAT,
};
use hv_net::nft::{Family, Nft, TableName};
use hv_net::{IfName, Ipv4Cidr};
use nftables::expr::Expression;
use nftables::stmt::{NATFamily, Statement, NAT};
use nftables::types::{NfChainType, NfHook};

use crate::error::{Error, Result};

fn net_err(e: impl std::fmt::Display) -> Error {
    Error::Network(e.to_string())
}

/// The policy table of a tenant network whose bridged traffic is tracked in `zone`.
pub(crate) fn network_table(
    network: &str,
    bridge: &IfName,
    subnet: Ipv4Cidr,
    nat: bool,
    inbound: &[Ipv4Addr],
    zone: u16,
) -> Result<TableSpec> {
    let name = hv_net::nft::network::table_name(network).map_err(net_err)?;
    let saddr = || r::payload("ip", "saddr");
    let daddr = || r::payload("ip", "daddr");
    let mut forward: Vec<Rule> = vec![vec![r::iifname(bridge), r::oifname(bridge), r::accept()]];
    // Under br_netfilter a bridged frame's packet type reads `host` on the IP hooks, so the
    // host's own traffic is told apart by the bridge's MAC (which hv-net pins).
    let to_host = r::text(hv_net::network::bridge_mac(network).to_string());
    let bridged = vec![
        r::iifname(bridge),
        r::ne(r::payload("ether", "daddr"), to_host),
        r::ct_zone_set(zone),
    ];
    let mut chains = vec![ChainSpec::base(
        "zone",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_RAW,
        vec![bridged],
    )];
    if nat {
        forward.push(vec![r::iifname(bridge), r::eq(saddr(), r::prefix(subnet)), r::accept()]);
        let mut reply = vec![r::oifname(bridge), r::eq(daddr(), r::prefix(subnet))];
        reply.extend(r::ct_established(&["established", "related"]));
        forward.push(reply);
        chains.push(ChainSpec::base(
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            PRIO_SRCNAT,
            vec![vec![
                r::eq(saddr(), r::prefix(subnet)),
                r::ne(daddr(), r::prefix(subnet)),
                r::ne(daddr(), r::prefix(Ipv4Cidr { addr: [224, 0, 0, 0].into(), prefix: 4 })),
                r::masquerade(),
            ]],
        ));
    }
    if !inbound.is_empty() {
        let set = r::set(inbound.iter().map(|ip| r::ip(*ip)).collect());
        forward.push(vec![r::oifname(bridge), r::eq(daddr(), set.clone()), r::accept()]);
        // Their replies go out (SNAT to the floating address).
        forward.push(vec![r::iifname(bridge), r::eq(saddr(), set), r::accept()]);
    }
    forward.push(vec![r::iifname(bridge), r::drop()]);
    forward.push(vec![r::oifname(bridge), r::drop()]);
    chains.push(ChainSpec::base(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
        forward,
    ));
    Ok(TableSpec { family: Family::Inet, name, chains })
}

/// The table of an external network: its bridge forwards freely (it is the outside).
pub(crate) fn external_table(network: &str, bridge: &IfName) -> Result<TableSpec> {
    let name = hv_net::nft::network::table_name(network).map_err(net_err)?;
    let forward =
        vec![vec![r::iifname(bridge), r::accept()], vec![r::oifname(bridge), r::accept()]];
    Ok(TableSpec {
        family: Family::Inet,
        name,
        chains: vec![ChainSpec::base(
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            PRIO_FILTER,
            forward,
        )],
    })
}

fn nat(addr: Ipv4Addr) -> Option<NAT<'static>> {
    Some(NAT {
        addr: Some(Expression::String(addr.to_string().into())),
        family: Some(NATFamily::IP),
        port: None,
        flags: None,
    })
}

/// The floating-IP table for `(floating, fixed, subnet of fixed)` maps. SNAT leaves alone
/// what goes to the fixed address's own subnet: with `br_netfilter` (which stateful security
/// groups switch on) frames bridged between instances meet the IP postrouting hook too, and
/// a peer on the network must see the instance's fixed address, not its floating one.
pub(crate) fn fip_table(maps: &[(Ipv4Addr, Ipv4Addr, Ipv4Cidr)]) -> Result<TableSpec> {
    let name = TableName::new("hv_fip").map_err(net_err)?;
    let pre = maps
        .iter()
        .map(|(f, x, _)| {
            vec![r::eq(r::payload("ip", "daddr"), r::ip(*f)), Statement::DNAT(nat(*x))]
        })
        .collect();
    let post = maps
        .iter()
        .map(|(f, x, subnet)| {
            vec![
                r::eq(r::payload("ip", "saddr"), r::ip(*x)),
                r::ne(r::payload("ip", "daddr"), r::prefix(*subnet)),
                Statement::SNAT(nat(*f)),
            ]
        })
        .collect();
    Ok(TableSpec {
        family: Family::Ip,
        name,
        chains: vec![
            ChainSpec::base("prerouting", NfChainType::NAT, NfHook::Prerouting, -100, pre),
            // Before the networks' masquerade (PRIO_SRCNAT), so a mapped address keeps its own.
            ChainSpec::base(
                "postrouting",
                NfChainType::NAT,
                NfHook::Postrouting,
                PRIO_SRCNAT - 1,
                post,
            ),
        ],
    })
}

/// Installs `spec` (replacing the table of that name whole).
pub(crate) fn install(spec: &TableSpec) -> Result<()> {
    Nft::locate().map_err(net_err)?.replace_table(spec).map_err(net_err)
}

/// Puts exactly `want` (as /32s) on `bridge`, besides its other addresses.
pub(crate) fn set_bridge_hosts(bridge: &str, keep: Ipv4Addr, want: &[Ipv4Addr]) -> Result<()> {
    let mut nl = hv_net::netlink::Netlink::new().map_err(net_err)?;
    let have: Vec<Ipv4Addr> = nl
        .addresses(Some(bridge))
        .map_err(net_err)?
        .into_iter()
        .filter(|a| a.prefix == 32)
        .filter_map(|a| match a.ip {
            std::net::IpAddr::V4(v) if v != keep => Some(v),
            _ => None,
        })
        .collect();
    for ip in &have {
        if !want.contains(ip) {
            nl.delete_address(bridge, (*ip).into(), 32).map_err(net_err)?;
        }
    }
    for ip in want {
        if !have.contains(ip) {
            nl.add_address(bridge, (*ip).into(), 32).map_err(net_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridged_traffic_gets_the_network_s_zone() {
        let br = IfName::new("hvn1").unwrap();
        let subnet = "10.0.0.0/24".parse().unwrap();
        let t = network_table("n1", &br, subnet, false, &[], 7).unwrap();
        let json = serde_json::to_string(&t.replace()).unwrap();
        for needle in [
            r#""hook":"prerouting","prio":-300"#,
            r#"{"match":{"left":{"payload":{"protocol":"ether","field":"daddr"}},"right":"52:54:00:"#,
            r#"{"mangle":{"key":{"ct":{"key":"zone"}},"value":7}}"#,
        ] {
            assert!(json.contains(needle), "{needle} in {json}");
        }
    }

    #[test]
    fn floating_snat_spares_the_fixed_address_subnet() {
        let fixed = "10.0.0.5".parse().unwrap();
        let subnet = "10.0.0.0/24".parse().unwrap();
        let t = fip_table(&[("203.0.113.7".parse().unwrap(), fixed, subnet)]).unwrap();
        let json = serde_json::to_string(&t.replace()).unwrap();
        let spared = r#"{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"10.0.0.0","len":24}},"op":"!="}}"#;
        assert!(json.contains(spared), "{json}");
        assert!(json.contains(r#""snat":{"addr":"203.0.113.7""#), "{json}");
    }
}
