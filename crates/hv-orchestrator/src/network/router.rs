//! Routers and floating IPs. A router with a gateway on an external network and an interface
//! on a tenant subnet masquerades that subnet out (hv-net's NAT table on the network's bridge);
//! a floating IP is an address of the external network reserved as a port there and associated
//! 1:1 with a tenant port.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::port::{FixedIpRequest, NewPort, OWNER_FLOATING, OWNER_GATEWAY, OWNER_ROUTER};
use super::{stale, Network, Port};
use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{now, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::quota::Resource as Quota;
use crate::records::{impl_resource, list, load, to_record};
use crate::store::{Kind, Op, QuotaMode};
use crate::{check_name, Cloud};

/// A router's gateway on an external network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalGateway {
    /// The external network.
    pub network_id: String,
    /// The gateway port there.
    pub port_id: String,
    /// Its address.
    pub external_ip: Ipv4Addr,
}

/// One interface of a router on a tenant subnet (it holds the subnet's gateway address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterInterface {
    /// The subnet.
    pub subnet_id: String,
    /// The interface's port.
    pub port_id: String,
}

/// A router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// `ACTIVE`.
    pub status: String,
    /// Its gateway, if set.
    pub external_gateway: Option<ExternalGateway>,
    /// Its interfaces.
    pub interfaces: Vec<RouterInterface>,
    /// When it was made.
    pub created_at: Timestamp,
}

impl_resource!(Router, Kind::Router, "router", |s| Some(&s.project_id));

/// A floating IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// UUID.
    pub id: String,
    /// The address, as text (the store's name column).
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// The external network it comes from.
    pub floating_network_id: String,
    /// The address.
    pub floating_ip_address: Ipv4Addr,
    /// The port on the external network that reserves the address.
    pub reservation_port_id: String,
    /// The tenant port it maps to.
    pub port_id: Option<String>,
    /// That port's address.
    pub fixed_ip_address: Option<Ipv4Addr>,
    /// `ACTIVE` when associated, else `DOWN`.
    pub status: String,
    /// When it was made.
    pub created_at: Timestamp,
}

impl_resource!(FloatingIp, Kind::FloatingIp, "floating ip", |s| Some(&s.project_id));

impl Cloud {
    /// Makes a router in the caller's project, with a gateway on `external_network_id` if given.
    pub fn create_router(
        &self,
        ctx: &Context,
        name: &str,
        external_network_id: Option<&str>,
    ) -> Result<Router> {
        authorize(ctx, Action::RouterCreate)?;
        check_name("router name", name)?;
        let r = Router {
            id: uuid(),
            name: name.into(),
            project_id: ctx.project_id().into(),
            status: "ACTIVE".into(),
            external_gateway: None,
            interfaces: vec![],
            created_at: now(),
        };
        self.store().apply(&[
            Op::Insert(to_record(&r, 1)),
            event(
                ctx,
                &r.project_id,
                "router.create",
                "router",
                &r.id,
                serde_json::json!({"name": name}),
            ),
        ])?;
        match external_network_id {
            Some(n) => self.set_router_gateway(ctx, &r.id, Some(n)),
            None => Ok(r),
        }
    }

    fn load_router(&self, ctx: &Context, id: &str) -> Result<(Router, i64)> {
        match load::<Router>(self.store(), id)? {
            Some((r, v)) if ctx.owns(&r.project_id) => Ok((r, v)),
            _ => Err(Error::not_found("router", id)),
        }
    }

    /// One router.
    pub fn get_router(&self, ctx: &Context, id: &str) -> Result<Router> {
        authorize(ctx, Action::RouterGet)?;
        Ok(self.load_router(ctx, id)?.0)
    }

    /// The caller's routers.
    pub fn list_routers(&self, ctx: &Context) -> Result<Vec<Router>> {
        authorize(ctx, Action::RouterList)?;
        Ok(list::<Router>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Sets (or with `None` clears) a router's gateway on an external network.
    pub fn set_router_gateway(
        &self,
        ctx: &Context,
        router_id: &str,
        external_network_id: Option<&str>,
    ) -> Result<Router> {
        authorize(ctx, Action::RouterUpdate)?;
        let (mut r, version) = self.load_router(ctx, router_id)?;
        let old = r.external_gateway.take();
        if let Some(net_id) = external_network_id {
            let (net, _) = self.load_network(ctx, net_id)?;
            if !net.external {
                return Err(Error::invalid("external_network_id", "the network is not external"));
            }
            let mut np = NewPort::new(net_id);
            np.device_id = r.id.clone();
            np.device_owner = OWNER_GATEWAY.into();
            let p = self.make_port(ctx, &np, &r.project_id, true)?;
            let ip = p.ips().first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
            r.external_gateway =
                Some(ExternalGateway { network_id: net.id, port_id: p.id, external_ip: ip });
        }
        self.store()
            .apply(&[
                Op::Update(to_record(&r, version)),
                event(
                    ctx,
                    &r.project_id,
                    "router.gateway",
                    "router",
                    router_id,
                    serde_json::json!({"network": external_network_id}),
                ),
            ])
            .map_err(stale("router", router_id))?;
        if let Some(g) = old {
            if let Some((p, _)) = load::<Port>(self.store(), &g.port_id)? {
                self.drop_port(ctx, &p, false)?;
            }
        }
        self.sync_router_networks(&r)?;
        Ok(r)
    }

    fn sync_router_networks(&self, r: &Router) -> Result<()> {
        for i in &r.interfaces {
            if let Some((p, _)) = load::<Port>(self.store(), &i.port_id)? {
                self.sync_host_network(&p.network_id)?;
            }
        }
        Ok(())
    }

    /// Adds an interface on a subnet of the caller's project: the router takes the subnet's
    /// gateway address, and (with a gateway) the subnet is NATed out.
    pub fn add_router_interface(
        &self,
        ctx: &Context,
        router_id: &str,
        subnet_id: &str,
    ) -> Result<RouterInterface> {
        authorize(ctx, Action::RouterUpdate)?;
        let (mut r, version) = self.load_router(ctx, router_id)?;
        let s = self.load_subnet(ctx, subnet_id)?;
        if !ctx.owns(&s.project_id) {
            return Err(Error::not_found("subnet", subnet_id));
        }
        if r.interfaces.iter().any(|i| i.subnet_id == subnet_id) {
            return Err(Error::Conflict {
                kind: "router",
                id: router_id.into(),
                reason: "it already has an interface on this subnet".into(),
            });
        }
        let mut np = NewPort::new(&s.network_id);
        np.fixed_ips =
            vec![FixedIpRequest { subnet_id: Some(s.id.clone()), ip_address: Some(s.gateway_ip) }];
        np.device_id = r.id.clone();
        np.device_owner = OWNER_ROUTER.into();
        np.port_security_enabled = Some(false);
        let p = self.make_port(ctx, &np, &r.project_id, true)?;
        let i = RouterInterface { subnet_id: s.id.clone(), port_id: p.id };
        r.interfaces.push(i.clone());
        self.store()
            .apply(&[
                Op::Update(to_record(&r, version)),
                event(
                    ctx,
                    &r.project_id,
                    "router.interface.add",
                    "router",
                    router_id,
                    serde_json::json!({"subnet": s.id}),
                ),
            ])
            .map_err(stale("router", router_id))?;
        self.sync_host_network(&s.network_id)?;
        Ok(i)
    }

    /// Removes the router's interface on a subnet.
    pub fn remove_router_interface(
        &self,
        ctx: &Context,
        router_id: &str,
        subnet_id: &str,
    ) -> Result<()> {
        authorize(ctx, Action::RouterUpdate)?;
        let (mut r, version) = self.load_router(ctx, router_id)?;
        let Some(pos) = r.interfaces.iter().position(|i| i.subnet_id == subnet_id) else {
            return Err(Error::not_found("router interface", subnet_id));
        };
        let i = r.interfaces.remove(pos);
        self.store()
            .apply(&[
                Op::Update(to_record(&r, version)),
                event(
                    ctx,
                    &r.project_id,
                    "router.interface.remove",
                    "router",
                    router_id,
                    serde_json::json!({"subnet": subnet_id}),
                ),
            ])
            .map_err(stale("router", router_id))?;
        if let Some((p, _)) = load::<Port>(self.store(), &i.port_id)? {
            self.drop_port(ctx, &p, false)?;
        }
        Ok(())
    }

    /// Deletes a router without interfaces (its gateway goes with it).
    pub fn delete_router(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::RouterDelete)?;
        let (r, _) = self.load_router(ctx, id)?;
        if !r.interfaces.is_empty() {
            return Err(Error::Conflict {
                kind: "router",
                id: id.into(),
                reason: "it still has interfaces".into(),
            });
        }
        self.store().apply(&[
            Op::Delete(Kind::Router, id.into()),
            event(ctx, &r.project_id, "router.delete", "router", id, serde_json::json!({})),
        ])?;
        if let Some(g) = r.external_gateway {
            if let Some((p, _)) = load::<Port>(self.store(), &g.port_id)? {
                self.drop_port(ctx, &p, false)?;
            }
        }
        Ok(())
    }

    /// Allocates a floating IP from an external network, associated with `port_id` if given.
    pub fn create_floating_ip(
        &self,
        ctx: &Context,
        network_id: &str,
        port_id: Option<&str>,
    ) -> Result<FloatingIp> {
        authorize(ctx, Action::FloatingIpCreate)?;
        let (net, _) = self.load_network(ctx, network_id)?;
        if !net.external {
            return Err(Error::invalid("floating_network_id", "the network is not external"));
        }
        self.store()
            .apply(&[self.quota_op(ctx.project_id(), &[(Quota::FloatingIps, 1)], QuotaMode::Use)])
            .map_err(Error::from_store)?;
        let id = uuid();
        let mut np = NewPort::new(network_id);
        np.device_id = id.clone();
        np.device_owner = OWNER_FLOATING.into();
        let reservation = match self.make_port(ctx, &np, ctx.project_id(), true) {
            Ok(p) => p,
            Err(e) => {
                let release =
                    self.quota_op(ctx.project_id(), &[(Quota::FloatingIps, 1)], QuotaMode::Release);
                let _ = self.store().apply(&[release]);
                return Err(e);
            }
        };
        let ip = reservation.ips().first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let f = FloatingIp {
            id: id.clone(),
            name: ip.to_string(),
            project_id: ctx.project_id().into(),
            floating_network_id: net.id.clone(),
            floating_ip_address: ip,
            reservation_port_id: reservation.id,
            port_id: None,
            fixed_ip_address: None,
            status: "DOWN".into(),
            created_at: now(),
        };
        self.store().apply(&[
            Op::Insert(to_record(&f, 1)),
            event(
                ctx,
                &f.project_id,
                "floatingip.create",
                "floatingip",
                &id,
                serde_json::json!({"ip": ip}),
            ),
        ])?;
        match port_id {
            Some(p) => self.associate_floating_ip(ctx, &id, Some(p)),
            None => Ok(f),
        }
    }

    fn load_fip(&self, ctx: &Context, id: &str) -> Result<(FloatingIp, i64)> {
        match load::<FloatingIp>(self.store(), id)? {
            Some((f, v)) if ctx.owns(&f.project_id) => Ok((f, v)),
            _ => Err(Error::not_found("floating ip", id)),
        }
    }

    /// One floating IP.
    pub fn get_floating_ip(&self, ctx: &Context, id: &str) -> Result<FloatingIp> {
        authorize(ctx, Action::FloatingIpGet)?;
        Ok(self.load_fip(ctx, id)?.0)
    }

    /// The caller's floating IPs.
    pub fn list_floating_ips(&self, ctx: &Context) -> Result<Vec<FloatingIp>> {
        authorize(ctx, Action::FloatingIpList)?;
        Ok(list::<FloatingIp>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(f, _)| f)
            .collect())
    }

    /// Associates a floating IP with a port of the caller's project (`None`: dissociates).
    pub fn associate_floating_ip(
        &self,
        ctx: &Context,
        id: &str,
        port_id: Option<&str>,
    ) -> Result<FloatingIp> {
        authorize(ctx, Action::FloatingIpUpdate)?;
        let (mut f, version) = self.load_fip(ctx, id)?;
        match port_id {
            Some(pid) => {
                let (p, _) = self.load_port(ctx, pid)?;
                let net = load::<Network>(self.store(), &p.network_id)?.map(|(n, _)| n);
                if net.is_some_and(|n| n.external) {
                    return Err(Error::invalid("port_id", "a port on an external network"));
                }
                f.port_id = Some(p.id.clone());
                f.fixed_ip_address = p.ips().first().copied();
                f.status = "ACTIVE".into();
            }
            None => {
                f.port_id = None;
                f.fixed_ip_address = None;
                f.status = "DOWN".into();
            }
        }
        self.store()
            .apply(&[
                Op::Update(to_record(&f, version)),
                event(
                    ctx,
                    &f.project_id,
                    "floatingip.update",
                    "floatingip",
                    id,
                    serde_json::json!({"port": port_id}),
                ),
            ])
            .map_err(stale("floating ip", id))?;
        self.sync_floating_ips()?;
        Ok(f)
    }

    /// Releases a floating IP.
    pub fn delete_floating_ip(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::FloatingIpDelete)?;
        let (f, _) = self.load_fip(ctx, id)?;
        self.store().apply(&[
            Op::Delete(Kind::FloatingIp, id.into()),
            self.quota_op(&f.project_id, &[(Quota::FloatingIps, 1)], QuotaMode::Release),
            event(ctx, &f.project_id, "floatingip.delete", "floatingip", id, serde_json::json!({})),
        ])?;
        if let Some((p, _)) = load::<Port>(self.store(), &f.reservation_port_id)? {
            self.drop_port(ctx, &p, false)?;
        }
        self.sync_floating_ips()
    }
}
