//! Interface addresses and routes in the main table. Adding what exists and deleting what is
//! gone both succeed.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{fail, Netlink, Result};

/// An address assigned to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// Prefix length of its subnet.
    pub prefix: u8,
}

/// A route in the main routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dest: IpAddr,
    /// Destination prefix length (0 for a default route).
    pub prefix: u8,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(&ip);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    m
}

impl Netlink {
    /// Assigns `ip/prefix` to the link `dev` (idempotent).
    pub fn add_address(&mut self, dev: &str, ip: IpAddr, prefix: u8) -> Result<()> {
        let index = self.require_link(dev)?.index;
        let object = format!("{ip}/{prefix} on {dev}");
        let msg = RouteNetlinkMessage::NewAddress(address_message(index, ip, prefix));
        match self.request(msg, NLM_F_CREATE | NLM_F_EXCL)? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(fail("add address", &object, e)),
        }
    }

    /// Removes `ip/prefix` from the link `dev`; `Ok(false)` when it was not there.
    pub fn delete_address(&mut self, dev: &str, ip: IpAddr, prefix: u8) -> Result<bool> {
        let Some(link) = self.link(dev)? else {
            return Ok(false);
        };
        let object = format!("{ip}/{prefix} on {dev}");
        let msg = RouteNetlinkMessage::DelAddress(address_message(link.index, ip, prefix));
        match self.request(msg, 0)? {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(fail("delete address", &object, e)),
        }
    }

    /// Every address in the namespace, or only those of `dev`.
    pub fn addresses(&mut self, dev: Option<&str>) -> Result<Vec<Address>> {
        let index = match dev {
            Some(d) => Some(self.require_link(d)?.index),
            None => None,
        };
        let msgs = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
            .map_err(|e| fail("dump addresses", dev.unwrap_or("*"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else { continue };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push(Address { index: a.header.index, ip, prefix: a.header.prefix_len });
            }
        }
        Ok(out)
    }

    fn route_message(
        &mut self,
        dest: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dev: Option<&str>,
    ) -> Result<RouteMessage> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dest);
        m.header.destination_prefix_length = prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
        m.header.kind = RouteType::Unicast;
        if prefix > 0 {
            m.attributes.push(RouteAttribute::Destination(RouteAddress::from(dest)));
        }
        if let Some(gw) = gateway {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(dev) = dev {
            let index = self.require_link(dev)?.index;
            m.attributes.push(RouteAttribute::Oif(index));
        }
        Ok(m)
    }

    /// Adds a route to `dest/prefix` via `gateway` and/or out of `dev` (idempotent).
    pub fn add_route(
        &mut self,
        dest: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dev: Option<&str>,
    ) -> Result<()> {
        let object = format!("{dest}/{prefix}");
        let m = self.route_message(dest, prefix, gateway, dev)?;
        match self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(fail("add route", &object, e)),
        }
    }

    /// Deletes the route to `dest/prefix`; `Ok(false)` when there was none.
    pub fn delete_route(
        &mut self,
        dest: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dev: Option<&str>,
    ) -> Result<bool> {
        let object = format!("{dest}/{prefix}");
        if let Some(d) = dev {
            if self.link(d)?.is_none() {
                return Ok(false);
            }
        }
        let mut m = self.route_message(dest, prefix, gateway, dev)?;
        m.header.scope = RouteScope::NoWhere;
        match self.request(RouteNetlinkMessage::DelRoute(m), 0)? {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(fail("delete route", &object, e)),
        }
    }

    /// The routes of the main table (IPv4 and IPv6).
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let msgs = self
            .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?
            .map_err(|e| fail("dump routes", "main table", e))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else { continue };
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let unspecified = match r.header.address_family {
                AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
                _ => IpAddr::from([0u8; 4]),
            };
            let mut route = Route {
                dest: unspecified,
                prefix: r.header.destination_prefix_length,
                gateway: None,
                oif: None,
            };
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(a) => {
                        route.dest = route_ip(a).unwrap_or(unspecified)
                    }
                    RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
