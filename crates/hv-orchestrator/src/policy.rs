//! Who may do what: the caller's [`Context`] (what a validated token says) and the one policy
//! table, [`rule`], that every call is checked against.
//!
//! Roles are per project and ordered: `admin` implies `member` implies `reader` (Keystone's
//! implied roles after `keystone-manage bootstrap`). As in OpenStack's default policy, a
//! token with the `admin` role is a cloud administrator: it sees and manages every project's
//! resources. Anyone else sees only the resources of the project the token is scoped to,
//! plus what is deliberately shared (public images, public flavors, shared image members);
//! a resource of another project answers exactly like a missing one ([`Context::owns`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::Timestamp;

/// A role on a project, ordered by what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the project's resources.
    Reader,
    /// Reads and changes the project's resources.
    Member,
    /// Manages the cloud.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Member, Role::Admin];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// The role of a name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of one request: what its token says. Only identity makes one (from a valid
/// token), so holding a `Context` means the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub(crate) user_id: String,
    pub(crate) user_name: String,
    pub(crate) project_id: String,
    pub(crate) project_name: String,
    pub(crate) roles: Vec<Role>,
    pub(crate) issued_at: Timestamp,
    pub(crate) expires_at: Timestamp,
}

impl Context {
    /// The user's id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }
    /// The user's name.
    pub fn user_name(&self) -> &str {
        &self.user_name
    }
    /// The project the token is scoped to.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }
    /// That project's name.
    pub fn project_name(&self) -> &str {
        &self.project_name
    }
    /// The user's roles on that project.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }
    /// When the token was issued.
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    /// When the token expires.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
    /// The highest role held.
    pub fn highest_role(&self) -> Option<Role> {
        self.roles.iter().copied().max()
    }
    /// True for a cloud administrator.
    pub fn is_admin(&self) -> bool {
        self.highest_role() == Some(Role::Admin)
    }
    /// True when the caller may see a resource owned by `project_id`: its own project's, or
    /// any for an admin.
    pub fn owns(&self, project_id: &str) -> bool {
        self.is_admin() || self.project_id == project_id
    }
    /// The project filter for listings: `None` (all) for an admin, else the caller's project.
    pub fn list_scope(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.project_id.as_str())
    }
    /// Fails with [`Error::NotFound`] unless the caller owns (or administers) `project_id`.
    pub fn must_own(&self, project_id: &str, kind: &'static str, id: &str) -> Result<()> {
        if self.owns(project_id) {
            Ok(())
        } else {
            Err(Error::not_found(kind, id))
        }
    }
}

/// What a call needs the caller to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Any valid token (what is visible is still decided by ownership).
    Authenticated,
    /// `reader` or higher on the scoped project.
    Reader,
    /// `member` or higher on the scoped project.
    Member,
    /// `admin`.
    Admin,
}

/// Every call the control plane offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // The names say it: resource, then verb.
pub enum Action {
    ProjectCreate,
    ProjectList,
    ProjectGet,
    ProjectUpdate,
    ProjectDelete,
    UserCreate,
    UserList,
    UserGet,
    UserUpdate,
    UserDelete,
    RoleList,
    RoleGrant,
    RoleRevoke,
    AssignmentList,
    TokenRevoke,
    QuotaGet,
    QuotaSet,
    ImageCreate,
    ImageUpload,
    ImageGet,
    ImageList,
    ImageUpdate,
    ImagePublish,
    ImageDelete,
    ImageUse,
    ImageMemberAdd,
    ImageMemberList,
    ImageMemberUpdate,
    ImageMemberRemove,
    FlavorCreate,
    FlavorGet,
    FlavorList,
    FlavorDelete,
    FlavorAccessAdd,
    FlavorAccessList,
    FlavorAccessRemove,
    HostCreate,
    HostGet,
    HostList,
    HostUpdate,
    HostDelete,
    ServerGroupCreate,
    ServerGroupGet,
    ServerGroupList,
    ServerGroupDelete,
    Schedule,
    Unschedule,
    EventList,
    InstanceCreate,
    InstanceGet,
    InstanceList,
    InstanceAction,
    InstanceDelete,
    InstanceConsole,
    InstanceSync,
    NetworkCreate,
    NetworkCreateExternal,
    NetworkGet,
    NetworkList,
    NetworkDelete,
    SubnetCreate,
    SubnetGet,
    SubnetList,
    SubnetDelete,
    PortCreate,
    PortGet,
    PortList,
    PortUpdate,
    PortDelete,
    SecurityGroupCreate,
    SecurityGroupGet,
    SecurityGroupList,
    SecurityGroupDelete,
    SecurityGroupRuleCreate,
    SecurityGroupRuleDelete,
    RouterCreate,
    RouterGet,
    RouterList,
    RouterUpdate,
    RouterDelete,
    FloatingIpCreate,
    FloatingIpGet,
    FloatingIpList,
    FloatingIpUpdate,
    FloatingIpDelete,
    VolumeCreate,
    VolumeGet,
    VolumeList,
    VolumeUpdate,
    VolumeDelete,
    VolumeAttach,
    VolumeDetach,
    SnapshotCreate,
    SnapshotGet,
    SnapshotList,
    SnapshotDelete,
}

/// The policy table: the rule of every action.
pub const fn rule(action: Action) -> Rule {
    use Action::*;
    match action {
        // Identity: Keystone's defaults. A user reads its own record and revokes its own
        // tokens; everything else about users, projects and roles is the admin's.
        ProjectCreate | ProjectUpdate | ProjectDelete => Rule::Admin,
        ProjectList | ProjectGet | AssignmentList | RoleList => Rule::Reader,
        UserCreate | UserList | UserUpdate | UserDelete => Rule::Admin,
        UserGet | TokenRevoke => Rule::Authenticated,
        RoleGrant | RoleRevoke => Rule::Admin,
        // Quotas: readers see their project's, admins set them.
        QuotaGet => Rule::Reader,
        QuotaSet => Rule::Admin,
        // Images: Glance's defaults; making an image public is the admin's.
        ImageGet | ImageList | ImageMemberList => Rule::Reader,
        ImageCreate | ImageUpload | ImageUpdate | ImageDelete | ImageUse => Rule::Member,
        ImageMemberAdd | ImageMemberUpdate | ImageMemberRemove => Rule::Member,
        ImagePublish => Rule::Admin,
        // Flavors: everyone reads what they can access, admins manage them.
        FlavorGet | FlavorList => Rule::Reader,
        FlavorCreate | FlavorDelete | FlavorAccessAdd | FlavorAccessList | FlavorAccessRemove => {
            Rule::Admin
        }
        // Compute hosts are the operator's.
        HostCreate | HostGet | HostList | HostUpdate | HostDelete => Rule::Admin,
        // Server groups and placements belong to a project's members.
        ServerGroupGet | ServerGroupList => Rule::Reader,
        ServerGroupCreate | ServerGroupDelete | Schedule | Unschedule => Rule::Member,
        EventList => Rule::Reader,
        // Compute, network and block storage: Nova's, Neutron's and Cinder's defaults (readers
        // read, members change; an external network and the periodic sync are the admin's).
        InstanceGet | InstanceList | InstanceConsole => Rule::Reader,
        InstanceCreate | InstanceAction | InstanceDelete => Rule::Member,
        InstanceSync => Rule::Admin,
        NetworkGet | NetworkList | SubnetGet | SubnetList | PortGet | PortList => Rule::Reader,
        SecurityGroupGet | SecurityGroupList | RouterGet | RouterList => Rule::Reader,
        FloatingIpGet | FloatingIpList => Rule::Reader,
        NetworkCreate | NetworkDelete | SubnetCreate | SubnetDelete => Rule::Member,
        PortCreate | PortUpdate | PortDelete => Rule::Member,
        SecurityGroupCreate | SecurityGroupDelete => Rule::Member,
        SecurityGroupRuleCreate | SecurityGroupRuleDelete => Rule::Member,
        RouterCreate | RouterUpdate | RouterDelete => Rule::Member,
        FloatingIpCreate | FloatingIpUpdate | FloatingIpDelete => Rule::Member,
        NetworkCreateExternal => Rule::Admin,
        VolumeGet | VolumeList | SnapshotGet | SnapshotList => Rule::Reader,
        VolumeCreate | VolumeUpdate | VolumeDelete | VolumeAttach | VolumeDetach => Rule::Member,
        SnapshotCreate | SnapshotDelete => Rule::Member,
    }
}

/// Checks `ctx` against the table for `action`.
pub fn authorize(ctx: &Context, action: Action) -> Result<()> {
    let needed = match rule(action) {
        Rule::Authenticated => return Ok(()),
        Rule::Reader => Role::Reader,
        Rule::Member => Role::Member,
        Rule::Admin => Role::Admin,
    };
    match ctx.highest_role() {
        Some(r) if r >= needed => Ok(()),
        _ => Err(Error::Forbidden { action }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(project: &str, roles: &[Role]) -> Context {
        Context {
            user_id: "u".into(),
            user_name: "u".into(),
            project_id: project.into(),
            project_name: project.into(),
            roles: roles.to_vec(),
            issued_at: Timestamp(0),
            expires_at: Timestamp(1),
        }
    }

    #[test]
    fn roles_imply_the_lesser_ones() {
        let reader = ctx("p", &[Role::Reader]);
        let member = ctx("p", &[Role::Member]);
        let admin = ctx("p", &[Role::Admin]);
        assert!(authorize(&reader, Action::ImageList).is_ok());
        assert!(matches!(
            authorize(&reader, Action::ImageCreate),
            Err(Error::Forbidden { action: Action::ImageCreate })
        ));
        assert!(authorize(&member, Action::ImageCreate).is_ok());
        assert!(authorize(&member, Action::FlavorCreate).is_err());
        assert!(authorize(&admin, Action::FlavorCreate).is_ok());
        assert!(authorize(&ctx("p", &[]), Action::ImageList).is_err());
        assert!(authorize(&ctx("p", &[]), Action::UserGet).is_ok());
    }

    #[test]
    fn only_admins_see_across_projects() {
        let member = ctx("p", &[Role::Member]);
        assert!(member.owns("p") && !member.owns("q"));
        assert!(matches!(member.must_own("q", "image", "x"), Err(Error::NotFound { .. })));
        assert_eq!(member.list_scope(), Some("p"));
        let admin = ctx("p", &[Role::Admin, Role::Reader]);
        assert!(admin.owns("q"));
        assert_eq!(admin.list_scope(), None);
    }

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::from_name(r.as_str()), Some(r));
        }
        assert_eq!(Role::from_name("root"), None);
    }
}
