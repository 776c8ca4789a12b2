//! Ports: a MAC and fixed IPs on a network, bound to a device (an instance NIC, a router
//! interface, a floating IP), with port security and security groups.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use hv_net::MacAddr;
use serde::{Deserialize, Serialize};

use super::{stale, Network, Subnet, ALLOC_TRIES};
use crate::error::{Error, Result};
use crate::events::event;
use crate::identity::name_record;
use crate::ids::{now, random_bytes, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::quota::Resource as Quota;
use crate::records::{impl_resource, list, load, to_record};
use crate::store::{Kind, Op, QuotaMode, StoreError};
use crate::Cloud;

/// `device_owner` of an instance's NIC.
pub const OWNER_COMPUTE: &str = "compute:nova";
/// `device_owner` of a router's interface.
pub const OWNER_ROUTER: &str = "network:router_interface";
/// `device_owner` of a router's gateway port.
pub const OWNER_GATEWAY: &str = "network:router_gateway";
/// `device_owner` of a floating IP's address.
pub const OWNER_FLOATING: &str = "network:floatingip";

/// A port's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortStatus {
    /// Bound to a running device.
    Active,
    /// Not bound (or its instance is off).
    Down,
}

/// One fixed address of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    /// The subnet.
    pub subnet_id: String,
    /// The address.
    pub ip_address: Ipv4Addr,
}

/// A port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// UUID.
    pub id: String,
    /// Name (may be empty).
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// The network.
    pub network_id: String,
    /// `52:54:00:xx:xx:xx`.
    pub mac_address: String,
    /// Its addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// What uses it (an instance id, a router id, ...; empty when unbound).
    pub device_id: String,
    /// What kind of thing uses it (`compute:nova`, `network:router_interface`, ...).
    pub device_owner: String,
    /// Bound and running, or not.
    pub status: PortStatus,
    /// Administratively up.
    pub admin_state_up: bool,
    /// Anti-spoofing and security groups on (the default).
    pub port_security_enabled: bool,
    /// Its security groups.
    pub security_groups: Vec<String>,
    /// The host interface (TAP) it is bound to while its instance runs.
    pub binding_tap: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl_resource!(Port, Kind::Port, "port", |s| Some(&s.project_id));

/// A requested fixed IP: a subnet, an address, or both (`None`s: any subnet, next free).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FixedIpRequest {
    /// The subnet.
    pub subnet_id: Option<String>,
    /// The address.
    pub ip_address: Option<Ipv4Addr>,
}

/// What a new port needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewPort {
    /// Name.
    pub name: String,
    /// The network.
    pub network_id: String,
    /// Requested addresses (empty: one from the network's subnet).
    pub fixed_ips: Vec<FixedIpRequest>,
    /// Security groups (`None`: the project's `default` group).
    pub security_groups: Option<Vec<String>>,
    /// Port security (default on).
    pub port_security_enabled: Option<bool>,
    /// The device using it.
    pub device_id: String,
    /// The kind of device.
    pub device_owner: String,
}

impl NewPort {
    /// A port on `network_id` with defaults.
    pub fn new(network_id: &str) -> NewPort {
        NewPort { network_id: network_id.into(), ..Default::default() }
    }
}

/// A change to a port (`None` keeps what is there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortUpdate {
    /// A new name.
    pub name: Option<String>,
    /// New security groups (applied at once on a running instance).
    pub security_groups: Option<Vec<String>>,
    /// Port security on or off.
    pub port_security_enabled: Option<bool>,
}

fn random_mac() -> MacAddr {
    let b = random_bytes::<3>();
    MacAddr([0x52, 0x54, 0x00, b[0], b[1], b[2]])
}

impl Port {
    /// The MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac_address.parse().unwrap_or(MacAddr([0x52, 0x54, 0, 0, 0, 1]))
    }

    /// The addresses.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.fixed_ips.iter().map(|f| f.ip_address).collect()
    }
}

impl Cloud {
    /// Every port on a network (any project's).
    pub(crate) fn ports_of_network(&self, network_id: &str) -> Result<Vec<Port>> {
        Ok(list::<Port>(self.store(), None, None)?
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.network_id == network_id)
            .collect())
    }

    /// Makes a port on a network the caller sees (its own, shared; an external one only for
    /// the cloud's own devices), reserving its addresses atomically.
    pub fn create_port(&self, ctx: &Context, new: &NewPort) -> Result<Port> {
        authorize(ctx, Action::PortCreate)?;
        self.make_port(ctx, new, ctx.project_id(), false)
    }

    /// Makes a port for `project_id`; `internal` lets the cloud put one on an external
    /// network (router gateways, floating IPs).
    pub(crate) fn make_port(
        &self,
        ctx: &Context,
        new: &NewPort,
        project_id: &str,
        internal: bool,
    ) -> Result<Port> {
        if !new.name.is_empty() {
            crate::check_name("port name", &new.name)?;
        }
        let (net, _) = self.load_network(ctx, &new.network_id)?;
        if net.external && !internal && !ctx.is_admin() {
            return Err(Error::Forbidden { action: Action::NetworkCreateExternal });
        }
        let subnets: Vec<Subnet> = net
            .subnets
            .iter()
            .filter_map(|id| load::<Subnet>(self.store(), id).ok().flatten().map(|(s, _)| s))
            .collect();
        let groups = match &new.security_groups {
            Some(g) => {
                for id in g {
                    self.load_security_group(ctx, id)?;
                }
                g.clone()
            }
            None if net.external || new.device_owner == OWNER_ROUTER => vec![],
            None => vec![self.default_security_group(ctx, project_id)?.id],
        };
        let requests = if new.fixed_ips.is_empty() {
            vec![FixedIpRequest::default()]
        } else {
            new.fixed_ips.clone()
        };
        let id = uuid();
        for _ in 0..ALLOC_TRIES {
            let used: HashSet<Ipv4Addr> =
                self.ports_of_network(&net.id)?.iter().flat_map(|p| p.ips()).collect();
            let mut fixed = vec![];
            for r in &requests {
                let s = pick_subnet(&subnets, r)?;
                let ip = match r.ip_address {
                    Some(ip) => ip,
                    None => next_free(s, &used, &fixed).ok_or_else(|| Error::Conflict {
                        kind: "subnet",
                        id: s.id.clone(),
                        reason: "no free address in its allocation pools".into(),
                    })?,
                };
                if !s.cidr().contains(ip) || ip == s.cidr().addr || ip == s.cidr().broadcast() {
                    return Err(Error::invalid(
                        "ip_address",
                        format!("{ip} is not a host of {}", s.cidr),
                    ));
                }
                if ip == s.gateway_ip && new.device_owner != OWNER_ROUTER {
                    return Err(Error::Conflict {
                        kind: "ip address",
                        id: ip.to_string(),
                        reason: "it is the subnet's gateway".into(),
                    });
                }
                fixed.push(FixedIp { subnet_id: s.id.clone(), ip_address: ip });
            }
            let t = now();
            let port = Port {
                id: id.clone(),
                name: new.name.clone(),
                project_id: project_id.into(),
                network_id: net.id.clone(),
                mac_address: random_mac().to_string(),
                fixed_ips: fixed.clone(),
                device_id: new.device_id.clone(),
                device_owner: new.device_owner.clone(),
                status: PortStatus::Down,
                admin_state_up: true,
                port_security_enabled: new.port_security_enabled.unwrap_or(true),
                security_groups: groups.clone(),
                binding_tap: None,
                created_at: t,
                updated_at: t,
            };
            let mut ops = vec![];
            if !internal {
                ops.push(self.quota_op(project_id, &[(Quota::Ports, 1)], QuotaMode::Use));
            }
            for f in &fixed {
                ops.push(Op::Insert(name_record(
                    "ip",
                    &f.subnet_id,
                    &f.ip_address.to_string(),
                    &id,
                )));
            }
            ops.push(Op::Insert(to_record(&port, 1)));
            ops.push(event(
                ctx,
                project_id,
                "port.create",
                "port",
                &id,
                serde_json::json!({"network": net.id, "ips": port.ips()}),
            ));
            match self.store().apply(&ops) {
                Ok(()) => {
                    if !net.external {
                        self.sync_host_network(&net.id)?;
                    }
                    self.membership_changed(&port);
                    return Ok(port);
                }
                Err(StoreError::Exists { kind, .. }) if kind == Kind::Name.as_str() => {
                    if requests.iter().all(|r| r.ip_address.is_some()) {
                        return Err(Error::Conflict {
                            kind: "ip address",
                            id: fixed
                                .iter()
                                .map(|f| f.ip_address.to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            reason: "already allocated".into(),
                        });
                    }
                    continue;
                }
                Err(e) => return Err(Error::from_store(e)),
            }
        }
        Err(Error::Conflict { kind: "port", id, reason: "address allocation kept racing".into() })
    }

    /// A port of the caller's project (or any, for an admin), with its version.
    pub(crate) fn load_port(&self, ctx: &Context, id: &str) -> Result<(Port, i64)> {
        match load::<Port>(self.store(), id)? {
            Some((p, v)) if ctx.owns(&p.project_id) => Ok((p, v)),
            _ => Err(Error::not_found("port", id)),
        }
    }

    /// One port.
    pub fn get_port(&self, ctx: &Context, id: &str) -> Result<Port> {
        authorize(ctx, Action::PortGet)?;
        Ok(self.load_port(ctx, id)?.0)
    }

    /// The caller's ports (an admin: all), optionally of one device.
    pub fn list_ports(&self, ctx: &Context, device_id: Option<&str>) -> Result<Vec<Port>> {
        authorize(ctx, Action::PortList)?;
        Ok(list::<Port>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| device_id.is_none_or(|d| p.device_id == d))
            .collect())
    }

    /// Changes a port's name, security groups or port security; a bound port's rules change
    /// at once.
    pub fn update_port(&self, ctx: &Context, id: &str, change: &PortUpdate) -> Result<Port> {
        authorize(ctx, Action::PortUpdate)?;
        let (mut p, version) = self.load_port(ctx, id)?;
        if let Some(n) = &change.name {
            if !n.is_empty() {
                crate::check_name("port name", n)?;
            }
            p.name = n.clone();
        }
        if let Some(g) = &change.security_groups {
            for sg in g {
                self.load_security_group(ctx, sg)?;
            }
            p.security_groups = g.clone();
        }
        if let Some(on) = change.port_security_enabled {
            p.port_security_enabled = on;
        }
        p.updated_at = now();
        self.store()
            .apply(&[
                Op::Update(to_record(&p, version)),
                event(ctx, &p.project_id, "port.update", "port", id, serde_json::json!({})),
            ])
            .map_err(stale("port", id))?;
        self.refresh_port_security(&p.project_id)?;
        Ok(p)
    }

    /// Deletes a port no instance uses.
    pub fn delete_port(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::PortDelete)?;
        let (p, _) = self.load_port(ctx, id)?;
        if p.device_owner == OWNER_COMPUTE && !p.device_id.is_empty() {
            return Err(Error::Conflict {
                kind: "port",
                id: id.into(),
                reason: format!("instance '{}' uses it", p.device_id),
            });
        }
        if p.device_owner == OWNER_ROUTER {
            return Err(Error::Conflict {
                kind: "port",
                id: id.into(),
                reason: "remove the router interface instead".into(),
            });
        }
        self.drop_port(ctx, &p, true)
    }

    /// Removes a port and its address reservations (and gives its quota back when counted).
    pub(crate) fn drop_port(&self, ctx: &Context, p: &Port, counted: bool) -> Result<()> {
        let mut ops = vec![Op::Delete(Kind::Port, p.id.clone())];
        for f in &p.fixed_ips {
            let rec = name_record("ip", &f.subnet_id, &f.ip_address.to_string(), &p.id);
            ops.push(Op::Delete(Kind::Name, rec.id));
        }
        if counted {
            ops.push(self.quota_op(&p.project_id, &[(Quota::Ports, 1)], QuotaMode::Release));
        }
        ops.push(event(ctx, &p.project_id, "port.delete", "port", &p.id, serde_json::json!({})));
        self.store().apply(&ops).map_err(Error::from_store)?;
        if let Some(tap) = &p.binding_tap {
            self.unbind_tap(tap);
        }
        let external =
            load::<Network>(self.store(), &p.network_id)?.is_some_and(|(n, _)| n.external);
        if !external {
            self.sync_host_network(&p.network_id)?;
        }
        self.membership_changed(p);
        Ok(())
    }

    /// After port `p` was made or removed: its groups' members let in by remote-group rules
    /// (the default group's ingress) gain or lose its addresses, so the project's bound ports
    /// get their rules again. Best effort: the port's own change stands either way.
    fn membership_changed(&self, p: &Port) {
        if p.security_groups.is_empty() {
            return;
        }
        if let Err(e) = self.refresh_port_security(&p.project_id) {
            log::warn!("re-applying security groups after port {} changed: {e}", p.id);
        }
    }
}

fn pick_subnet<'a>(subnets: &'a [Subnet], r: &FixedIpRequest) -> Result<&'a Subnet> {
    let found = match (&r.subnet_id, r.ip_address) {
        (Some(id), _) => subnets.iter().find(|s| &s.id == id),
        (None, Some(ip)) => subnets.iter().find(|s| s.cidr().contains(ip)),
        (None, None) => subnets.first(),
    };
    found.ok_or_else(|| Error::invalid("fixed_ips", "no such subnet on the network"))
}

fn next_free(s: &Subnet, used: &HashSet<Ipv4Addr>, taken: &[FixedIp]) -> Option<Ipv4Addr> {
    s.allocation_pools.iter().find_map(|p| {
        (u32::from(p.start)..=u32::from(p.end))
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip) && !taken.iter().any(|t| t.ip_address == *ip))
    })
}
