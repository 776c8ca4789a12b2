//! Security groups: Neutron's allow-lists per port. Each project has a `default` group (made on
//! first use) whose rules allow ingress only from members of the group and all egress. A rule
//! with a remote group expands to the addresses of that group's ports; every change (a rule, a
//! port's groups, a port made or removed in a group) is applied to the bound ports of the
//! project at once (hv-net's `apply` replaces a port's tables atomically).
//!
//! The rules are stateful, as Neutron's: replies to allowed traffic pass by connection
//! tracking, so the default group's allow-all egress lets no one in who is not a member.
//! hv-net tracks connections in the bridge family where the kernel can, else through
//! `br_netfilter` (it sets `net.bridge.bridge-nf-call-iptables=1` in the cloud's network
//! namespace); only on a kernel with neither does it fall back to stateless rules mirrored for
//! replies (`hv_net::nft::port::ReplyMode`), where an allow-all egress rule lets everything in.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hv_net::nft::port::{Direction as NftDirection, Protocol as NftProtocol, SecurityRule};
use hv_net::Ipv4Cidr;
use serde::{Deserialize, Serialize};

use super::{stale, Port};
use crate::error::{Error, Result};
use crate::events::event;
use crate::identity::name_record;
use crate::ids::{now, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::quota::Resource as Quota;
use crate::records::{impl_resource, list, load, to_record};
use crate::store::{Kind, Op, QuotaMode, StoreError};
use crate::{check_name, Cloud};

/// Which way a rule looks, seen from the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the instance.
    Ingress,
    /// Traffic from the instance.
    Egress,
}

/// The protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

/// One rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    /// UUID.
    pub id: String,
    /// The group.
    pub security_group_id: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// Always `IPv4`.
    pub ethertype: String,
    /// The protocol (`None`: any).
    pub protocol: Option<Protocol>,
    /// First destination port (TCP/UDP).
    pub port_range_min: Option<u16>,
    /// Last destination port (TCP/UDP).
    pub port_range_max: Option<u16>,
    /// The remote network.
    pub remote_ip_prefix: Option<String>,
    /// The remote group: the addresses of its ports.
    pub remote_group_id: Option<String>,
}

/// A security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// Description.
    pub description: String,
    /// Its rules.
    pub rules: Vec<SecurityGroupRule>,
    /// When it was made.
    pub created_at: Timestamp,
}

impl_resource!(SecurityGroup, Kind::SecurityGroup, "security group", |s| Some(&s.project_id));

/// A rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSecurityGroupRule {
    /// The group.
    pub security_group_id: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// The protocol (`None`: any).
    pub protocol: Option<Protocol>,
    /// Destination ports, inclusive (TCP/UDP only).
    pub port_range: Option<(u16, u16)>,
    /// The remote network (`a.b.c.d/n`).
    pub remote_ip_prefix: Option<String>,
    /// The remote group (exclusive with `remote_ip_prefix`).
    pub remote_group_id: Option<String>,
}

impl NewSecurityGroupRule {
    /// Allows `protocol` in `direction` from/to anywhere.
    pub fn new(group: &str, direction: Direction, protocol: Option<Protocol>) -> Self {
        NewSecurityGroupRule {
            security_group_id: group.into(),
            direction,
            protocol,
            port_range: None,
            remote_ip_prefix: None,
            remote_group_id: None,
        }
    }
}

fn rule(group: &str, direction: Direction, remote_group: Option<&str>) -> SecurityGroupRule {
    SecurityGroupRule {
        id: uuid(),
        security_group_id: group.into(),
        direction,
        ethertype: "IPv4".into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: remote_group.map(str::to_string),
    }
}

impl Cloud {
    /// Makes a group in the caller's project, with Neutron's default egress rule.
    pub fn create_security_group(
        &self,
        ctx: &Context,
        name: &str,
        description: &str,
    ) -> Result<SecurityGroup> {
        authorize(ctx, Action::SecurityGroupCreate)?;
        check_name("security group name", name)?;
        if name == "default" {
            return Err(Error::Conflict {
                kind: "security group",
                id: name.into(),
                reason: "the default group is made by the cloud".into(),
            });
        }
        self.insert_group(ctx, ctx.project_id(), name, description, false)
    }

    fn insert_group(
        &self,
        ctx: &Context,
        project_id: &str,
        name: &str,
        description: &str,
        default: bool,
    ) -> Result<SecurityGroup> {
        let id = uuid();
        let mut rules = vec![rule(&id, Direction::Egress, None)];
        if default {
            rules.push(rule(&id, Direction::Ingress, Some(&id)));
        }
        let g = SecurityGroup {
            id: id.clone(),
            name: name.into(),
            project_id: project_id.into(),
            description: description.into(),
            rules,
            created_at: now(),
        };
        let mut ops = vec![
            self.quota_op(project_id, &[(Quota::SecurityGroups, 1)], QuotaMode::Use),
            Op::Insert(to_record(&g, 1)),
        ];
        if default {
            ops.push(Op::Insert(name_record("sg-default", project_id, "default", &id)));
        }
        for r in &g.rules {
            ops.push(Op::Insert(name_record("sg-rule", "", &r.id, &id)));
        }
        ops.push(event(
            ctx,
            project_id,
            "security_group.create",
            "security_group",
            &id,
            serde_json::json!({"name": name}),
        ));
        self.store().apply(&ops).map_err(Error::from_store)?;
        Ok(g)
    }

    /// The project's default group, made on first use.
    pub(crate) fn default_security_group(
        &self,
        ctx: &Context,
        project_id: &str,
    ) -> Result<SecurityGroup> {
        let key = name_record("sg-default", project_id, "default", "").id;
        for _ in 0..2 {
            if let Some(r) = self.store().get(Kind::Name, &key)? {
                if let Some((g, _)) = load::<SecurityGroup>(self.store(), &r.name)? {
                    return Ok(g);
                }
            }
            match self.insert_group(ctx, project_id, "default", "Default security group", true) {
                Ok(g) => return Ok(g),
                // Another request made it first: read it.
                Err(Error::Store(StoreError::Exists { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::not_found("security group", "default"))
    }

    /// A group of the caller's project, with its version.
    pub(crate) fn load_security_group(
        &self,
        ctx: &Context,
        id: &str,
    ) -> Result<(SecurityGroup, i64)> {
        match load::<SecurityGroup>(self.store(), id)? {
            Some((g, v)) if ctx.owns(&g.project_id) => Ok((g, v)),
            _ => Err(Error::not_found("security group", id)),
        }
    }

    /// The ids of the caller's project's groups that `wanted` names, each by id or name, as
    /// Nova resolves a server's `security_groups`: the `default` group is made if needed, a
    /// name no group of the project has is invalid input (Nova's 400 "Unable to find
    /// security_group with name or id"), one that several groups share a conflict (409).
    pub fn resolve_security_groups(&self, ctx: &Context, wanted: &[String]) -> Result<Vec<String>> {
        authorize(ctx, Action::SecurityGroupList)?;
        let project = ctx.project_id();
        let mut ids = Vec::with_capacity(wanted.len());
        for w in wanted {
            let by_id =
                self.load_security_group(ctx, w).ok().filter(|(g, _)| g.project_id == project);
            let id = if let Some((g, _)) = by_id {
                g.id
            } else if w == "default" {
                self.default_security_group(ctx, project)?.id
            } else {
                let found = list::<SecurityGroup>(self.store(), Some(project), Some(w))?;
                match found.as_slice() {
                    [(g, _)] => g.id.clone(),
                    [] => {
                        return Err(Error::Invalid {
                            field: "security_groups",
                            reason: format!("Unable to find security_group with name or id '{w}'"),
                        })
                    }
                    _ => {
                        return Err(Error::Conflict {
                            kind: "security group",
                            id: w.clone(),
                            reason: "Multiple security_group matches found for this name, \
                                     use an ID to be more specific."
                                .into(),
                        })
                    }
                }
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// One group.
    pub fn get_security_group(&self, ctx: &Context, id: &str) -> Result<SecurityGroup> {
        authorize(ctx, Action::SecurityGroupGet)?;
        Ok(self.load_security_group(ctx, id)?.0)
    }

    /// The caller's groups (its `default` group is made if it has none yet).
    pub fn list_security_groups(&self, ctx: &Context) -> Result<Vec<SecurityGroup>> {
        authorize(ctx, Action::SecurityGroupList)?;
        if !ctx.is_admin() {
            self.default_security_group(ctx, ctx.project_id())?;
        }
        Ok(list::<SecurityGroup>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(g, _)| g)
            .collect())
    }

    /// Deletes a group no port uses (the default group stays).
    pub fn delete_security_group(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::SecurityGroupDelete)?;
        let (g, _) = self.load_security_group(ctx, id)?;
        let conflict =
            |reason: String| Error::Conflict { kind: "security group", id: id.into(), reason };
        if g.name == "default" {
            return Err(conflict("the default group cannot be deleted".into()));
        }
        let ports = list::<Port>(self.store(), Some(&g.project_id), None)?;
        if let Some((p, _)) = ports.iter().find(|(p, _)| p.security_groups.iter().any(|s| s == id))
        {
            return Err(conflict(format!("port '{}' uses it", p.id)));
        }
        let mut ops = vec![
            Op::Delete(Kind::SecurityGroup, id.into()),
            self.quota_op(&g.project_id, &[(Quota::SecurityGroups, 1)], QuotaMode::Release),
            event(
                ctx,
                &g.project_id,
                "security_group.delete",
                "security_group",
                id,
                serde_json::json!({}),
            ),
        ];
        for r in &g.rules {
            ops.push(Op::Delete(Kind::Name, name_record("sg-rule", "", &r.id, "").id));
        }
        self.store().apply(&ops).map_err(Error::from_store)
    }

    /// Adds a rule; bound ports of the project get it at once.
    pub fn add_security_group_rule(
        &self,
        ctx: &Context,
        new: &NewSecurityGroupRule,
    ) -> Result<SecurityGroupRule> {
        authorize(ctx, Action::SecurityGroupRuleCreate)?;
        let (mut g, version) = self.load_security_group(ctx, &new.security_group_id)?;
        if let Some((lo, hi)) = new.port_range {
            if !matches!(new.protocol, Some(Protocol::Tcp | Protocol::Udp)) || lo == 0 || lo > hi {
                return Err(Error::invalid(
                    "port_range",
                    "1..=65535, low <= high, TCP or UDP only",
                ));
            }
        }
        if new.remote_ip_prefix.is_some() && new.remote_group_id.is_some() {
            return Err(Error::invalid(
                "remote",
                "give a remote prefix or a remote group, not both",
            ));
        }
        if let Some(p) = &new.remote_ip_prefix {
            p.parse::<Ipv4Cidr>()
                .map_err(|e| Error::invalid("remote_ip_prefix", format!("'{p}': {e}")))?;
        }
        if let Some(rg) = &new.remote_group_id {
            self.load_security_group(ctx, rg)?;
        }
        let r = SecurityGroupRule {
            id: uuid(),
            security_group_id: g.id.clone(),
            direction: new.direction,
            ethertype: "IPv4".into(),
            protocol: new.protocol,
            port_range_min: new.port_range.map(|p| p.0),
            port_range_max: new.port_range.map(|p| p.1),
            remote_ip_prefix: new.remote_ip_prefix.clone(),
            remote_group_id: new.remote_group_id.clone(),
        };
        g.rules.push(r.clone());
        self.store()
            .apply(&[
                Op::Update(to_record(&g, version)),
                Op::Insert(name_record("sg-rule", "", &r.id, &g.id)),
                event(
                    ctx,
                    &g.project_id,
                    "security_group_rule.create",
                    "security_group_rule",
                    &r.id,
                    serde_json::json!({"group": g.id}),
                ),
            ])
            .map_err(stale("security group", &g.id))?;
        self.refresh_port_security(&g.project_id)?;
        Ok(r)
    }

    /// Removes a rule by id; bound ports of the project lose it at once.
    pub fn delete_security_group_rule(&self, ctx: &Context, rule_id: &str) -> Result<()> {
        authorize(ctx, Action::SecurityGroupRuleDelete)?;
        let key = name_record("sg-rule", "", rule_id, "").id;
        let group_id = self
            .store()
            .get(Kind::Name, &key)?
            .map(|r| r.name)
            .ok_or_else(|| Error::not_found("security group rule", rule_id))?;
        let (mut g, version) = self
            .load_security_group(ctx, &group_id)
            .map_err(|_| Error::not_found("security group rule", rule_id))?;
        g.rules.retain(|r| r.id != rule_id);
        self.store()
            .apply(&[
                Op::Update(to_record(&g, version)),
                Op::Delete(Kind::Name, key),
                event(
                    ctx,
                    &g.project_id,
                    "security_group_rule.delete",
                    "security_group_rule",
                    rule_id,
                    serde_json::json!({}),
                ),
            ])
            .map_err(stale("security group", &g.id))?;
        self.refresh_port_security(&g.project_id)
    }

    /// hv-net's rules for `port`: its groups' rules, remote groups expanded to their ports'
    /// addresses.
    pub(crate) fn port_rules(&self, port: &Port) -> Result<Vec<SecurityRule>> {
        let all_ports = list::<Port>(self.store(), Some(&port.project_id), None)?;
        self.port_rules_among(port, &all_ports, &mut HashMap::new())
    }

    /// [`port_rules`](Self::port_rules) with the project's ports and the groups already read
    /// (`groups` fills as it goes): a refresh of every port reads each once.
    pub(crate) fn port_rules_among(
        &self,
        port: &Port,
        all_ports: &[(Port, i64)],
        groups: &mut HashMap<String, Option<SecurityGroup>>,
    ) -> Result<Vec<SecurityRule>> {
        let mut out = vec![];
        for gid in &port.security_groups {
            if !groups.contains_key(gid) {
                let g = load::<SecurityGroup>(self.store(), gid)?.map(|(g, _)| g);
                groups.insert(gid.clone(), g);
            }
            let Some(Some(g)) = groups.get(gid) else { continue };
            for r in &g.rules {
                let base = SecurityRule {
                    direction: match r.direction {
                        Direction::Ingress => NftDirection::Ingress,
                        Direction::Egress => NftDirection::Egress,
                    },
                    protocol: match r.protocol {
                        Some(Protocol::Tcp) => NftProtocol::Tcp,
                        Some(Protocol::Udp) => NftProtocol::Udp,
                        Some(Protocol::Icmp) => NftProtocol::Icmp,
                        None => NftProtocol::Any,
                    },
                    ports: r.port_range_min.zip(r.port_range_max),
                    remote: None,
                };
                match (&r.remote_ip_prefix, &r.remote_group_id) {
                    (Some(p), _) => out.push(SecurityRule { remote: p.parse().ok(), ..base }),
                    (None, Some(rg)) => {
                        let members: Vec<Ipv4Addr> = all_ports
                            .iter()
                            .filter(|(p, _)| p.id != port.id && p.security_groups.contains(rg))
                            .flat_map(|(p, _)| p.ips())
                            .collect();
                        for ip in members {
                            out.push(SecurityRule {
                                remote: Some(Ipv4Cidr { addr: ip, prefix: 32 }),
                                ..base
                            });
                        }
                    }
                    (None, None) => out.push(base),
                }
            }
        }
        Ok(out)
    }
}
