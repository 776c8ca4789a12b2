//! The event log: who did what to which resource, when, per project. Every change a
//! [`Cloud`] makes appends its event in the same transaction as the change, so the log
//! never claims a change that did not happen, nor misses one that did.

use crate::error::Result;
use crate::ids::{now, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::store::{EventRow, Op};
use crate::Cloud;

/// One logged change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log (increasing).
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// The project concerned.
    pub project_id: String,
    /// Who (user id).
    pub user_id: String,
    /// What (`image.create`, `quota.set`, ...).
    pub action: String,
    /// The kind of resource.
    pub resource_kind: String,
    /// Its id.
    pub resource_id: String,
    /// A detail (JSON).
    pub detail: String,
}

/// The event of `ctx` doing `action` to a resource of `project_id`.
pub(crate) fn event(
    ctx: &Context,
    project_id: &str,
    action: &str,
    kind: &str,
    id: &str,
    detail: serde_json::Value,
) -> Op {
    Op::Event(EventRow {
        seq: 0,
        at: now().0,
        project_id: project_id.to_string(),
        user_id: ctx.user_id().to_string(),
        action: action.to_string(),
        resource_kind: kind.to_string(),
        resource_id: id.to_string(),
        detail: detail.to_string(),
    })
}

impl Cloud {
    /// Events after `after` (0 for the start), oldest first, at most `limit` (1..=1000).
    /// A caller sees its own project's; an admin sees `project_id`'s, or every project's.
    pub fn list_events(
        &self,
        ctx: &Context,
        project_id: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        authorize(ctx, Action::EventList)?;
        let scope = match (ctx.is_admin(), project_id) {
            (true, p) => p,
            (false, _) => Some(ctx.project_id()),
        };
        let rows = self.store().events(scope, after, limit.clamp(1, 1000))?;
        Ok(rows
            .into_iter()
            .map(|r| Event {
                seq: r.seq,
                at: Timestamp(r.at),
                project_id: r.project_id,
                user_id: r.user_id,
                action: r.action,
                resource_kind: r.resource_kind,
                resource_id: r.resource_id,
                detail: r.detail,
            })
            .collect())
    }
}
