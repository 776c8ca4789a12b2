//! Quotas per project: limits, usage and reservations of Nova's, Cinder's and Neutron's
//! counted resources, enforced by the store's conditional updates (see [`crate::store`]), so
//! concurrent claims never take a project past its limit.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::event;
use crate::identity::Project;
use crate::policy::{authorize, Action, Context};
use crate::records::load;
use crate::store::{Op, QuotaMode};
use crate::Cloud;

/// A counted resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Instances (Nova `instances`).
    Instances,
    /// vCPUs of instances (Nova `cores`).
    Cores,
    /// RAM of instances, MiB (Nova `ram`).
    Ram,
    /// Volumes (Cinder `volumes`).
    Volumes,
    /// Volume GiB (Cinder `gigabytes`).
    Gigabytes,
    /// Networks (Neutron `network`).
    Networks,
    /// Ports (Neutron `port`).
    Ports,
    /// Floating IPs (Neutron `floatingip`).
    FloatingIps,
    /// Security groups (Neutron `security_group`).
    SecurityGroups,
}

impl Resource {
    /// Every resource.
    pub const ALL: [Resource; 9] = [
        Resource::Instances,
        Resource::Cores,
        Resource::Ram,
        Resource::Volumes,
        Resource::Gigabytes,
        Resource::Networks,
        Resource::Ports,
        Resource::FloatingIps,
        Resource::SecurityGroups,
    ];

    /// The name stored and shown (`quota show` spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Instances => "instances",
            Resource::Cores => "cores",
            Resource::Ram => "ram",
            Resource::Volumes => "volumes",
            Resource::Gigabytes => "gigabytes",
            Resource::Networks => "networks",
            Resource::Ports => "ports",
            Resource::FloatingIps => "floating_ips",
            Resource::SecurityGroups => "security_groups",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::invalid("quota resource", format!("unknown resource '{s}'")))
    }
}

/// Limits per resource; negative means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits(pub BTreeMap<Resource, i64>);

impl Default for Limits {
    /// OpenStack's defaults: Nova 10 instances, 20 cores, 51200 MiB; Cinder 10 volumes,
    /// 1000 GiB; Neutron 100 networks, 500 ports, 50 floating IPs, 10 security groups.
    fn default() -> Limits {
        use Resource::*;
        Limits(BTreeMap::from([
            (Instances, 10),
            (Cores, 20),
            (Ram, 51200),
            (Volumes, 10),
            (Gigabytes, 1000),
            (Networks, 100),
            (Ports, 500),
            (FloatingIps, 50),
            (SecurityGroups, 10),
        ]))
    }
}

impl Limits {
    /// The limit of `r`.
    pub fn get(&self, r: Resource) -> i64 {
        self.0.get(&r).copied().unwrap_or(-1)
    }
}

/// One line of `quota show --usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The resource.
    pub resource: Resource,
    /// Its limit (negative: unlimited).
    pub limit: i64,
    /// Committed usage.
    pub in_use: i64,
    /// Reserved by operations in flight.
    pub reserved: i64,
}

impl Cloud {
    /// The store op that moves `changes` of `project_id`'s usage in `mode`.
    pub(crate) fn quota_op(
        &self,
        project_id: &str,
        changes: &[(Resource, i64)],
        mode: QuotaMode,
    ) -> Op {
        Op::Quota {
            project_id: project_id.to_string(),
            changes: changes
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n, self.config().default_limits.get(*r)))
                .collect(),
            mode,
        }
    }

    fn quota_project(&self, ctx: &Context, project_id: &str) -> Result<()> {
        ctx.must_own(project_id, "project", project_id)?;
        load::<Project>(self.store(), project_id)?
            .map(|_| ())
            .ok_or_else(|| Error::not_found("project", project_id))
    }

    /// `quota show --usage`: every resource of a project, with its limit and usage.
    pub fn quota_usage(&self, ctx: &Context, project_id: &str) -> Result<Vec<Usage>> {
        authorize(ctx, Action::QuotaGet)?;
        self.quota_project(ctx, project_id)?;
        let rows = self.store().quotas(project_id)?;
        Ok(Resource::ALL
            .into_iter()
            .map(|r| match rows.iter().find(|q| q.resource == r.as_str()) {
                Some(q) => {
                    Usage { resource: r, limit: q.limit, in_use: q.in_use, reserved: q.reserved }
                }
                None => Usage {
                    resource: r,
                    limit: self.config().default_limits.get(r),
                    in_use: 0,
                    reserved: 0,
                },
            })
            .collect())
    }

    /// `quota set`: a project's limit of one resource (negative: unlimited). A limit below
    /// current usage is allowed (as Nova allows); new claims then fail until usage drops.
    pub fn set_quota(
        &self,
        ctx: &Context,
        project_id: &str,
        resource: Resource,
        limit: i64,
    ) -> Result<()> {
        authorize(ctx, Action::QuotaSet)?;
        self.quota_project(ctx, project_id)?;
        let limit = limit.max(-1);
        self.store().apply(&[
            Op::SetLimit {
                project_id: project_id.to_string(),
                resource: resource.as_str().to_string(),
                limit,
            },
            event(
                ctx,
                project_id,
                "quota.set",
                "quota",
                resource.as_str(),
                serde_json::json!({ "limit": limit }),
            ),
        ])?;
        Ok(())
    }

    /// Claims usage for the caller's project: every change or none, atomically against the
    /// limits ([`Error::QuotaExceeded`] otherwise). `Reserve` holds it for an operation in
    /// flight, to be committed or rolled back; `Use` counts it at once.
    pub fn claim_quota(
        &self,
        ctx: &Context,
        changes: &[(Resource, i64)],
        mode: QuotaMode,
    ) -> Result<()> {
        authorize(ctx, Action::Schedule)?;
        if changes.iter().any(|(_, n)| *n < 0) {
            return Err(Error::invalid("quota claim", "amounts must not be negative"));
        }
        self.store()
            .apply(&[self.quota_op(ctx.project_id(), changes, mode)])
            .map_err(Error::from_store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_from_their_names() {
        for r in Resource::ALL {
            assert_eq!(r.as_str().parse::<Resource>().unwrap(), r);
        }
        assert!(matches!("disks".parse::<Resource>(), Err(Error::Invalid { .. })));
        assert_eq!(Limits::default().get(Resource::Cores), 20);
    }
}
