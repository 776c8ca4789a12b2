//! Identity (Keystone's job): the `Default` domain, projects, users with argon2-hashed
//! passwords, the roles admin/member/reader, role assignments per project, project-scoped
//! tokens ([`token`]) and the bootstrap step ([`bootstrap`]).
//!
//! Names of projects, users and roles are unique in their domain: each create takes a name
//! record in the same transaction as the resource, so two concurrent creates of one name
//! cannot both succeed.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{hex_id, now, Timestamp};
use crate::policy::{authorize, Action, Context, Role};
use crate::records::{list, load, to_record, Resource};
use crate::store::{Kind, Op, Record, StoreError};
use crate::{check_name, Cloud};

pub mod bootstrap;
pub mod password;
pub mod token;

pub use bootstrap::Bootstrap;
pub use token::{IssuedToken, PasswordAuth, ProjectRef, UserRef};

/// The id of the one domain.
pub const DEFAULT_DOMAIN_ID: &str = "default";
/// Its name.
pub const DEFAULT_DOMAIN_NAME: &str = "Default";

/// An identity domain (only `Default` is used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// `default`.
    pub id: String,
    /// `Default`.
    pub name: String,
    /// Always true.
    pub enabled: bool,
}

/// A project (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// 32 hex digits.
    pub id: String,
    /// Unique in its domain.
    pub name: String,
    /// Its domain.
    pub domain_id: String,
    /// Free text.
    pub description: String,
    /// A disabled project's users cannot get tokens for it.
    pub enabled: bool,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// 32 hex digits.
    pub id: String,
    /// Unique in its domain.
    pub name: String,
    /// Its domain.
    pub domain_id: String,
    /// The project its tokens are scoped to by default.
    pub default_project_id: Option<String>,
    /// A disabled user cannot authenticate.
    pub enabled: bool,
    /// The argon2 PHC string (never shown by the API).
    pub(crate) password_hash: String,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A role as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// 32 hex digits.
    pub id: String,
    /// `admin`, `member` or `reader`.
    pub name: String,
}

/// A user holding a role on a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// `project:user:role`.
    pub id: String,
    /// The project.
    pub project_id: String,
    /// The user.
    pub user_id: String,
    /// The role's id.
    pub role_id: String,
    /// The role.
    pub role: Role,
}

/// A region of the service catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// `RegionOne`.
    pub id: String,
}

macro_rules! resource {
    ($t:ty, $kind:expr, $name:expr, |$s:ident| $project:expr, |$n:ident| $nm:expr) => {
        impl Resource for $t {
            const KIND: Kind = $kind;
            const NAME: &'static str = $name;
            fn id(&self) -> &str {
                &self.id
            }
            fn project_id(&self) -> Option<&str> {
                let $s = self;
                $project
            }
            fn name(&self) -> &str {
                let $n = self;
                $nm
            }
        }
    };
}

resource!(Domain, Kind::Domain, "domain", |_s| None, |n| &n.name);
resource!(Project, Kind::Project, "project", |s| Some(&s.id), |n| &n.name);
resource!(User, Kind::User, "user", |_s| None, |n| &n.name);
resource!(RoleInfo, Kind::Role, "role", |_s| None, |n| &n.name);
resource!(Assignment, Kind::Assignment, "role assignment", |s| Some(&s.project_id), |n| &n.user_id);
resource!(Region, Kind::Region, "region", |_s| None, |n| &n.id);

/// The record that reserves `name` for one `what` in `scope`.
pub(crate) fn name_record(what: &str, scope: &str, name: &str, owner_id: &str) -> Record {
    Record {
        kind: Kind::Name,
        id: format!("{what}:{scope}:{name}"),
        project_id: None,
        name: owner_id.to_string(),
        body: "{}".into(),
        version: 1,
    }
}

/// Turns a name record's conflict into a readable [`Error::Conflict`].
pub(crate) fn name_taken(e: StoreError, kind: &'static str, name: &str) -> Error {
    match e {
        StoreError::Exists { kind: k, .. } if k == Kind::Name.as_str() => {
            Error::Conflict { kind, id: name.to_string(), reason: "the name is taken".into() }
        }
        e => Error::from_store(e),
    }
}

/// What a new user needs.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Its name.
    pub name: String,
    /// Its password (hashed at once; never stored).
    pub password: String,
    /// Its default project.
    pub default_project_id: Option<String>,
}

impl Cloud {
    pub(crate) fn role_by_name(&self, role: Role) -> Result<RoleInfo> {
        list::<RoleInfo>(self.store(), None, Some(role.as_str()))?
            .into_iter()
            .map(|(r, _)| r)
            .next()
            .ok_or_else(|| Error::not_found("role", role.as_str()))
    }

    /// Makes a project (admin).
    pub fn create_project(&self, ctx: &Context, name: &str, description: &str) -> Result<Project> {
        authorize(ctx, Action::ProjectCreate)?;
        check_name("project name", name)?;
        let p = Project {
            id: hex_id(),
            name: name.to_string(),
            domain_id: DEFAULT_DOMAIN_ID.into(),
            description: description.to_string(),
            enabled: true,
            created_at: now(),
        };
        self.store()
            .apply(&[
                insert(name_record("project", DEFAULT_DOMAIN_ID, name, &p.id)),
                insert(to_record(&p, 1)),
                event(
                    ctx,
                    &p.id,
                    "project.create",
                    "project",
                    &p.id,
                    serde_json::json!({"name": name}),
                ),
            ])
            .map_err(|e| name_taken(e, "project", name))?;
        Ok(p)
    }

    /// Projects the caller may see (all for an admin, else its own), optionally by name.
    pub fn list_projects(&self, ctx: &Context, name: Option<&str>) -> Result<Vec<Project>> {
        authorize(ctx, Action::ProjectList)?;
        Ok(list::<Project>(self.store(), ctx.list_scope(), name)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// One project.
    pub fn get_project(&self, ctx: &Context, id: &str) -> Result<Project> {
        authorize(ctx, Action::ProjectGet)?;
        ctx.must_own(id, "project", id)?;
        load::<Project>(self.store(), id)?
            .map(|(p, _)| p)
            .ok_or_else(|| Error::not_found("project", id))
    }

    /// Deletes a project that owns nothing any more; its tokens are revoked.
    pub fn delete_project(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::ProjectDelete)?;
        let p = self.get_project(ctx, id)?;
        for kind in [Kind::Image, Kind::ServerGroup] {
            if !self.store().list(kind, Some(id), None)?.is_empty() {
                return Err(Error::Conflict {
                    kind: "project",
                    id: id.into(),
                    reason: format!("it still owns {kind} resources"),
                });
            }
        }
        let mut ops = vec![
            Op::Delete(Kind::Project, id.to_string()),
            Op::Delete(Kind::Name, name_record("project", DEFAULT_DOMAIN_ID, &p.name, id).id),
            event(ctx, id, "project.delete", "project", id, serde_json::json!({})),
        ];
        for (a, _) in list::<Assignment>(self.store(), Some(id), None)? {
            ops.push(Op::Delete(Kind::Assignment, a.id));
        }
        self.store().apply(&ops)?;
        self.store().revoke_tokens(None, Some(id))?;
        Ok(())
    }

    /// Makes a user (admin).
    pub fn create_user(&self, ctx: &Context, new: &NewUser) -> Result<User> {
        authorize(ctx, Action::UserCreate)?;
        check_name("user name", &new.name)?;
        if let Some(p) = &new.default_project_id {
            self.get_project(ctx, p)?;
        }
        let u = User {
            id: hex_id(),
            name: new.name.clone(),
            domain_id: DEFAULT_DOMAIN_ID.into(),
            default_project_id: new.default_project_id.clone(),
            enabled: true,
            password_hash: password::hash(&new.password)?,
            created_at: now(),
        };
        let project = new.default_project_id.as_deref().unwrap_or(ctx.project_id());
        self.store()
            .apply(&[
                insert(name_record("user", DEFAULT_DOMAIN_ID, &u.name, &u.id)),
                insert(to_record(&u, 1)),
                event(
                    ctx,
                    project,
                    "user.create",
                    "user",
                    &u.id,
                    serde_json::json!({"name": u.name}),
                ),
            ])
            .map_err(|e| name_taken(e, "user", &new.name))?;
        Ok(u)
    }

    /// Users (admin), optionally by name.
    pub fn list_users(&self, ctx: &Context, name: Option<&str>) -> Result<Vec<User>> {
        authorize(ctx, Action::UserList)?;
        Ok(list::<User>(self.store(), None, name)?.into_iter().map(|(u, _)| u).collect())
    }

    /// One user: the caller itself, or any for an admin.
    pub fn get_user(&self, ctx: &Context, id: &str) -> Result<User> {
        authorize(ctx, Action::UserGet)?;
        if !ctx.is_admin() && ctx.user_id() != id {
            return Err(Error::not_found("user", id));
        }
        load::<User>(self.store(), id)?.map(|(u, _)| u).ok_or_else(|| Error::not_found("user", id))
    }

    /// Deletes a user, its role assignments and its tokens (admin).
    pub fn delete_user(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::UserDelete)?;
        let u = self.get_user(ctx, id)?;
        let mut ops = vec![
            Op::Delete(Kind::User, id.to_string()),
            Op::Delete(Kind::Name, name_record("user", DEFAULT_DOMAIN_ID, &u.name, id).id),
            event(ctx, ctx.project_id(), "user.delete", "user", id, serde_json::json!({})),
        ];
        for (a, _) in list::<Assignment>(self.store(), None, None)? {
            if a.user_id == id {
                ops.push(Op::Delete(Kind::Assignment, a.id));
            }
        }
        self.store().apply(&ops)?;
        self.store().revoke_tokens(Some(id), None)?;
        Ok(())
    }

    /// The roles, optionally by name.
    pub fn list_roles(&self, ctx: &Context, name: Option<&str>) -> Result<Vec<RoleInfo>> {
        authorize(ctx, Action::RoleList)?;
        Ok(list::<RoleInfo>(self.store(), None, name)?.into_iter().map(|(r, _)| r).collect())
    }

    /// Gives `user_id` `role` on `project_id` (admin). Granting what is held is a no-op.
    pub fn grant_role(
        &self,
        ctx: &Context,
        project_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<()> {
        authorize(ctx, Action::RoleGrant)?;
        self.get_project(ctx, project_id)?;
        self.get_user(ctx, user_id)?;
        let r = self.role_by_name(role)?;
        let a = Assignment {
            id: format!("{project_id}:{user_id}:{}", r.id),
            project_id: project_id.into(),
            user_id: user_id.into(),
            role_id: r.id,
            role,
        };
        match self.store().apply(&[
            insert(to_record(&a, 1)),
            event(
                ctx,
                project_id,
                "role.grant",
                "user",
                user_id,
                serde_json::json!({"role": role}),
            ),
        ]) {
            Ok(()) | Err(StoreError::Exists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes `role` on `project_id` from `user_id` (admin); the user's tokens for that
    /// project are revoked, so the change takes effect at once.
    pub fn revoke_role(
        &self,
        ctx: &Context,
        project_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<()> {
        authorize(ctx, Action::RoleRevoke)?;
        self.get_project(ctx, project_id)?;
        let r = self.role_by_name(role)?;
        let id = format!("{project_id}:{user_id}:{}", r.id);
        self.store()
            .apply(&[
                Op::Delete(Kind::Assignment, id.clone()),
                event(
                    ctx,
                    project_id,
                    "role.revoke",
                    "user",
                    user_id,
                    serde_json::json!({"role": role}),
                ),
            ])
            .map_err(|e| match e {
                StoreError::Missing { .. } => Error::not_found("role assignment", id),
                e => e.into(),
            })?;
        self.store().revoke_tokens(Some(user_id), Some(project_id))?;
        Ok(())
    }

    /// The role assignments on a project the caller may see.
    pub fn list_assignments(&self, ctx: &Context, project_id: &str) -> Result<Vec<Assignment>> {
        authorize(ctx, Action::AssignmentList)?;
        ctx.must_own(project_id, "project", project_id)?;
        Ok(list::<Assignment>(self.store(), Some(project_id), None)?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }

    /// The user's roles on a project (for tokens).
    pub(crate) fn roles_of(&self, project_id: &str, user_id: &str) -> Result<Vec<Role>> {
        let mut roles: Vec<Role> = list::<Assignment>(self.store(), Some(project_id), None)?
            .into_iter()
            .filter(|(a, _)| a.user_id == user_id)
            .map(|(a, _)| a.role)
            .collect();
        roles.sort();
        roles.dedup();
        Ok(roles)
    }
}

/// Wraps a record as an insert.
pub(crate) fn insert(r: Record) -> Op {
    Op::Insert(r)
}
