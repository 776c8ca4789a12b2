//! Port security for a guest port (a TAP or veth on a bridge), in a `bridge` family table of
//! the port's own, `hv_port_<port>`:
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

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{quote, Family, Nft, NftError, Result};
use crate::netlink::check_ifname;
use crate::types::{Ipv4Cidr, MacAddr};

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
    pub port: String,
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

/// The table a port owns.
pub fn table_name(port: &str) -> String {
    format!("hv_port_{}", port.replace('-', "_"))
}

fn range(ports: Option<(u16, u16)>) -> String {
    match ports {
        Some((lo, hi)) if lo == hi => format!(" {lo}"),
        Some((lo, hi)) => format!(" {lo}-{hi}"),
        None => String::new(),
    }
}

/// Renders `rule` for the chain of its own direction (`forward`) or the mirrored reply rule
/// for the opposite chain (`!forward`).
fn render(rule: &SecurityRule, forward: bool) -> String {
    // Ingress rules match the remote as source; egress as destination; mirrors swap both.
    let remote_is_src = (rule.direction == Direction::Ingress) == forward;
    let mut s = String::from("    ether type ip");
    if let Some(r) = rule.remote {
        let _ = write!(s, " ip {} {}", if remote_is_src { "saddr" } else { "daddr" }, r.network());
    }
    let port_key = if forward { "dport" } else { "sport" };
    match rule.protocol {
        Protocol::Tcp => {
            let _ = write!(s, " meta l4proto tcp");
            if rule.ports.is_some() {
                let _ = write!(s, " tcp {port_key}{}", range(rule.ports));
            }
        }
        Protocol::Udp => {
            let _ = write!(s, " meta l4proto udp");
            if rule.ports.is_some() {
                let _ = write!(s, " udp {port_key}{}", range(rule.ports));
            }
        }
        Protocol::Icmp if forward => s.push_str(" meta l4proto icmp"),
        Protocol::Icmp => {
            s.push_str(" icmp type { echo-reply, destination-unreachable, time-exceeded }")
        }
        Protocol::Any => {}
    }
    s.push_str(" accept\n");
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

    fn invalid(port: &str, reason: impl Into<String>) -> NftError {
        NftError::Invalid { port: port.to_string(), reason: reason.into() }
    }

    fn sg_chain(&self, rules: &[SecurityRule], dir: Direction) -> String {
        let mut s = String::new();
        if self.stateful {
            s.push_str("    ct state established,related accept\n");
        }
        for r in rules.iter().filter(|r| r.direction == dir) {
            s.push_str(&render(r, true));
        }
        if !self.stateful {
            for r in rules.iter().filter(|r| r.direction != dir) {
                s.push_str(&render(r, false));
            }
        }
        s.push_str("    drop\n");
        s
    }

    fn check(spec_port: &str, rules: &[SecurityRule]) -> Result<()> {
        check_ifname(spec_port).map_err(|e| Self::invalid(spec_port, e.to_string()))?;
        for r in rules {
            r.check().map_err(|e| Self::invalid(spec_port, e))?;
        }
        Ok(())
    }

    /// The table body for `spec`.
    pub fn rules_for(&self, spec: &PortSpec) -> Result<String> {
        Self::check(&spec.port, &spec.rules)?;
        if spec.mac.is_multicast() || spec.mac.is_zero() {
            return Err(Self::invalid(&spec.port, format!("{} is not a unicast MAC", spec.mac)));
        }
        let port = quote(&spec.port);
        let mac = spec.mac;
        let ips = if spec.ips.is_empty() {
            // No address yet: only DHCP can pass.
            "{ 0.0.0.0 }".to_string()
        } else {
            let list: Vec<String> = spec.ips.iter().map(|i| i.to_string()).collect();
            format!("{{ {} }}", list.join(", "))
        };
        Ok(format!(
            "  chain from_guest {{
    ether saddr != {mac} drop
    ether type arp arp saddr ether != {mac} drop
    ether type arp arp saddr ip != {ips} drop
    ether type arp accept
    ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
    ether type ip ip saddr != {ips} drop
    ether type ip udp sport 68 udp dport 67 accept
    ether type ip udp sport 67 drop
    ether type ip jump sg_egress
    drop
  }}
  chain to_guest {{
    ether type arp accept
    ether type ip udp sport 67 udp dport 68 accept
    ether type ip jump sg_ingress
    drop
  }}
  chain sg_egress {{
{}  }}
  chain sg_ingress {{
{}  }}
  chain prerouting {{
    type filter hook prerouting priority filter; policy accept;
    iifname {port} jump from_guest
  }}
  chain postrouting {{
    type filter hook postrouting priority filter; policy accept;
    oifname {port} jump to_guest
  }}
",
            self.sg_chain(&spec.rules, Direction::Egress),
            self.sg_chain(&spec.rules, Direction::Ingress),
        ))
    }

    /// Installs (or replaces) the port's whole table.
    pub fn apply(&self, spec: &PortSpec) -> Result<()> {
        let body = self.rules_for(spec)?;
        self.nft.replace_table(Family::Bridge, &table_name(&spec.port), &body)
    }

    /// Replaces the security-group rules of a port whose table is installed, atomically.
    pub fn update_rules(&self, port: &str, rules: &[SecurityRule]) -> Result<()> {
        Self::check(port, rules)?;
        let table = table_name(port);
        if !self.nft.has_table(Family::Bridge, &table)? {
            return Err(Self::invalid(port, "no port security installed on this port"));
        }
        let mut script = String::new();
        for (chain, dir) in [("sg_egress", Direction::Egress), ("sg_ingress", Direction::Ingress)] {
            let _ = writeln!(script, "flush chain bridge {table} {chain}");
            let _ = writeln!(script, "table bridge {table} {{\n  chain {chain} {{");
            script.push_str(&self.sg_chain(rules, dir));
            script.push_str("  }\n}\n");
        }
        self.nft.apply(&format!("update rules of {table}"), &script)
    }

    /// Removes the port's table (no error when there is none).
    pub fn remove(&self, port: &str) -> Result<()> {
        self.nft.delete_table(Family::Bridge, &table_name(port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rules: Vec<SecurityRule>) -> PortSpec {
        PortSpec {
            port: "hvtap0".into(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ips: vec![Ipv4Addr::new(10, 0, 0, 2)],
            rules,
        }
    }

    #[test]
    fn stateless_rules_are_mirrored() {
        let ps = PortSecurity::with_stateful(Nft::at("/nonexistent"), false);
        let rule = SecurityRule::egress(Protocol::Tcp)
            .ports(80, 80)
            .remote("10.1.0.0/16".parse().unwrap());
        let body = ps.rules_for(&spec(vec![rule])).unwrap();
        assert!(
            body.contains("ip daddr 10.1.0.0/16 meta l4proto tcp tcp dport 80 accept"),
            "{body}"
        );
        assert!(
            body.contains("ip saddr 10.1.0.0/16 meta l4proto tcp tcp sport 80 accept"),
            "{body}"
        );
        assert!(!body.contains("ct state"));
        assert!(body.contains("ether saddr != 52:54:00:00:00:01 drop"));
        assert!(body.contains("arp saddr ip != { 10.0.0.2 } drop"));
    }

    #[test]
    fn stateful_rules_use_conntrack() {
        let ps = PortSecurity::with_stateful(Nft::at("/nonexistent"), true);
        let body = ps.rules_for(&spec(vec![SecurityRule::ingress(Protocol::Icmp)])).unwrap();
        assert!(body.contains("ct state established,related accept"));
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
}
