//! The tracked connections a port's security groups no longer admit.
//!
//! Stateful rules decide only a connection's first packet; the rest pass as
//! `ct state established`. So when a rule goes (or a remote group loses a member), the
//! connections it let in would go on until they idle out. [`PortSecurity`](super::PortSecurity)
//! deletes them after each change, as Neutron's firewall drivers do: every connection from or
//! to one of the port's addresses is judged again as if it were starting now, by the port's
//! rules of that direction, and deleted from the table when they would refuse it. Its next
//! packet is then a new connection, judged by the rules like any other.
//!
//! Where a network's bridged traffic is tracked in a conntrack zone of its own
//! ([`bridge_zone`], as hv-orchestrator's tenant networks are), only connections in that zone
//! or the default one (what the host routes or sends) are a port's: another network may use
//! the same addresses.

use std::net::Ipv4Addr;

use super::{Direction, PortSpec, Protocol, SecurityRule};
use crate::netlink::conntrack::Connection;

/// IP protocol numbers.
const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

impl SecurityRule {
    /// True when this rule lets a new connection of IP `protocol` through, to destination
    /// port `dport` (`None` for portless protocols), whose far end is `remote` (the source of
    /// an ingress connection, the destination of an egress one). The direction is the
    /// caller's to match.
    pub fn admits(&self, protocol: u8, remote: Ipv4Addr, dport: Option<u16>) -> bool {
        let proto = match self.protocol {
            Protocol::Tcp => protocol == TCP,
            Protocol::Udp => protocol == UDP,
            Protocol::Icmp => protocol == ICMP,
            Protocol::Any => true,
        };
        let port = match (self.ports, dport) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => (lo..=hi).contains(&p),
            (Some(_), None) => false,
        };
        let far = self.remote.is_none_or(|cidr| cidr.contains(remote));
        proto && port && far
    }
}

/// Whether `spec`'s rules would let connection `c` start now: `None` when it is none of the
/// port's (neither end is one of its addresses). An egress connection (the port's address
/// began it) needs an egress rule for where it really went (the reply's source, after any
/// DNAT); an ingress one (it goes to the port's address, after any DNAT) an ingress rule for
/// its initiator. DHCP between client and server ports is always let through, as the chains
/// do.
pub fn admitted(spec: &PortSpec, c: &Connection) -> Option<bool> {
    let from_port = spec.ips.contains(&c.initiator());
    let to_port = spec.ips.contains(&c.responder());
    if !from_port && !to_port {
        return None;
    }
    let dhcp = c.protocol == UDP
        && matches!((c.orig.sport, c.orig.dport), (Some(68), Some(67)) | (Some(67), Some(68)));
    if dhcp {
        return Some(true);
    }
    let any = |dir: Direction, remote: Ipv4Addr| {
        spec.rules
            .iter()
            .filter(|r| r.direction == dir)
            .any(|r| r.admits(c.protocol, remote, c.responder_port()))
    };
    let egress = !from_port || any(Direction::Egress, c.responder());
    let ingress = !to_port || any(Direction::Ingress, c.initiator());
    Some(egress && ingress)
}

/// The conntrack zone hv gives the bridged traffic of the bridge with interface index
/// `ifindex`: the index itself, unique among the namespace's links, folded into 1..=65535
/// when it is larger (two bridges may then share a zone, as all did without zones).
pub fn bridge_zone(ifindex: u32) -> u16 {
    u16::try_from(ifindex).ok().filter(|z| *z != 0).unwrap_or((ifindex % 65535 + 1) as u16)
}

/// The connections among `conns` that pass through a port of `ports` whose rules would not
/// let them start now. With a zone (the port's network's), only connections in that zone or
/// zone 0 are the port's.
pub fn unadmitted<'a>(
    ports: &[(&PortSpec, Option<u16>)],
    conns: &'a [Connection],
) -> Vec<&'a Connection> {
    let theirs =
        |c: &Connection, zone: Option<u16>| zone.is_none_or(|z| c.zone == 0 || c.zone == z);
    conns
        .iter()
        .filter(|c| ports.iter().any(|(s, z)| theirs(c, *z) && admitted(s, c) == Some(false)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::conntrack::Tuple;
    use crate::IfName;

    fn conn(protocol: u8, orig: (&str, &str, u16, u16), reply_src: &str) -> Connection {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let (src, dst, sport, dport) = orig;
        Connection::new(
            protocol,
            Tuple { src: ip(src), dst: ip(dst), sport: Some(sport), dport: Some(dport) },
            Tuple { src: ip(reply_src), dst: ip(src), sport: Some(dport), dport: Some(sport) },
            0,
        )
    }

    fn spec(rules: Vec<SecurityRule>) -> PortSpec {
        PortSpec {
            port: IfName::new("hvtap0").unwrap(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            rules,
            bridge: None,
        }
    }

    #[test]
    fn each_end_is_judged_by_its_own_direction() {
        let ssh_in = SecurityRule::ingress(Protocol::Tcp).ports(22, 22);
        let web_out = SecurityRule::egress(Protocol::Tcp)
            .ports(80, 80)
            .remote("10.9.0.0/16".parse().unwrap());
        let s = spec(vec![ssh_in, web_out]);
        let to_ssh = conn(TCP, ("10.0.0.7", "10.0.0.5", 40000, 22), "10.0.0.5");
        let to_web = conn(TCP, ("10.0.0.7", "10.0.0.5", 40000, 80), "10.0.0.5");
        let out_web = conn(TCP, ("10.0.0.5", "10.9.1.1", 40000, 80), "10.9.1.1");
        let out_elsewhere = conn(TCP, ("10.0.0.5", "10.8.1.1", 40000, 80), "10.8.1.1");
        let others = conn(TCP, ("10.0.0.7", "10.0.0.8", 40000, 22), "10.0.0.8");
        assert_eq!(admitted(&s, &to_ssh), Some(true));
        assert_eq!(admitted(&s, &to_web), Some(false));
        assert_eq!(admitted(&s, &out_web), Some(true));
        assert_eq!(admitted(&s, &out_elsewhere), Some(false));
        assert_eq!(admitted(&s, &others), None);
        let mut elsewhere = to_web.clone();
        elsewhere.zone = 9;
        let all = [to_ssh, to_web, out_web, out_elsewhere, others, elsewhere];
        let gone = unadmitted(&[(&s, None)], &all);
        assert_eq!(gone, vec![&all[1], &all[3], &all[5]], "without a zone: every zone");
        let gone = unadmitted(&[(&s, Some(4))], &all);
        assert_eq!(gone, vec![&all[1], &all[3]], "zone 4's port: not zone 9's connection");
        assert_eq!(
            (bridge_zone(5), bridge_zone(65535), bridge_zone(0), bridge_zone(65536)),
            (5, 65535, 1, 2)
        );
    }

    #[test]
    fn a_dnat_connection_is_judged_by_where_it_really_went() {
        // Outside -> floating 203.0.113.9:22, DNATed to the port's 10.0.0.5:22.
        let fip = conn(TCP, ("198.51.100.1", "203.0.113.9", 5000, 22), "10.0.0.5");
        assert_eq!(admitted(&spec(vec![]), &fip), Some(false));
        let ssh = SecurityRule::ingress(Protocol::Tcp).ports(22, 22);
        assert_eq!(admitted(&spec(vec![ssh]), &fip), Some(true));
        let only_lan = ssh.remote("10.0.0.0/24".parse().unwrap());
        assert_eq!(admitted(&spec(vec![only_lan]), &fip), Some(false));
    }

    #[test]
    fn dhcp_and_portless_protocols() {
        let dhcp = conn(UDP, ("10.0.0.5", "10.0.0.1", 68, 67), "10.0.0.1");
        assert_eq!(admitted(&spec(vec![]), &dhcp), Some(true));
        let mut ping = conn(ICMP, ("10.0.0.7", "10.0.0.5", 0, 0), "10.0.0.5");
        (ping.orig.sport, ping.orig.dport, ping.reply.sport, ping.reply.dport) =
            (None, None, None, None);
        assert_eq!(admitted(&spec(vec![SecurityRule::ingress(Protocol::Icmp)]), &ping), Some(true));
        assert_eq!(admitted(&spec(vec![SecurityRule::ingress(Protocol::Any)]), &ping), Some(true));
        let ranged = SecurityRule::ingress(Protocol::Tcp).ports(1, 65535);
        assert_eq!(admitted(&spec(vec![ranged]), &ping), Some(false), "a port rule is tcp's");
        assert_eq!(admitted(&spec(vec![SecurityRule::egress(Protocol::Icmp)]), &ping), Some(false));
    }
}
