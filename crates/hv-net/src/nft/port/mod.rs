//! Port security for a guest port (a TAP or veth on a bridge), in a `bridge` family table of
//! the port's own, `hv_port_<port escaped>` ([`table_name`]: distinct ports, distinct tables):
//!
//! - **Anti-spoofing**: a frame from the port must carry the port's MAC as its source; an ARP
//!   frame must name the port's MAC and one of its IPs as sender; an IPv4 packet must come from
//!   one of its IPs (a DHCP request from `0.0.0.0` is let through so the guest can get its
//!   address). A guest may not answer as a DHCP server (UDP source port 67). Any other
//!   ethertype from the port (IPv6 included) is dropped.
//! - **Security groups**: rules by direction, protocol, port range and remote CIDR, Neutron's
//!   shape. What no rule allows is dropped, in both directions. How replies to allowed traffic
//!   pass is the [`ReplyMode`], the best the kernel offers:
//!   1. [`ReplyMode::BridgeConntrack`]: the bridge table matches
//!      `ct state established,related` (the kernel tracks connections in the bridge family,
//!      `nf_conntrack_bridge`).
//!   2. [`ReplyMode::BrNetfilter`]: the bridge table keeps anti-spoofing (and the ingress
//!      rules for broadcast and multicast to the guest), and the security groups move to an
//!      `inet` table of the port's own on the IP hooks that
//!      `br_netfilter` passes bridged IPv4 through, where connections are tracked
//!      ([`brnf`]; Neutron's iptables firewall driver works so). Applying a port in this mode
//!      sets `net.bridge.bridge-nf-call-iptables=1` in the caller's network namespace.
//!   3. [`ReplyMode::Mirrored`]: stateless; the reverse of each rule (matched on source ports
//!      and ICMP reply types) lets replies through, like Neutron's stateless security groups,
//!      so an allow-all egress rule also lets everything in.
//!
//! Rules on a running port are replaced with [`PortSecurity::update_rules`]: both security-group
//! chains are flushed and refilled in one nft transaction, so no frame sees a half-set policy;
//! then, in the stateful modes, the tracked connections the new rules would not admit are
//! deleted ([`conns`]), so a removed rule cuts what it let in.
//! [`PortSecurity::apply`] and [`PortSecurity::remove`] likewise change the port's tables (the
//! bridge table and, in [`ReplyMode::BrNetfilter`], the `inet` one) in one transaction.

pub mod brnf;
pub mod conns;

use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::types::{NfChainType, NfHook};
use serde::{Deserialize, Serialize};

use crate::nft::rules::{self as r, ChainSpec, Rule, TableSpec, PRIO_BRIDGE_FILTER};
use crate::nft::{Family, Nft, NftError, Result, TableName};
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
    /// The bridge the port is on. [`ReplyMode::BrNetfilter`] needs it: on the IP hooks a
    /// bridged packet's input and output interface is the bridge, not the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<IfName>,
}

/// How replies to allowed traffic get through a port's security groups, and so where the
/// security-group decision is made. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// Stateful, in the port's bridge table (`ct state` in the bridge family).
    BridgeConntrack,
    /// Stateful, in an `inet` table of the port's own on the hooks `br_netfilter` runs bridged
    /// IPv4 through ([`brnf`]); the bridge table does anti-spoofing, and filters broadcast
    /// and multicast to the guest by its ingress rules.
    BrNetfilter,
    /// Stateless, in the port's bridge table: each rule mirrored for replies.
    Mirrored,
}

impl ReplyMode {
    /// The best mode this kernel offers in the caller's network namespace: bridge conntrack,
    /// else `br_netfilter` (its `bridge-nf-call-iptables` setting exists), else mirrored rules.
    pub fn detect(nft: &Nft) -> ReplyMode {
        if nft.bridge_conntrack() {
            ReplyMode::BridgeConntrack
        } else if brnf::available() {
            ReplyMode::BrNetfilter
        } else {
            ReplyMode::Mirrored
        }
    }

    /// [`detect`](Self::detect), probed once per process: what the kernel offers does not
    /// change while it runs, and the probe costs two `nft` runs.
    pub fn detected(nft: &Nft) -> ReplyMode {
        static MODE: std::sync::OnceLock<ReplyMode> = std::sync::OnceLock::new();
        *MODE.get_or_init(|| ReplyMode::detect(nft))
    }

    /// True when replies are matched by connection tracking.
    pub fn stateful(self) -> bool {
        self != ReplyMode::Mirrored
    }
}

/// Applies port security with nftables.
#[derive(Debug, Clone)]
pub struct PortSecurity {
    nft: Nft,
    mode: ReplyMode,
}

/// The table a port owns: `hv_port_` + the port's name escaped injectively
/// ([`IfName::escaped`]: `tap-1` -> `hv_port_tap_2d1`, `tap_1` -> `hv_port_tap_5f1`).
pub fn table_name(port: &IfName) -> TableName {
    TableName::from_parts(&["port", &port.escaped()])
}

/// The set of a port's addresses, for matching; `{ 0.0.0.0 }` when it has none yet.
fn ip_set(ips: &[Ipv4Addr]) -> Expression<'static> {
    if ips.is_empty() {
        r::set(vec![r::ip(Ipv4Addr::UNSPECIFIED)])
    } else {
        r::set(ips.iter().map(|i| r::ip(*i)).collect())
    }
}

/// The rules of `dir` among `rules`, each rendered by [`render_to`], except that rules alike
/// but for their single-address remote (the members of a remote group, one rule each) become
/// one rule matching the set of those addresses: a group of n members costs each port one
/// rule, not n, so n ports cost O(n) rules rather than O(n^2).
fn render_dir(rules: &[SecurityRule], dir: Direction, forward: bool, l2: bool) -> Vec<Rule> {
    let mut merged: Vec<(SecurityRule, Vec<Ipv4Cidr>)> = vec![];
    for rule in rules.iter().filter(|x| x.direction == dir) {
        match rule.remote {
            Some(host) if host.prefix == 32 => {
                let key = SecurityRule { remote: None, ..*rule };
                match merged.iter_mut().find(|(k, v)| *k == key && !v.is_empty()) {
                    Some((_, hosts)) if !hosts.contains(&host) => hosts.push(host),
                    Some(_) => {}
                    None => merged.push((key, vec![host])),
                }
            }
            _ => merged.push((*rule, rule.remote.into_iter().collect())),
        }
    }
    merged.iter().map(|(rule, remotes)| render_to(rule, remotes, forward, l2)).collect()
}

/// `rule`'s statements, its remote given as `remotes` (none: any; one prefix; or a set of
/// them), for the chain of its own direction (`forward`) or the mirrored reply rule for the
/// opposite chain (`!forward`); in a bridge table (`l2`) first matching IPv4 frames.
fn render_to(rule: &SecurityRule, remotes: &[Ipv4Cidr], forward: bool, l2: bool) -> Rule {
    // Ingress rules match the remote as source; egress as destination; mirrors swap both.
    let remote_is_src = (rule.direction == Direction::Ingress) == forward;
    let mut s = if l2 { vec![r::ether_type("ip")] } else { vec![] };
    let field = if remote_is_src { "saddr" } else { "daddr" };
    match remotes {
        [] => {}
        [one] => s.push(r::eq(r::payload("ip", field), r::prefix(*one))),
        many => s.push(r::eq(
            r::payload("ip", field),
            r::set(many.iter().map(|c| r::prefix(*c)).collect()),
        )),
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
    /// Port security through `nft`, in the best [`ReplyMode`] the kernel offers
    /// ([`ReplyMode::detect`]).
    pub fn new(nft: Nft) -> PortSecurity {
        let mode = ReplyMode::detected(&nft);
        PortSecurity { nft, mode }
    }

    /// Port security in the bridge table, stateful (bridge conntrack) or mirrored as the
    /// caller chooses.
    pub fn with_stateful(nft: Nft, stateful: bool) -> PortSecurity {
        let mode = if stateful { ReplyMode::BridgeConntrack } else { ReplyMode::Mirrored };
        PortSecurity { nft, mode }
    }

    /// Port security in the mode the caller chooses.
    pub fn with_mode(nft: Nft, mode: ReplyMode) -> PortSecurity {
        PortSecurity { nft, mode }
    }

    /// The mode in use.
    pub fn mode(&self) -> ReplyMode {
        self.mode
    }

    /// True when replies are matched by connection tracking rather than mirrored rules.
    pub fn stateful(&self) -> bool {
        self.mode.stateful()
    }

    fn invalid(port: &IfName, reason: impl Into<String>) -> NftError {
        NftError::Invalid { port: port.to_string(), reason: reason.into() }
    }

    /// The bridge table's chain `sg_egress` or `sg_ingress` (by `dir`). In
    /// [`ReplyMode::BrNetfilter`] only `sg_ingress`, for broadcast and multicast to the guest
    /// (no connection, no port address to find it by on the IP hooks): the ingress rules as
    /// they are.
    fn sg_chain(&self, rules: &[SecurityRule], dir: Direction) -> Vec<Rule> {
        if self.mode == ReplyMode::BrNetfilter {
            let mut out = render_dir(rules, dir, true, true);
            out.push(vec![r::drop()]);
            return out;
        }
        let stateful = self.mode.stateful();
        let mut out = Vec::new();
        if stateful {
            out.push(r::ct_established(&["established", "related"]));
        }
        out.extend(render_dir(rules, dir, true, true));
        if !stateful {
            let other = match dir {
                Direction::Ingress => Direction::Egress,
                Direction::Egress => Direction::Ingress,
            };
            out.extend(render_dir(rules, other, false, true));
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

    /// The port's whole bridge table for `spec` (in [`ReplyMode::BrNetfilter`] without the
    /// unicast security-group decision: see [`PortSecurity::tables_for`]).
    pub fn rules_for(&self, spec: &PortSpec) -> Result<TableSpec> {
        Self::check(&spec.port, &spec.rules)?;
        if spec.mac.is_multicast() || spec.mac.is_zero() {
            return Err(Self::invalid(&spec.port, format!("{} is not a unicast MAC", spec.mac)));
        }
        let mac = || r::text(spec.mac.to_string());
        // No address yet: only DHCP can pass.
        let ips = ip_set(&spec.ips);
        // Where the security groups are decided: here, or (but for broadcast and multicast to
        // the guest) in the port's inet table.
        let here = self.mode != ReplyMode::BrNetfilter;
        let sg = |chain| if here { r::jump(chain) } else { r::accept() };
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
            vec![r::ether_type("ip"), sg("sg_egress")],
            vec![r::drop()],
        ];
        let mut to_guest = vec![
            vec![r::ether_type("arp"), r::accept()],
            vec![r::ether_type("ip"), udp("sport", 67), udp("dport", 68), r::accept()],
        ];
        if !here {
            let to_many = r::pkttype(&["broadcast", "multicast"]);
            to_guest.push(vec![r::ether_type("ip"), to_many, r::jump("sg_ingress")]);
        }
        to_guest.extend([vec![r::ether_type("ip"), sg("sg_ingress")], vec![r::drop()]]);
        let hook = |name, hook, rule| {
            ChainSpec::base(name, NfChainType::Filter, hook, PRIO_BRIDGE_FILTER, vec![rule])
        };
        let mut chains = vec![];
        if here {
            chains.push(ChainSpec::regular(
                "sg_egress",
                self.sg_chain(&spec.rules, Direction::Egress),
            ));
        }
        chains
            .push(ChainSpec::regular("sg_ingress", self.sg_chain(&spec.rules, Direction::Ingress)));
        chains.extend([
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
        ]);
        Ok(TableSpec { family: Family::Bridge, name: table_name(&spec.port), chains })
    }

    /// Every table of the port for `spec`: the bridge table, and in
    /// [`ReplyMode::BrNetfilter`] the `inet` table of its security groups ([`brnf::table`]).
    pub fn tables_for(&self, spec: &PortSpec) -> Result<Vec<TableSpec>> {
        let mut out = vec![self.rules_for(spec)?];
        if self.mode == ReplyMode::BrNetfilter {
            let bridge = spec.bridge.as_ref().ok_or_else(|| {
                Self::invalid(
                    &spec.port,
                    "stateful security groups through br_netfilter need the port's bridge",
                )
            })?;
            out.push(brnf::table(spec, bridge, &ip_set(&spec.ips)));
        }
        Ok(out)
    }

    /// Installs (or replaces) the port's tables, in one transaction. In
    /// [`ReplyMode::BrNetfilter`] this first sets `net.bridge.bridge-nf-call-iptables=1` in
    /// the caller's network namespace, so that bridged IPv4 meets the `inet` table's hooks; in
    /// the other modes a port `inet` table left from that mode goes. Then the connections the
    /// rules do not admit are forgotten ([`forget_unadmitted`](Self::forget_unadmitted)): a
    /// re-applied port may have lost rules, and a new one may have an address whose last
    /// owner's connections are still tracked.
    pub fn apply(&self, spec: &PortSpec) -> Result<()> {
        let tables = self.tables_for(spec)?;
        if self.mode == ReplyMode::BrNetfilter {
            brnf::enable()?;
        }
        let mut batch = Batch::new();
        if self.mode != ReplyMode::BrNetfilter {
            r::clear_table(&mut batch, Family::Inet, &brnf::table_name(&spec.port));
        }
        for t in &tables {
            t.replace_into(&mut batch);
        }
        self.nft.apply(&format!("apply port security of {}", spec.port), &batch.to_nftables())?;
        self.forget_after_change(&[spec]);
        Ok(())
    }

    /// Replaces the security-group rules of a port whose tables are installed with
    /// `spec.rules`, atomically, then forgets the connections they no longer admit
    /// ([`forget_unadmitted`](Self::forget_unadmitted), its failure logged). Only the spec's
    /// port, addresses, rules and bridge are used.
    pub fn update_rules(&self, spec: &PortSpec) -> Result<()> {
        let port = &spec.port;
        Self::check(port, &spec.rules)?;
        let (family, table) = match self.mode {
            ReplyMode::BrNetfilter => (Family::Inet, brnf::table_name(port)),
            _ => (Family::Bridge, table_name(port)),
        };
        if !self.nft.has_table(family, &table)? {
            return Err(Self::invalid(port, "no port security installed on this port"));
        }
        let mut batch = Batch::new();
        self.push_rule_update(&mut batch, port, &spec.rules);
        self.nft.apply(&format!("update rules of {family} {table}"), &batch.to_nftables())?;
        self.forget_after_change(&[spec]);
        Ok(())
    }

    /// [`update_rules`](Self::update_rules) for many installed ports in one nft transaction,
    /// all or none (what a change of a remote group's members needs: one `nft` run, not one
    /// per port), and one pass over the connection table. A port without its tables fails the
    /// whole update.
    pub fn update_rules_many(&self, specs: &[PortSpec]) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for spec in specs {
            Self::check(&spec.port, &spec.rules)?;
            self.push_rule_update(&mut batch, &spec.port, &spec.rules);
        }
        self.nft.apply(&format!("update rules of {} ports", specs.len()), &batch.to_nftables())?;
        self.forget_after_change(&specs.iter().collect::<Vec<_>>());
        Ok(())
    }

    /// Deletes the tracked connections from or to the ports of `specs` that their rules would
    /// not let start now ([`conns`]): a removed rule cuts what it let in, as in Neutron. A
    /// spec's `bridge` limits its connections to its network's zone and zone 0. Returns how
    /// many were deleted; nothing to do with mirrored rules (no connections).
    ///
    /// [`apply`](Self::apply) and the rule updates call this after the new rules are in and
    /// only log its failure, as Neutron does: the rules already hold for every new
    /// connection, and a connection table this code cannot read (a kernel without
    /// `nf_conntrack_netlink`, an entry it cannot parse) must not fail the rules themselves.
    pub fn forget_unadmitted(&self, specs: &[&PortSpec]) -> Result<usize> {
        use crate::netlink::{Conntrack, NetlinkError};
        if !self.mode.stateful() {
            return Ok(0);
        }
        let forget = || {
            // Each port's network zone, from its bridge (none known: every zone), each bridge
            // looked up once.
            let mut zones: std::collections::HashMap<&IfName, Option<u16>> = Default::default();
            let mut nl = None;
            for bridge in specs.iter().filter_map(|s| s.bridge.as_ref()) {
                if !zones.contains_key(bridge) {
                    let nl = match &mut nl {
                        Some(nl) => nl,
                        None => nl.insert(crate::netlink::Netlink::new()?),
                    };
                    let link = nl.link(bridge.as_str())?;
                    zones.insert(bridge, link.map(|l| conns::bridge_zone(l.index)));
                }
            }
            let ports: Vec<_> =
                specs.iter().map(|s| (*s, s.bridge.as_ref().and_then(|b| zones[b]))).collect();
            let mut ct = Conntrack::new()?;
            let all = ct.list()?;
            let mut deleted = 0;
            for c in conns::unadmitted(&ports, &all) {
                deleted += usize::from(ct.delete(c)?);
            }
            Ok::<_, NetlinkError>(deleted)
        };
        forget().map_err(NftError::Conntrack)
    }

    /// [`forget_unadmitted`](Self::forget_unadmitted) after a change of rules, its failure
    /// logged.
    fn forget_after_change(&self, specs: &[&PortSpec]) {
        if let Err(e) = self.forget_unadmitted(specs) {
            log::warn!("rules changed, but their established connections go on: {e}");
        }
    }

    /// Adds to `batch` the flush and refill of `port`'s security-group chains.
    fn push_rule_update(&self, batch: &mut Batch<'static>, port: &IfName, rules: &[SecurityRule]) {
        let (family, table, chains) = match self.mode {
            ReplyMode::BrNetfilter => (Family::Inet, brnf::table_name(port), brnf::SG_CHAINS),
            _ => (Family::Bridge, table_name(port), ["sg_egress", "sg_ingress"]),
        };
        for (chain, dir) in chains.into_iter().zip([Direction::Egress, Direction::Ingress]) {
            let body = match self.mode {
                ReplyMode::BrNetfilter => brnf::sg_chain(rules, dir),
                _ => self.sg_chain(rules, dir),
            };
            r::flush_chain(batch, family, &table, chain);
            r::add_rules(batch, family, &table, chain, &body);
        }
        if self.mode == ReplyMode::BrNetfilter {
            // Broadcast and multicast to the guest, in the bridge table.
            let bridge = table_name(port);
            let body = self.sg_chain(rules, Direction::Ingress);
            r::flush_chain(batch, Family::Bridge, &bridge, "sg_ingress");
            r::add_rules(batch, Family::Bridge, &bridge, "sg_ingress", &body);
        }
    }

    /// Removes the port's tables, in whichever mode they were made (no error when there are
    /// none).
    pub fn remove(&self, port: &IfName) -> Result<()> {
        let mut batch = Batch::new();
        r::clear_table(&mut batch, Family::Bridge, &table_name(port));
        r::clear_table(&mut batch, Family::Inet, &brnf::table_name(port));
        self.nft.apply(&format!("remove port security of {port}"), &batch.to_nftables())
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
            bridge: Some(IfName::new("hvbr0").unwrap()),
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
    fn a_remote_group_s_members_are_one_rule_with_a_set() {
        let ps = PortSecurity::with_stateful(Nft::at("/nonexistent"), true);
        let from =
            |c: &str| SecurityRule::ingress(Protocol::Tcp).ports(22, 22).remote(c.parse().unwrap());
        let rules = vec![
            from("10.0.0.3/32"),
            from("10.0.0.4/32"),
            from("10.0.0.3/32"),
            from("10.9.0.0/16"),
            SecurityRule::ingress(Protocol::Udp).remote("10.0.0.5/32".parse().unwrap()),
        ];
        let chain = ps.sg_chain(&rules, Direction::Ingress);
        // ct, the members' set, the /16 on its own, the UDP rule, the final drop.
        assert_eq!(chain.len(), 5, "{chain:?}");
        let body = json(&ps.rules_for(&spec(rules)).unwrap());
        let set = r#""right":{"set":[{"prefix":{"addr":"10.0.0.3","len":32}},{"prefix":{"addr":"10.0.0.4","len":32}}]}"#;
        assert!(body.contains(set), "{body}");
        assert!(body.contains(r#"{"prefix":{"addr":"10.9.0.0","len":16}}"#), "{body}");
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
