//! Stateful security groups through `br_netfilter` ([`ReplyMode::BrNetfilter`]), for a kernel
//! that cannot track connections in the bridge family but passes bridged IPv4 through the IP
//! hooks (`CONFIG_BRIDGE_NETFILTER`, with `net.bridge.bridge-nf-call-iptables=1`, a setting
//! of each network namespace). There a bridged packet gets a conntrack entry in prerouting and
//! meets the `forward` hook; a packet from a guest to the host meets `input`, one from the
//! host to a guest `output`. Routed traffic to or from a guest (a router's NAT, a floating IP
//! DNATed in prerouting) meets `forward` too. Neutron's iptables firewall driver works so.
//!
//! On those hooks a packet's input or output interface is the *bridge*, not the port, so the
//! port is known by its bridge and its addresses: a packet in from the bridge with one of the
//! port's addresses as source comes from the port (the bridge table's anti-spoofing lets a
//! guest send only from its own), a packet out to the bridge with one of them as destination
//! goes to it. The port's `inet` table ([`table_name`]) has:
//!
//! - base chains `forward`, `input`, `output` (filter priority, policy accept): accept
//!   `ct state established,related`; send a packet from the port to chain `egress`, one to
//!   the port to chain `ingress`; leave every other packet alone;
//! - `egress` and `ingress`: drop `ct state invalid`, let DHCP through (client to server in
//!   `egress`, server to client in `ingress`), accept what a rule of that direction allows,
//!   drop the rest.
//!
//! Each port has its own table, so a packet between two guests must pass the sender's egress
//! and the receiver's ingress. Broadcast and multicast IPv4 to a port (the subnet broadcast,
//! `255.255.255.255`) carry no address of the port's, and no connection: the port's bridge
//! table filters them by its ingress rules as they are (chain `sg_ingress`, changed in the same
//! transaction as this table's chains).
//!
//! [`ReplyMode::BrNetfilter`]: super::ReplyMode::BrNetfilter

use std::io;
use std::path::{Path, PathBuf};

use nftables::expr::Expression;
use nftables::types::{NfChainType, NfHook};

use super::{render_dir, Direction, PortSpec, SecurityRule};
use crate::nft::rules::{self as r, ChainSpec, Rule, TableSpec, PRIO_FILTER};
use crate::nft::{Family, NftError, Result, TableName};
use crate::IfName;

/// The setting that makes bridged IPv4 meet the IP hooks, in the caller's network namespace.
pub const SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// The security-group chains of a port's `inet` table: egress, then ingress.
pub(super) const SG_CHAINS: [&str; 2] = ["egress", "ingress"];

/// The `inet` table of a port's security groups: `hv_sg__` + the port's name escaped
/// ([`IfName::escaped`]). The double `_` keeps it apart from every network's table
/// (`hv_` + a network name escaped, where each `_` starts a hex escape).
pub fn table_name(port: &IfName) -> TableName {
    TableName::from_parts(&["sg", "", &port.escaped()])
}

/// True when the kernel has `br_netfilter` for the caller's network namespace.
pub fn available() -> bool {
    Path::new(SYSCTL).exists()
}

/// Sets `net.bridge.bridge-nf-call-iptables=1` in the caller's network namespace (already set:
/// nothing written).
pub fn enable() -> Result<()> {
    let err = |source: io::Error| NftError::Sysctl { path: PathBuf::from(SYSCTL), source };
    if std::fs::read_to_string(SYSCTL).map_err(err)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(SYSCTL, "1\n").map_err(err)
}

/// The rules of chain `egress` or `ingress` (by `dir`) for `rules`.
pub(super) fn sg_chain(rules: &[SecurityRule], dir: Direction) -> Vec<Rule> {
    let udp = |field, port: u32| r::eq(r::payload("udp", field), r::num(port));
    let dhcp = match dir {
        Direction::Egress => vec![udp("sport", 68), udp("dport", 67), r::accept()],
        Direction::Ingress => vec![udp("sport", 67), udp("dport", 68), r::accept()],
    };
    let mut out = vec![vec![r::ct_state(&["invalid"]), r::drop()], dhcp];
    out.extend(render_dir(rules, dir, true, false));
    out.push(vec![r::drop()]);
    out
}

/// The port's `inet` table for `spec` on `bridge`; `ips` is the set of its addresses.
pub(super) fn table(spec: &PortSpec, bridge: &IfName, ips: &Expression<'static>) -> TableSpec {
    let from_port = || {
        vec![r::iifname(bridge), r::eq(r::payload("ip", "saddr"), ips.clone()), r::jump("egress")]
    };
    let to_port = || {
        vec![r::oifname(bridge), r::eq(r::payload("ip", "daddr"), ips.clone()), r::jump("ingress")]
    };
    let replies = || r::ct_established(&["established", "related"]);
    let hook =
        |name, hook, rules| ChainSpec::base(name, NfChainType::Filter, hook, PRIO_FILTER, rules);
    TableSpec {
        family: Family::Inet,
        name: table_name(&spec.port),
        chains: vec![
            ChainSpec::regular(SG_CHAINS[0], sg_chain(&spec.rules, Direction::Egress)),
            ChainSpec::regular(SG_CHAINS[1], sg_chain(&spec.rules, Direction::Ingress)),
            hook("forward", NfHook::Forward, vec![replies(), from_port(), to_port()]),
            hook("input", NfHook::Input, vec![replies(), from_port()]),
            hook("output", NfHook::Output, vec![replies(), to_port()]),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PortSecurity, Protocol, ReplyMode};
    use super::*;
    use crate::nft::Nft;

    fn spec(rules: Vec<SecurityRule>, bridge: Option<&str>) -> PortSpec {
        PortSpec {
            port: IfName::new("hvtap0").unwrap(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            rules,
            bridge: bridge.map(|b| IfName::new(b).unwrap()),
        }
    }

    #[test]
    fn the_inet_table_decides_statefully_and_the_bridge_table_only_checks_sources() {
        let ps = PortSecurity::with_mode(Nft::at("/nonexistent"), ReplyMode::BrNetfilter);
        let rule = SecurityRule::ingress(Protocol::Tcp).ports(22, 22);
        let tables = ps.tables_for(&spec(vec![rule], Some("hvbr0"))).unwrap();
        assert_eq!(tables.len(), 2);
        let bridge = serde_json::to_string(&tables[0].replace()).unwrap();
        assert!(!bridge.contains("sg_egress") && !bridge.contains(r#""ct""#), "{bridge}");
        // Broadcast and multicast to the guest meet its ingress rules in the bridge table.
        assert!(bridge.contains(r#""right":{"set":["broadcast","multicast"]}"#), "{bridge}");
        assert!(bridge.contains(r#""field":"dport"}},"right":22"#), "{bridge}");
        assert!(bridge.contains(r#""field":"saddr"}},"right":"52:54:00:00:00:01""#), "{bridge}");
        let inet = &tables[1];
        assert_eq!((inet.family, inet.name.as_str()), (Family::Inet, "hv_sg__hvtap0"));
        let body = serde_json::to_string(&inet.replace()).unwrap();
        for needle in [
            r#"{"ct":{"key":"state"}},"right":["established","related"]"#,
            r#"{"ct":{"key":"state"}},"right":["invalid"]"#,
            r#"{"meta":{"key":"iifname"}},"right":"hvbr0""#,
            r#"{"payload":{"protocol":"ip","field":"daddr"}},"right":{"set":["10.0.0.2"]}"#,
            r#"{"payload":{"protocol":"tcp","field":"dport"}},"right":22"#,
            r#""hook":"forward""#,
            r#""hook":"input""#,
            r#""hook":"output""#,
        ] {
            assert!(body.contains(needle), "{needle} in {body}");
        }
        // No mirrors, no layer-2 matches in an inet table.
        assert!(!body.contains(r#""field":"sport"}},"right":22"#), "{body}");
        assert!(!body.contains("ether"), "{body}");
    }

    #[test]
    fn the_bridge_is_required() {
        let ps = PortSecurity::with_mode(Nft::at("/nonexistent"), ReplyMode::BrNetfilter);
        assert!(ps.tables_for(&spec(vec![], None)).is_err());
        let other = PortSecurity::with_mode(Nft::at("/nonexistent"), ReplyMode::Mirrored);
        assert_eq!(other.tables_for(&spec(vec![], None)).unwrap().len(), 1);
    }

    #[test]
    fn port_tables_never_meet_network_tables() {
        // A network's table is `hv_` + its name escaped, where every `_` starts a hex escape.
        let port = IfName::new("2dx").unwrap();
        assert_eq!(table_name(&port).as_str(), "hv_sg__2dx");
        assert_ne!(table_name(&port), crate::nft::network::table_name("sg-x").unwrap());
        assert_ne!(table_name(&port), crate::nft::network::table_name("sg_x").unwrap());
    }
}
