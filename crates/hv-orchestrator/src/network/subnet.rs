//! Subnets: an IPv4 CIDR on a network, its gateway, allocation pools and DHCP.

use std::net::Ipv4Addr;

use hv_net::Ipv4Cidr;
use serde::{Deserialize, Serialize};

use super::{stale, Network};
use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{now, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::records::{impl_resource, list, load, to_record};
use crate::store::{Kind, Op};
use crate::{check_name, Cloud};

/// A range of addresses ports are given from, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationPool {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

/// An IPv4 subnet of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning project (the network's).
    pub project_id: String,
    /// The network.
    pub network_id: String,
    /// Always 4.
    pub ip_version: u8,
    /// The subnet, `a.b.c.d/n` (network address).
    pub cidr: String,
    /// The gateway (the host's address on the network's bridge, and a router's interface).
    pub gateway_ip: Ipv4Addr,
    /// Where ports' addresses come from.
    pub allocation_pools: Vec<AllocationPool>,
    /// Whether DHCP hands ports their addresses.
    pub enable_dhcp: bool,
    /// DNS servers handed out (recorded; hv-net's DHCP server announces the gateway).
    pub dns_nameservers: Vec<Ipv4Addr>,
    /// When it was made.
    pub created_at: Timestamp,
}

impl_resource!(Subnet, Kind::Subnet, "subnet", |s| Some(&s.project_id));

/// What a new subnet needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubnet {
    /// Name.
    pub name: String,
    /// The network.
    pub network_id: String,
    /// `a.b.c.d/n`, a /8 to /29.
    pub cidr: String,
    /// The gateway (default: the first host address).
    pub gateway_ip: Option<Ipv4Addr>,
    /// Pools (default: every host address but the gateway).
    pub allocation_pools: Vec<AllocationPool>,
    /// DHCP on (default true).
    pub enable_dhcp: bool,
    /// DNS servers.
    pub dns_nameservers: Vec<Ipv4Addr>,
}

impl NewSubnet {
    /// A subnet with DHCP, the first address as gateway and the rest as its pool.
    pub fn new(name: &str, network_id: &str, cidr: &str) -> NewSubnet {
        NewSubnet {
            name: name.into(),
            network_id: network_id.into(),
            cidr: cidr.into(),
            gateway_ip: None,
            allocation_pools: vec![],
            enable_dhcp: true,
            dns_nameservers: vec![],
        }
    }
}

impl Subnet {
    /// The subnet as a CIDR.
    pub fn cidr(&self) -> Ipv4Cidr {
        // Validated when the subnet was made.
        self.cidr.parse().unwrap_or(Ipv4Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 32 })
    }

    /// The gateway with the subnet's prefix (the bridge's address).
    pub(crate) fn gateway_cidr(&self) -> Ipv4Cidr {
        Ipv4Cidr { addr: self.gateway_ip, prefix: self.cidr().prefix }
    }

    /// The pool DHCP hands out from (the first one).
    pub(crate) fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        self.allocation_pools
            .first()
            .map(|p| (p.start, p.end))
            .unwrap_or((self.gateway_ip, self.gateway_ip))
    }
}

/// Checks a new subnet: returns its network CIDR, gateway and pools.
fn plan(new: &NewSubnet) -> Result<(Ipv4Cidr, Ipv4Addr, Vec<AllocationPool>)> {
    let c: Ipv4Cidr =
        new.cidr.parse().map_err(|e| Error::invalid("cidr", format!("'{}': {e}", new.cidr)))?;
    if !(8..=29).contains(&c.prefix) {
        return Err(Error::invalid("cidr", "the prefix must be /8 to /29"));
    }
    let net = c.network();
    let first = u32::from(net.addr) + 1;
    let last = u32::from(net.broadcast()) - 1;
    let in_hosts = |ip: Ipv4Addr| (first..=last).contains(&u32::from(ip));
    let gateway = new.gateway_ip.unwrap_or(Ipv4Addr::from(first));
    if !in_hosts(gateway) {
        return Err(Error::invalid("gateway_ip", format!("{gateway} is not a host of {net}")));
    }
    let pools = if new.allocation_pools.is_empty() {
        let g = u32::from(gateway);
        let (s, e) = if g == first { (first + 1, last) } else { (first, g - 1) };
        vec![AllocationPool { start: s.into(), end: e.into() }]
    } else {
        new.allocation_pools.clone()
    };
    for p in &pools {
        if !in_hosts(p.start) || !in_hosts(p.end) || u32::from(p.start) > u32::from(p.end) {
            return Err(Error::invalid(
                "allocation_pools",
                format!("{}-{} is not a range of hosts of {net}", p.start, p.end),
            ));
        }
        if (u32::from(p.start)..=u32::from(p.end)).contains(&u32::from(gateway)) {
            return Err(Error::invalid("allocation_pools", "a pool must not hold the gateway"));
        }
    }
    Ok((net, gateway, pools))
}

impl Cloud {
    /// Adds a subnet to a network of the caller's project (one IPv4 subnet per network: the
    /// network's bridge carries its gateway) and brings the network up on the host.
    pub fn create_subnet(&self, ctx: &Context, new: &NewSubnet) -> Result<Subnet> {
        authorize(ctx, Action::SubnetCreate)?;
        check_name("subnet name", &new.name)?;
        let (mut net, version) = match load::<Network>(self.store(), &new.network_id)? {
            Some((n, v)) if ctx.owns(&n.project_id) => (n, v),
            _ => return Err(Error::not_found("network", &new.network_id)),
        };
        if !net.subnets.is_empty() {
            return Err(Error::Unsupported(
                "one IPv4 subnet per network (its bridge carries the subnet's gateway)".into(),
            ));
        }
        let (cidr, gateway, pools) = plan(new)?;
        let s = Subnet {
            id: uuid(),
            name: new.name.clone(),
            project_id: net.project_id.clone(),
            network_id: net.id.clone(),
            ip_version: 4,
            cidr: cidr.to_string(),
            gateway_ip: gateway,
            allocation_pools: pools,
            enable_dhcp: new.enable_dhcp,
            dns_nameservers: new.dns_nameservers.clone(),
            created_at: now(),
        };
        net.subnets.push(s.id.clone());
        net.updated_at = now();
        self.store()
            .apply(&[
                Op::Insert(to_record(&s, 1)),
                Op::Update(to_record(&net, version)),
                event(
                    ctx,
                    &s.project_id,
                    "subnet.create",
                    "subnet",
                    &s.id,
                    serde_json::json!({"cidr": s.cidr, "network": net.id}),
                ),
            ])
            .map_err(stale("network", &net.id))?;
        if let Err(e) = self.sync_host_network(&net.id) {
            log::warn!("network {}: cannot bring it up on the host: {e}", net.id);
            return Err(e);
        }
        Ok(s)
    }

    /// A subnet the caller may see (its network's visibility).
    pub(crate) fn load_subnet(&self, ctx: &Context, id: &str) -> Result<Subnet> {
        if let Some((s, _)) = load::<Subnet>(self.store(), id)? {
            if self.load_network(ctx, &s.network_id).is_ok() {
                return Ok(s);
            }
        }
        Err(Error::not_found("subnet", id))
    }

    /// One subnet.
    pub fn get_subnet(&self, ctx: &Context, id: &str) -> Result<Subnet> {
        authorize(ctx, Action::SubnetGet)?;
        self.load_subnet(ctx, id)
    }

    /// The subnets of the networks the caller sees.
    pub fn list_subnets(&self, ctx: &Context) -> Result<Vec<Subnet>> {
        authorize(ctx, Action::SubnetList)?;
        let visible: std::collections::HashSet<String> =
            self.list_networks(ctx)?.into_iter().map(|n| n.id).collect();
        Ok(list::<Subnet>(self.store(), None, None)?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| visible.contains(&s.network_id))
            .collect())
    }

    /// Deletes a subnet no port uses (its network goes down on the host).
    pub fn delete_subnet(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::SubnetDelete)?;
        let s = match load::<Subnet>(self.store(), id)? {
            Some((s, _)) if ctx.owns(&s.project_id) => s,
            _ => return Err(Error::not_found("subnet", id)),
        };
        if let Some(p) = self.ports_of_network(&s.network_id)?.first() {
            return Err(Error::Conflict {
                kind: "subnet",
                id: id.into(),
                reason: format!("port '{}' has an address in it", p.id),
            });
        }
        let (mut net, version) = load::<Network>(self.store(), &s.network_id)?
            .ok_or_else(|| Error::not_found("network", &s.network_id))?;
        self.remove_host_network(&net)?;
        net.subnets.retain(|x| x != id);
        self.store()
            .apply(&[
                Op::Delete(Kind::Subnet, id.into()),
                Op::Update(to_record(&net, version)),
                event(ctx, &s.project_id, "subnet.delete", "subnet", id, serde_json::json!({})),
            ])
            .map_err(stale("network", &net.id))
    }
}
