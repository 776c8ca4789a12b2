//! Server groups: a project's set of instances placed with an affinity policy (all on one
//! host) or anti-affinity (each on a different host). The scheduler adds a member in the same
//! transaction as its placement claim, comparing the group's version, so concurrent
//! placements cannot break the policy.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{now, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::records::{list, load, to_record, Resource};
use crate::store::{Kind, Op};
use crate::{check_name, Cloud};

/// A server group's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    /// Every member on the same host.
    Affinity,
    /// Every member on a different host.
    AntiAffinity,
}

/// One placed member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The consumer (instance id).
    pub consumer_id: String,
    /// Where it is.
    pub host_id: String,
}

/// A server group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroup {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// Policy.
    pub policy: GroupPolicy,
    /// Members and their hosts.
    pub members: Vec<Member>,
    /// When it was made.
    pub created_at: Timestamp,
}

impl Resource for ServerGroup {
    const KIND: Kind = Kind::ServerGroup;
    const NAME: &'static str = "server group";
    fn id(&self) -> &str {
        &self.id
    }
    fn project_id(&self) -> Option<&str> {
        Some(&self.project_id)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Cloud {
    /// Makes a server group in the caller's project.
    pub fn create_server_group(
        &self,
        ctx: &Context,
        name: &str,
        policy: GroupPolicy,
    ) -> Result<ServerGroup> {
        authorize(ctx, Action::ServerGroupCreate)?;
        check_name("server group name", name)?;
        let g = ServerGroup {
            id: uuid(),
            name: name.into(),
            project_id: ctx.project_id().into(),
            policy,
            members: vec![],
            created_at: now(),
        };
        self.store().apply(&[
            Op::Insert(to_record(&g, 1)),
            event(
                ctx,
                &g.project_id,
                "server_group.create",
                "server_group",
                &g.id,
                serde_json::json!({"policy": policy}),
            ),
        ])?;
        Ok(g)
    }

    /// A server group with its version (for the scheduler's compare-and-swap).
    pub(crate) fn load_group(&self, ctx: &Context, id: &str) -> Result<(ServerGroup, i64)> {
        match load::<ServerGroup>(self.store(), id)? {
            Some((g, v)) if ctx.owns(&g.project_id) => Ok((g, v)),
            _ => Err(Error::not_found("server group", id)),
        }
    }

    /// One server group of the caller's project.
    pub fn get_server_group(&self, ctx: &Context, id: &str) -> Result<ServerGroup> {
        authorize(ctx, Action::ServerGroupGet)?;
        Ok(self.load_group(ctx, id)?.0)
    }

    /// The server groups the caller may see.
    pub fn list_server_groups(&self, ctx: &Context) -> Result<Vec<ServerGroup>> {
        authorize(ctx, Action::ServerGroupList)?;
        Ok(list::<ServerGroup>(self.store(), ctx.list_scope(), None)?
            .into_iter()
            .map(|(g, _)| g)
            .collect())
    }

    /// Deletes a server group (its members keep their placements).
    pub fn delete_server_group(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::ServerGroupDelete)?;
        let (g, _) = self.load_group(ctx, id)?;
        self.store().apply(&[
            Op::Delete(Kind::ServerGroup, id.into()),
            event(
                ctx,
                &g.project_id,
                "server_group.delete",
                "server_group",
                id,
                serde_json::json!({}),
            ),
        ])?;
        Ok(())
    }
}
