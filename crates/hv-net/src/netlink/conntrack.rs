//! The kernel's connection tracking table over ctnetlink (`NETLINK_NETFILTER`): list the IPv4
//! connections, delete one. What `conntrack -L` and `conntrack -D` do, for stateful security
//! groups: a connection a removed rule let in would otherwise go on (its packets match
//! `ct state established`) until it idles out, so when rules change, the connections they no
//! longer admit are deleted, as Neutron's firewall drivers do.
//!
//! Messages are built and parsed with `netlink-packet-netfilter`. The socket belongs to the
//! network namespace of the thread that opened it, like [`Netlink`](super::Netlink)'s.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{DefaultNla, Nla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple as NlTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::{fail, Channel, Result};

/// `CTA_ZONE`: the connection's zone, a big-endian `u16`, absent for the default zone 0.
const CTA_ZONE: u16 = 18;

/// One direction of a connection: addresses, and ports for protocols that have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (TCP, UDP, SCTP, ...); `None` for ICMP and portless protocols.
    pub sport: Option<u16>,
    /// Destination port; `None` like `sport`.
    pub dport: Option<u16>,
}

/// One tracked IPv4 connection.
///
/// The *original* tuple is the first packet's, as it arrived; the *reply* tuple is what
/// answers look like, after NAT: with a DNAT (a floating IP) its source is the address the
/// connection really went to, with an SNAT (a router's masquerade) its destination is the
/// address the initiator's packets left with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The IP protocol number (1 ICMP, 6 TCP, 17 UDP...).
    pub protocol: u8,
    /// The original direction.
    pub orig: Tuple,
    /// The reply direction.
    pub reply: Tuple,
    /// The conntrack zone (0: the default).
    pub zone: u16,
    /// The original tuple as the kernel gave it, to name the entry exactly when deleting it.
    raw_orig: Vec<NlTuple>,
}

impl Connection {
    /// A connection as a test would describe it (no kernel tuple to delete it by).
    #[cfg(test)]
    pub(crate) fn new(protocol: u8, orig: Tuple, reply: Tuple, zone: u16) -> Connection {
        Connection { protocol, orig, reply, zone, raw_orig: vec![] }
    }

    /// The responder: where the connection really goes (after any DNAT).
    pub fn responder(&self) -> Ipv4Addr {
        self.reply.src
    }

    /// The responder's port (after any DNAT): what a rule's port range is matched against.
    pub fn responder_port(&self) -> Option<u16> {
        self.reply.sport
    }

    /// The initiator, as it was before any SNAT.
    pub fn initiator(&self) -> Ipv4Addr {
        self.orig.src
    }
}

/// A ctnetlink socket in the calling thread's network namespace.
///
/// ```no_run
/// let mut ct = hv_net::netlink::Conntrack::new()?;
/// for c in ct.list()? {
///     if c.responder() == std::net::Ipv4Addr::new(10, 0, 0, 5) {
///         ct.delete(&c)?;
///     }
/// }
/// # Ok::<(), hv_net::netlink::NetlinkError>(())
/// ```
#[derive(Debug)]
pub struct Conntrack {
    chan: Channel,
}

impl Conntrack {
    /// Opens a `NETLINK_NETFILTER` socket in the calling thread's network namespace.
    pub fn new() -> Result<Conntrack> {
        Ok(Conntrack { chan: Channel::open(NETLINK_NETFILTER)? })
    }

    fn message(msg: ConntrackMessage) -> NetfilterMessage {
        NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), msg)
    }

    /// Every tracked IPv4 connection of the namespace, in every zone. Entries the kernel
    /// describes without addresses are left out.
    pub fn list(&mut self) -> Result<Vec<Connection>> {
        let get = Self::message(ConntrackMessage::Get(vec![]));
        let msgs = self
            .chan
            .exchange(get, NLM_F_REQUEST | NLM_F_DUMP, true)?
            .map_err(|e| fail("list", "connection tracking", e))?;
        Ok(msgs.into_iter().filter_map(connection).collect())
    }

    /// Deletes `c` from the table: its next packet is a new connection, judged afresh. False
    /// when it was already gone (ended or timed out).
    pub fn delete(&mut self, c: &Connection) -> Result<bool> {
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(c.raw_orig.clone())];
        if c.zone != 0 {
            attrs.push(ConntrackAttribute::Other(DefaultNla::new(
                CTA_ZONE,
                c.zone.to_be_bytes().to_vec(),
            )));
        }
        let del = Self::message(ConntrackMessage::Delete(attrs));
        match self.chan.exchange(del, NLM_F_REQUEST | NLM_F_ACK, false)? {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(fail("delete", &format!("connection {:?}", c.orig), e)),
        }
    }
}

/// The connection a dump message describes, if it is a whole IPv4 one.
fn connection(msg: NetfilterMessage) -> Option<Connection> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = msg.inner else {
        return None;
    };
    let (mut orig, mut reply, mut zone) = (None, None, 0);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
            ConntrackAttribute::Other(nla) if Nla::kind(&nla) == CTA_ZONE => {
                zone = zone_of(&nla).unwrap_or(0);
            }
            _ => {}
        }
    }
    let raw_orig = orig?;
    let (protocol, o) = tuple(&raw_orig)?;
    let (_, r) = tuple(&reply?)?;
    Some(Connection { protocol, orig: o, reply: r, zone, raw_orig })
}

fn zone_of(nla: &DefaultNla) -> Option<u16> {
    let mut value = vec![0u8; nla.value_len()];
    nla.emit_value(&mut value);
    Some(u16::from_be_bytes([*value.first()?, *value.get(1)?]))
}

/// The protocol and addresses of one direction's tuple, if it has IPv4 addresses.
fn tuple(parts: &[NlTuple]) -> Option<(u8, Tuple)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for part in parts {
        match part {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(IpAddr::V4(a)) => src = Some(*a),
                        IPTuple::DestinationAddress(IpAddr::V4(a)) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, Tuple { src: src?, dst: dst?, sport, dport }))
}
