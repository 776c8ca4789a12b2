//! The first step of a new cloud, like `keystone-manage bootstrap`: the `Default` domain,
//! the roles admin, member and reader, the `admin` project and user with the admin role, and
//! the region `RegionOne`. Running it again changes nothing that exists (and never resets a
//! password).

use super::{
    insert, name_record, password, Assignment, Domain, Project, Region, RoleInfo, User,
    DEFAULT_DOMAIN_ID, DEFAULT_DOMAIN_NAME,
};
use crate::error::{Error, Result};
use crate::ids::{hex_id, now};
use crate::policy::Role;
use crate::records::{list, load, to_record};
use crate::store::{Op, StoreError};
use crate::Cloud;

/// What to bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The admin user's password (for a new admin user).
    pub admin_password: String,
    /// The admin user's name.
    pub admin_user: String,
    /// The admin project's name.
    pub admin_project: String,
    /// The region.
    pub region: String,
}

impl Bootstrap {
    /// Keystone's defaults (`admin`, `admin`, `RegionOne`) with this password.
    pub fn new(admin_password: &str) -> Bootstrap {
        Bootstrap {
            admin_password: admin_password.into(),
            admin_user: "admin".into(),
            admin_project: "admin".into(),
            region: "RegionOne".into(),
        }
    }
}

/// What bootstrap found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrapped {
    /// The admin project's id.
    pub project_id: String,
    /// The admin user's id.
    pub user_id: String,
}

impl Cloud {
    /// Runs the bootstrap (a local operator step: no token needed).
    pub fn bootstrap(&self, b: &Bootstrap) -> Result<Bootstrapped> {
        let store = self.store();
        let ignore_exists = |r: std::result::Result<(), StoreError>| match r {
            Ok(()) | Err(StoreError::Exists { .. }) => Ok(()),
            Err(e) => Err(Error::from(e)),
        };
        let domain = Domain {
            id: DEFAULT_DOMAIN_ID.into(),
            name: DEFAULT_DOMAIN_NAME.into(),
            enabled: true,
        };
        ignore_exists(store.apply(&[insert(to_record(&domain, 1))]))?;
        ignore_exists(store.apply(&[insert(to_record(&Region { id: b.region.clone() }, 1))]))?;
        for role in Role::ALL {
            let r = RoleInfo { id: hex_id(), name: role.as_str().into() };
            ignore_exists(store.apply(&[
                insert(name_record("role", DEFAULT_DOMAIN_ID, &r.name, &r.id)),
                insert(to_record(&r, 1)),
            ]))?;
        }
        let project = match list::<Project>(store, None, Some(&b.admin_project))?.pop() {
            Some((p, _)) => p,
            None => {
                let p = Project {
                    id: hex_id(),
                    name: b.admin_project.clone(),
                    domain_id: DEFAULT_DOMAIN_ID.into(),
                    description: "Bootstrap project for the cloud's administrators".into(),
                    enabled: true,
                    created_at: now(),
                };
                store.apply(&[
                    insert(name_record("project", DEFAULT_DOMAIN_ID, &p.name, &p.id)),
                    insert(to_record(&p, 1)),
                ])?;
                p
            }
        };
        let user = match list::<User>(store, None, Some(&b.admin_user))?.pop() {
            Some((u, _)) => u,
            None => {
                let u = User {
                    id: hex_id(),
                    name: b.admin_user.clone(),
                    domain_id: DEFAULT_DOMAIN_ID.into(),
                    default_project_id: Some(project.id.clone()),
                    enabled: true,
                    password_hash: password::hash(&b.admin_password)?,
                    created_at: now(),
                };
                store.apply(&[
                    insert(name_record("user", DEFAULT_DOMAIN_ID, &u.name, &u.id)),
                    insert(to_record(&u, 1)),
                ])?;
                u
            }
        };
        let admin = self.role_by_name(Role::Admin)?;
        let a = Assignment {
            id: format!("{}:{}:{}", project.id, user.id, admin.id),
            project_id: project.id.clone(),
            user_id: user.id.clone(),
            role_id: admin.id,
            role: Role::Admin,
        };
        if load::<Assignment>(store, &a.id)?.is_none() {
            ignore_exists(store.apply(&[Op::Insert(to_record(&a, 1))]))?;
        }
        Ok(Bootstrapped { project_id: project.id, user_id: user.id })
    }
}
