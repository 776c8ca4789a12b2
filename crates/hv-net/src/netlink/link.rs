//! Links: bridges, veth pairs, VXLAN and VLAN devices; up/down, enslaving, moving to another
//! namespace, deleting. Creating a link that already exists with the same kind succeeds.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{check_ifname, fail, is_unsupported, Netlink, NetlinkError, Result};

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Driver kind (`bridge`, `veth`, `vxlan`, `tun`...), `None` for plain devices like `lo`.
    pub kind: Option<String>,
    /// Index of the bridge this link is enslaved to.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// MTU in bytes.
    pub mtu: Option<u32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mac: None,
            mtu: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Controller(i) => link.master = Some(*i),
                LinkAttribute::Mtu(v) => link.mtu = Some(*v),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    link.mac = Some(mac);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A VXLAN link's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Local underlay address the tunnel sends from.
    pub local: Option<Ipv4Addr>,
    /// Remote endpoint: a unicast peer, or a multicast group (then `underlay` is needed).
    pub remote: Option<Ipv4Addr>,
    /// Underlay link the tunnel is bound to.
    pub underlay: Option<String>,
    /// UDP destination port (IANA's 4789 by default).
    pub port: u16,
    /// Learn remote MACs from received frames (on by default).
    pub learning: bool,
}

impl VxlanConfig {
    /// A VXLAN on `vni` with the IANA port and learning on, no endpoints yet.
    pub fn new(vni: u32) -> VxlanConfig {
        VxlanConfig { vni, local: None, remote: None, underlay: None, port: 4789, learning: true }
    }
}

fn with_kind(kind: InfoKind, data: Option<InfoData>) -> LinkAttribute {
    let mut infos = vec![LinkInfo::Kind(kind)];
    if let Some(d) = data {
        infos.push(LinkInfo::Data(d));
    }
    LinkAttribute::LinkInfo(infos)
}

fn named(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

impl Netlink {
    /// The link called `name`, or `None` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        check_ifname(name)?;
        match self.request(RouteNetlinkMessage::GetLink(named(name)), 0)? {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(fail("look up link", name, e)),
        }
    }

    /// The link called `name`, or [`NetlinkError::LinkNotFound`].
    pub fn require_link(&mut self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| NetlinkError::LinkNotFound(name.to_string()))
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .map_err(|e| fail("dump links", "*", e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a link of `wanted` kind from `msg` unless one with that name exists already;
    /// an existing link of another kind is an error.
    fn create_link(
        &mut self,
        name: &str,
        wanted: &'static str,
        what: &'static str,
        msg: LinkMessage,
    ) -> Result<Link> {
        check_ifname(name)?;
        if let Some(existing) = self.link(name)? {
            return match existing.kind.as_deref() {
                Some(k) if k == wanted => Ok(existing),
                k => Err(NetlinkError::KindMismatch {
                    name: name.to_string(),
                    found: k.unwrap_or("plain").to_string(),
                    wanted,
                }),
            };
        }
        match self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)? {
            Ok(_) => self.require_link(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.require_link(name),
            Err(e) if is_unsupported(&e) => {
                Err(NetlinkError::Unsupported { what, object: name.to_string(), source: e })
            }
            Err(e) => Err(fail("create link", name, e)),
        }
    }

    /// Creates a Linux bridge (idempotent).
    pub fn create_bridge(&mut self, name: &str) -> Result<Link> {
        let mut m = named(name);
        m.attributes.push(with_kind(InfoKind::Bridge, None));
        self.create_link(name, "bridge", "bridge devices", m)
    }

    /// Creates a veth pair `name` <-> `peer` (idempotent on `name`).
    pub fn create_veth(&mut self, name: &str, peer: &str) -> Result<Link> {
        check_ifname(peer)?;
        let mut m = named(name);
        m.attributes
            .push(with_kind(InfoKind::Veth, Some(InfoData::Veth(InfoVeth::Peer(named(peer))))));
        self.create_link(name, "veth", "veth pairs", m)
    }

    /// Creates a VXLAN link (idempotent).
    pub fn create_vxlan(&mut self, name: &str, cfg: &VxlanConfig) -> Result<Link> {
        let mut data = vec![
            InfoVxlan::Id(cfg.vni),
            InfoVxlan::Port(cfg.port),
            InfoVxlan::Learning(cfg.learning),
        ];
        if let Some(local) = cfg.local {
            data.push(InfoVxlan::Local(local));
        }
        if let Some(remote) = cfg.remote {
            data.push(InfoVxlan::Group(remote));
        }
        if let Some(dev) = &cfg.underlay {
            data.push(InfoVxlan::Link(self.require_link(dev)?.index));
        }
        let mut m = named(name);
        m.attributes.push(with_kind(InfoKind::Vxlan, Some(InfoData::Vxlan(data))));
        self.create_link(name, "vxlan", "VXLAN devices", m)
    }

    /// Creates an 802.1Q VLAN device `name` on `parent` with tag `id`; a kernel without
    /// 802.1Q gives [`NetlinkError::Unsupported`].
    pub fn create_vlan(&mut self, name: &str, parent: &str, id: u16) -> Result<Link> {
        let parent_index = self.require_link(parent)?.index;
        let mut m = named(name);
        m.attributes.push(LinkAttribute::Link(parent_index));
        m.attributes.push(with_kind(InfoKind::Vlan, Some(InfoData::Vlan(vec![InfoVlan::Id(id)]))));
        self.create_link(name, "vlan", "802.1Q VLAN devices", m)
    }

    /// Turns VLAN filtering on or off on a bridge; a kernel without it gives
    /// [`NetlinkError::Unsupported`].
    pub fn set_bridge_vlan_filtering(&mut self, bridge: &str, on: bool) -> Result<()> {
        let index = self.require_link(bridge)?.index;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(with_kind(
            InfoKind::Bridge,
            Some(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ));
        // Link-kind options change through RTM_NEWLINK on the existing index (RTM_SETLINK
        // ignores IFLA_LINKINFO), as iproute2's `ip link set ... type bridge` does.
        match self.request(RouteNetlinkMessage::NewLink(m), 0)? {
            Ok(_) if self.bridge_vlan_filtering(bridge)? == Some(on) => Ok(()),
            Ok(_) => Err(NetlinkError::Unsupported {
                what: "bridge VLAN filtering",
                object: bridge.to_string(),
                source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            }),
            Err(e) if is_unsupported(&e) => Err(NetlinkError::Unsupported {
                what: "bridge VLAN filtering",
                object: bridge.to_string(),
                source: e,
            }),
            Err(e) => Err(fail("set VLAN filtering on", bridge, e)),
        }
    }

    /// The bridge's VLAN filtering setting as the kernel reports it (`None` if not reported).
    pub fn bridge_vlan_filtering(&mut self, bridge: &str) -> Result<Option<bool>> {
        check_ifname(bridge)?;
        let msgs = match self.request(RouteNetlinkMessage::GetLink(named(bridge)), 0)? {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                return Err(NetlinkError::LinkNotFound(bridge.to_string()))
            }
            Err(e) => return Err(fail("look up link", bridge, e)),
        };
        for m in &msgs {
            let RouteNetlinkMessage::NewLink(l) = m else { continue };
            for attr in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = attr else { continue };
                for info in infos {
                    if let LinkInfo::Data(InfoData::Bridge(opts)) = info {
                        for o in opts {
                            if let InfoBridge::VlanFiltering(v) = o {
                                return Ok(Some(*v));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    fn set_link(
        &mut self,
        op: &'static str,
        name: &str,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<()> {
        let index = self.require_link(name)?.index;
        let mut m = LinkMessage::default();
        m.header.index = index;
        edit(&mut m);
        self.request(RouteNetlinkMessage::SetLink(m), 0)?.map(|_| ()).map_err(|e| fail(op, name, e))
    }

    /// Brings a link up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        self.set_link("bring up", name, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Takes a link down.
    pub fn set_down(&mut self, name: &str) -> Result<()> {
        self.set_link("take down", name, |m| {
            m.header.flags = LinkFlags::empty();
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Enslaves `name` to the bridge `master`.
    pub fn set_master(&mut self, name: &str, master: &str) -> Result<()> {
        let master_index = self.require_link(master)?.index;
        self.set_link("enslave", name, |m| {
            m.attributes.push(LinkAttribute::Controller(master_index))
        })
    }

    /// Releases `name` from its bridge.
    pub fn set_nomaster(&mut self, name: &str) -> Result<()> {
        self.set_link("release", name, |m| m.attributes.push(LinkAttribute::Controller(0)))
    }

    /// Sets a link's hardware address.
    pub fn set_mac(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        self.set_link("set address of", name, |m| {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()))
        })
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        self.set_link("set MTU of", name, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    /// Moves a link into the network namespace whose file (e.g. `/run/netns/NAME`) is `ns`.
    pub fn move_to_netns(&mut self, name: &str, ns: &impl AsRawFd) -> Result<()> {
        let fd = ns.as_raw_fd();
        self.set_link("move to namespace", name, |m| m.attributes.push(LinkAttribute::NetNsFd(fd)))
    }

    /// Deletes a link; `Ok(false)` when there was none (deleting is idempotent).
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        let mut m = LinkMessage::default();
        m.header.index = link.index;
        match self.request(RouteNetlinkMessage::DelLink(m), 0)? {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(fail("delete link", name, e)),
        }
    }
}
