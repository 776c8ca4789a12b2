//! Networking (Neutron's job): tenant networks, subnets with IPAM, ports, security groups,
//! routers and floating IPs.
//!
//! - A [`Network`] gets a VXLAN segment id (unique cloud-wide, reserved in the store) so the
//!   design spans hosts; on this host it becomes an hv-net network with a bridge of its own once
//!   it has a [`Subnet`] (one IPv4 subnet per network here: the bridge carries its gateway).
//! - IPAM: a port's fixed IPs come from its subnet's allocation pools; each address is reserved
//!   by a unique name record in the same transaction as the port, so two concurrent ports never
//!   get the same address. DHCP (hv-net's server) hands every port its fixed IP by MAC.
//! - Port security is on by default: hv-net's per-port nftables table (anti-spoofing plus the
//!   port's security groups) on the instance's TAP. The default group allows ingress only from
//!   its members and all egress; rule changes are applied to running instances at once.
//! - Networks of different projects are separate bridges whose forwarding is dropped, so one
//!   project's instances cannot reach another's network. A router interface masquerades a
//!   subnet out; floating IPs are addresses of the external network bound 1:1 to a port.
//!
//! A foreign id answers exactly like a missing one; shared and external networks are visible to
//! every project (read only), as in Neutron.

mod host;
pub(crate) mod port;
mod router;
mod secgroup;
mod subnet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::event;
use crate::identity::name_record;
use crate::ids::{now, random_bytes, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::quota::Resource as Quota;
use crate::records::{impl_resource, list, load, to_record};
use crate::store::{Kind, Op, QuotaMode, StoreError};
use crate::{check_name, Cloud};

pub use port::{FixedIp, FixedIpRequest, NewPort, Port, PortStatus, PortUpdate};
pub use router::{ExternalGateway, FloatingIp, Router, RouterInterface};
pub use secgroup::{Direction, NewSecurityGroupRule, Protocol, SecurityGroup, SecurityGroupRule};
pub use subnet::{AllocationPool, NewSubnet, Subnet};

/// A tenant (or external) network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// UUID.
    pub id: String,
    /// Name (not unique).
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// `ACTIVE`.
    pub status: String,
    /// Administratively up.
    pub admin_state_up: bool,
    /// Visible to every project (Neutron's `shared`).
    pub shared: bool,
    /// An external network (Neutron's `router:external`): floating IPs and router gateways.
    pub external: bool,
    /// Neutron's `provider:network_type`: always `vxlan`.
    pub network_type: String,
    /// The VXLAN segment id (`provider:segmentation_id`), unique cloud-wide.
    pub segmentation_id: u32,
    /// MTU.
    pub mtu: u32,
    /// Its subnets' ids.
    pub subnets: Vec<String>,
    /// The hv-net network carrying it on a host (bridge `hv<host_name>`).
    pub host_name: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl_resource!(Network, Kind::Network, "network", |s| Some(&s.project_id));

/// What a new network needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewNetwork {
    /// Name.
    pub name: String,
    /// Visible to every project (admin only).
    pub shared: bool,
    /// An external network (admin only).
    pub external: bool,
}

impl NewNetwork {
    /// A private tenant network.
    pub fn new(name: &str) -> NewNetwork {
        NewNetwork { name: name.into(), shared: false, external: false }
    }
}

/// How many times a racing allocation (segment id, address) is retried.
pub(crate) const ALLOC_TRIES: usize = 64;

/// Maps a lost optimistic update to a retryable conflict.
pub(crate) fn stale<'a>(kind: &'static str, id: &'a str) -> impl FnOnce(StoreError) -> Error + 'a {
    move |e| match e {
        StoreError::Stale { .. } => {
            Error::Conflict { kind, id: id.into(), reason: "changed concurrently; retry".into() }
        }
        e => Error::from_store(e),
    }
}

impl Cloud {
    /// Makes a network in the caller's project with a fresh VXLAN segment id.
    pub fn create_network(&self, ctx: &Context, new: &NewNetwork) -> Result<Network> {
        authorize(ctx, Action::NetworkCreate)?;
        if new.shared || new.external {
            authorize(ctx, Action::NetworkCreateExternal)?;
        }
        check_name("network name", &new.name)?;
        let id = uuid();
        let t = now();
        for _ in 0..ALLOC_TRIES {
            let b = random_bytes::<4>();
            let vni = (u32::from_be_bytes(b) & 0x00ff_ffff).max(1);
            let net = Network {
                id: id.clone(),
                name: new.name.clone(),
                project_id: ctx.project_id().into(),
                status: "ACTIVE".into(),
                admin_state_up: true,
                shared: new.shared,
                external: new.external,
                network_type: "vxlan".into(),
                segmentation_id: vni,
                mtu: 1450,
                subnets: vec![],
                host_name: host::network_name(&id),
                created_at: t,
                updated_at: t,
            };
            let r = self.store().apply(&[
                self.quota_op(ctx.project_id(), &[(Quota::Networks, 1)], QuotaMode::Use),
                Op::Insert(name_record("vni", "", &vni.to_string(), &id)),
                Op::Insert(to_record(&net, 1)),
                event(
                    ctx,
                    ctx.project_id(),
                    "network.create",
                    "network",
                    &id,
                    serde_json::json!({"name": net.name, "segmentation_id": vni}),
                ),
            ]);
            match r {
                Ok(()) => return Ok(net),
                Err(StoreError::Exists { kind, .. }) if kind == Kind::Name.as_str() => continue,
                Err(e) => return Err(Error::from_store(e)),
            }
        }
        Err(Error::Conflict { kind: "network", id, reason: "no free segment id found".into() })
    }

    /// True when the caller may see (not necessarily change) `net`.
    fn network_visible(ctx: &Context, net: &Network) -> bool {
        ctx.owns(&net.project_id) || net.shared || net.external
    }

    /// A network the caller may see, with its version.
    pub(crate) fn load_network(&self, ctx: &Context, id: &str) -> Result<(Network, i64)> {
        match load::<Network>(self.store(), id)? {
            Some((n, v)) if Self::network_visible(ctx, &n) => Ok((n, v)),
            _ => Err(Error::not_found("network", id)),
        }
    }

    /// One network.
    pub fn get_network(&self, ctx: &Context, id: &str) -> Result<Network> {
        authorize(ctx, Action::NetworkGet)?;
        Ok(self.load_network(ctx, id)?.0)
    }

    /// The networks the caller sees: its own, shared and external ones (an admin: all).
    pub fn list_networks(&self, ctx: &Context) -> Result<Vec<Network>> {
        authorize(ctx, Action::NetworkList)?;
        Ok(list::<Network>(self.store(), None, None)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| Self::network_visible(ctx, n))
            .collect())
    }

    /// Deletes a network of the caller's project that has no ports left (its subnets go with
    /// it), and its bridge on the host.
    pub fn delete_network(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::NetworkDelete)?;
        let net = match load::<Network>(self.store(), id)? {
            Some((n, _)) if ctx.owns(&n.project_id) => n,
            _ => return Err(Error::not_found("network", id)),
        };
        let ports = self.ports_of_network(id)?;
        if let Some(p) = ports.first() {
            return Err(Error::Conflict {
                kind: "network",
                id: id.into(),
                reason: format!("port '{}' is still on it", p.id),
            });
        }
        self.remove_host_network(&net)?;
        let mut ops = vec![
            Op::Delete(Kind::Network, id.into()),
            Op::Delete(Kind::Name, name_record("vni", "", &net.segmentation_id.to_string(), id).id),
            self.quota_op(&net.project_id, &[(Quota::Networks, 1)], QuotaMode::Release),
            event(ctx, &net.project_id, "network.delete", "network", id, serde_json::json!({})),
        ];
        for s in &net.subnets {
            ops.push(Op::Delete(Kind::Subnet, s.clone()));
        }
        self.store().apply(&ops).map_err(Error::from_store)
    }
}
