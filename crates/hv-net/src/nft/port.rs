//! Port security for a guest port (a TAP or veth on a bridge), in a `bridge` family table of
//! the port's own, `hv_port_<port escaped>` ([`table_name`]: distinct ports, distinct tables):
//!
//! - **Anti-spoofing**: a frame from the port must carry the port's MAC as its source; an ARP
//!   frame must name the port's MAC and one of its IPs as sender; an IPv4 packet must come from
//!   one of its IPs (a DHCP request from `0.0.0.0` is let through so the guest can get its
//!   address). A guest may not answer as a DHCP server (UDP source port 67). Any other
//!   ethertype from the port (IPv6 included) is dropped.
//! - **Security groups**: rules by direction, protocol, port range and remote CIDR, Neutron's
//!   shape. What no rule allows is dropped, in both directions. Replies to allowed traffic
//!   pass: statefully (`ct state established,related`) when the kernel tracks connections in
//!   the bridge family, otherwise through mirrored rules (the reverse of each rule, matched on
//!   source ports and ICMP reply types), like Neutron's stateless security groups.
//!
//! Rules on a running port are replaced with [`PortSecurity::update_rules`]: both security-group
//! chains are flushed and refilled in one nft transaction, so no frame sees a half-set policy.

use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::types::{NfChainType, NfHook};
use serde::{Deserialize, Serialize};

use super::rules::{self as r, ChainSpec, Rule, TableSpec, PRIO_BRIDGE_FILTER};
use super::{Family, Nft, NftError, Result, TableName};
use crate::types::{Ipv4Cidr, MacAddr};
use crate::IfName;

/// Which way a security-group rule looks, seen from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the guest.
    Ingress,
    /// Traffic from the guest.
    Egress,
}

/// The protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, optionally with a destination port range.
    Tcp,
    /// UDP, optionally with a destination port range.
    Udp,
    /// ICMP (all types).
    Icmp,
    /// Any IPv4 protocol.
    Any,
}

/// One security-group rule: allow `protocol` traffic in `direction`, to destination ports
/// `ports` (TCP/UDP only), from (ingress) or to (egress) `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecurityRule {
    /// Ingress or egress.
    pub direction: Direction,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port range, inclusive; `None` for all ports.
    pub ports: Option<(u16, u16)>,
    /// Remote network; `None` for anywhere.
    pub remote: Option<Ipv4Cidr>,
}

impl SecurityRule {
    /// Allows `protocol` to the guest from anywhere.
    pub fn ingress(protocol: Protocol) -> SecurityRule {
        SecurityRule { direction: Direction::Ingress, protocol, ports: None, remote: None }
    }

    /// Allows `protocol` from the guest to anywhere.
    pub fn egress(protocol: Protocol) -> SecurityRule {
        SecurityRule { direction: Direction::Egress, protocol, ports: None, remote: None }
    }

    /// Limits the rule to destination ports `first..=last`.
    pub fn ports(mut self, first: u16, last: u16) -> SecurityRule {
        self.ports = Some((first, last));
        self
    }

    /// Limits the rule to the remote network `cidr`.
    pub fn remote(mut self, cidr: Ipv4Cidr) -> SecurityRule {
        self.remote = Some(cidr);
        self
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some((lo, hi)) = self.ports {
            if !matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(format!("{self:?}: a port range needs tcp or udp"));
            }
            if lo > hi || lo == 0 {
                return Err(format!("{self:?}: bad port range {lo}-{hi}"));
            }
        }
        Ok(())
    }
}

/// What a port may send and receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port's interface on the bridge (the TAP, or the host end of a veth).
    pub port: IfName,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// The guest's IPv4 addresses.
    pub ips: Vec<Ipv4Addr>,
    /// Security-group rules.
    pub rules: Vec<SecurityRule>,
}

/// Applies port security with nftables.
#[derive(Debug, Clone)]
pub struct PortSecurity {
    nft: Nft,
    stateful: bool,
}

/// The table a port owns: `hv_port_` + the port's name escaped injectively
/// ([`IfName::escaped`]: `tap-1` -> `hv_port_tap_2d1`, `tap_1` -> `hv_port_tap_5f1`).
pub fn table_name(port: &IfName) -> TableName {
    TableName::from_parts(&["port", &port.escaped()])
}

/// `rule`'s statements for the chain of its own direction (`forward`) or the mirrored reply
/// rule for the opposite chain (`!forward`).
fn render(rule: &SecurityRule, forward: bool) -> Rule {
    // Ingress rules match the remote as source; egress as destination; mirrors swap both.
    let remote_is_src = (rule.direction == Direction::Ingress) == forward;
    let mut s = vec![r::ether_type("ip")];
    if let Some(remote) = rule.remote {
        let field = if remote_is_src { "saddr" } else { "daddr" };
        s.push(r::eq(r::payload("ip", field), r::prefix(remote)));
    }
    let port_key = if forward { "dport" } else { "sport" };
    let ports = |proto| match rule.ports {
        Some((lo, hi)) if lo == hi => Some(r::eq(r::payload(proto, port_key), r::num(lo.into()))),
        Some((lo, hi)) => Some(r::eq(r::payload(proto, port_key), r::range(lo.into(), hi.into()))),
        None => None,
    };
    match rule.protocol {
        Protocol::Tcp => {
            s.push(r::l4proto("tcp"));
            s.extend(ports("tcp"));
        }
        Protocol::Udp => {
            s.push(r::l4proto("udp"));
            s.extend(ports("udp"));
        }
        Protocol::Icmp if forward => s.push(r::l4proto("icmp")),
        Protocol::Icmp => {
            let replies = ["echo-reply", "destination-unreachable", "time-exceeded"];
            s.push(r::eq(r::payload("icmp", "type"), r::set(replies.map(r::text).to_vec())));
        }
        Protocol::Any => {}
    }
    s.push(r::accept());
    s
}

impl PortSecurity {
    /// Port security through `nft`, stateful when the kernel has bridge conntrack.
    pub fn new(nft: Nft) -> PortSecurity {
        let stateful = nft.bridge_conntrack();
        PortSecurity { nft, stateful }
    }

    /// Port security with the reply handling chosen by the caller.
    pub fn with_stateful(nft: Nft, stateful: bool) -> PortSecurity {
        PortSecurity { nft, stateful }
    }

    /// True when replies are matched by connection tracking rather than mirrored rules.
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    fn invalid(port: &IfName, reason: impl Into<String>) -> NftError {
        NftError::Invalid { port: port.to_string(), reason: reason.into() }
    }

    fn sg_chain(&self, rules: &[SecurityRule], dir: Direction) -> Vec<Rule> {
        let mut out = Vec::new();
        if self.stateful {
            out.push(r::ct_established(&["established", "related"]));
        }
        out.extend(rules.iter().filter(|x| x.direction == dir).map(|x| render(x, true)));
        if !self.stateful {
            out.extend(rules.iter().filter(|x| x.direction != dir).map(|x| render(x, false)));
        }
        out.push(vec![r::drop()]);
        out
    }

    fn check(port: &IfName, rules: &[SecurityRule]) -> Result<()> {
        for rule in rules {
            rule.check().map_err(|e| Self::invalid(port, e))?;
        }
        Ok(())
    }

    /// The port's whole table for `spec`.
    pub fn rules_for(&self, spec: &PortSpec) -> Result<TableSpec> {
        Self::check(&spec.port, &spec.rules)?;
        if spec.mac.is_multicast() || spec.mac.is_zero() {
            return Err(Self::invalid(&spec.port, format!("{} is not a unicast MAC", spec.mac)));
        }
        let mac = || r::text(spec.mac.to_string());
        // No address yet: only DHCP can pass.
        let ips = if spec.ips.is_empty() {
            r::set(vec![r::ip(Ipv4Addr::UNSPECIFIED)])
        } else {
            r::set(spec.ips.iter().map(|i| r::ip(*i)).collect())
        };
        let ip = |field| r::payload("ip", field);
        let udp = |field, port: u32| r::eq(r::payload("udp", field), r::num(port));
        let from_guest = vec![
            vec![r::ne(r::payload("ether", "saddr"), mac()), r::drop()],
            vec![r::ether_type("arp"), r::ne(r::payload("arp", "saddr ether"), mac()), r::drop()],
            vec![
                r::ether_type("arp"),
                r::ne(r::payload("arp", "saddr ip"), ips.clone()),
                r::drop(),
            ],
            vec![r::ether_type("arp"), r::accept()],
            vec![
                r::ether_type("ip"),
                r::eq(ip("saddr"), r::ip(Ipv4Addr::UNSPECIFIED)),
                r::eq(ip("daddr"), r::ip(Ipv4Addr::BROADCAST)),
                udp("sport", 68),
                udp("dport", 67),
                r::accept(),
            ],
            vec![r::ether_type("ip"), r::ne(ip("saddr"), ips), r::drop()],
            vec![r::ether_type("ip"), udp("sport", 68), udp("dport", 67), r::accept()],
            vec![r::ether_type("ip"), udp("sport", 67), r::drop()],
            vec![r::ether_type("ip"), r::jump("sg_egress")],
            vec![r::drop()],
        ];
        let to_guest = vec![
            vec![r::ether_type("arp"), r::accept()],
            vec![r::ether_type("ip"), udp("sport", 67), udp("dport", 68), r::accept()],
            vec![r::ether_type("ip"), r::jump("sg_ingress")],
            vec![r::drop()],
        ];
        let hook = |name, hook, rule| {
            ChainSpec::base(name, NfChainType::Filter, hook, PRIO_BRIDGE_FILTER, vec![rule])
        };
        Ok(TableSpec {
            family: Family::Bridge,
            name: table_name(&spec.port),
            chains: vec![
                ChainSpec::regular("sg_egress", self.sg_chain(&spec.rules, Direction::Egress)),
                ChainSpec::regular("sg_ingress", self.sg_chain(&spec.rules, Direction::Ingress)),
                ChainSpec::regular("from_guest", from_guest),
                ChainSpec::regular("to_guest", to_guest),
                hook(
                    "prerouting",
                    NfHook::Prerouting,
                    vec![r::iifname(&spec.port), r::jump("from_guest")],
                ),
                hook(
                    "postrouting",
                    NfHook::Postrouting,
                    vec![r::oifname(&spec.port), r::jump("to_guest")],
                ),
            ],
        })
    }

    /// Installs (or replaces) the port's whole table.
    pub fn apply(&self, spec: &PortSpec) -> Result<()> {
        self.nft.replace_table(&self.rules_for(spec)?)
    }

    /// Replaces the security-group rules of a port whose table is installed, atomically.
    pub fn update_rules(&self, port: &IfName, rules: &[SecurityRule]) -> Result<()> {
        Self::check(port, rules)?;
        let table = table_name(port);
        if !self.nft.has_table(Family::Bridge, &table)? {
            return Err(Self::invalid(port, "no port security installed on this port"));
        }
        let mut batch = Batch::new();
        for (chain, dir) in [("sg_egress", Direction::Egress), ("sg_ingress", Direction::Ingress)] {
            r::flush_chain(&mut batch, Family::Bridge, &table, chain);
            r::add_rules(&mut batch, Family::Bridge, &table, chain, &self.sg_chain(rules, dir));
        }
        self.nft.apply(&format!("update rules of {table}"), &batch.to_nftables())
    }

    /// Removes the port's table (no error when there is none).
    pub fn remove(&self, port: &IfName) -> Result<()> {
        self.nft.delete_table(Family::Bridge, &table_name(port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rules: Vec<SecurityRule>) -> PortSpec {
        PortSpec {
            port: IfName::new("hvtap0").unwrap(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ips: vec![Ipv4Addr::new(10, 0, 0, 2)],
            rules,
        }
    }

    fn json(t: &TableSpec) -> String {
        serde_json::to_string(&t.replace()).unwrap()
    }

    #[test]
    fn stateless_rules_are_mirrored() {
        let ps = PortSecurity::with_stateful(Nft::at("/nonexistent"), false);
        let rule = SecurityRule::egress(Protocol::Tcp)
            .ports(80, 80)
            .remote("10.1.0.0/16".parse().unwrap());
        let body = json(&ps.rules_for(&spec(vec![rule])).unwrap());
        let dst = r#"{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"10.1.0.0","len":16}}"#;
        let dport = r#"{"payload":{"protocol":"tcp","field":"dport"}},"right":80"#;
        let src = r#"{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.1.0.0","len":16}}"#;
        let sport = r#"{"payload":{"protocol":"tcp","field":"sport"}},"right":80"#;
        for needle in [dst, dport, src, sport] {
            assert!(body.contains(needle), "{needle} in {body}");
        }
        assert!(!body.contains(r#""ct""#));
        assert!(body.contains(r#"{"left":{"payload":{"protocol":"ether","field":"saddr"}},"right":"52:54:00:00:00:01","op":"!="}"#));
        assert!(body.contains(
            r#"{"payload":{"protocol":"arp","field":"saddr ip"}},"right":{"set":["10.0.0.2"]}"#
        ));
        assert_eq!(ps.rules_for(&spec(vec![])).unwrap().name.as_str(), "hv_port_hvtap0");
    }

    #[test]
    fn stateful_rules_use_conntrack() {
        let ps = PortSecurity::with_stateful(Nft::at("/nonexistent"), true);
        let body = json(&ps.rules_for(&spec(vec![SecurityRule::ingress(Protocol::Icmp)])).unwrap());
        assert!(
            body.contains(r#"{"ct":{"key":"state"}},"right":["established","related"]"#),
            "{body}"
        );
        assert!(!body.contains("echo-reply"));
    }

    #[test]
    fn bad_rules_are_refused() {
        let ps = PortSecurity::with_stateful(Nft::at("/nonexistent"), false);
        assert!(ps
            .rules_for(&spec(vec![SecurityRule::ingress(Protocol::Icmp).ports(1, 2)]))
            .is_err());
        assert!(ps
            .rules_for(&spec(vec![SecurityRule::ingress(Protocol::Tcp).ports(9, 2)]))
            .is_err());
        let mut s = spec(vec![]);
        s.mac = "01:00:5e:00:00:01".parse().unwrap();
        assert!(ps.rules_for(&s).is_err());
    }

    #[test]
    fn a_port_name_cannot_be_nft_syntax() {
        // The spec's port is an IfName: a name with nft syntax never gets this far, from code
        // or from JSON.
        let bad = r#"{"port":"x";flush ruleset;#","mac":"52:54:00:00:00:01","ips":[],"rules":[]}"#;
        assert!(serde_json::from_str::<PortSpec>(bad).is_err());
        let a = table_name(&IfName::new("tap-1").unwrap());
        let b = table_name(&IfName::new("tap_1").unwrap());
        assert_ne!(a, b);
    }
}
