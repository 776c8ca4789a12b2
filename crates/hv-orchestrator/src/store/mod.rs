//! The state store: every record of the cloud, behind one trait with two implementations.
//!
//! - [`SqliteStore`]: an embedded SQLite file (the default; WAL mode, `synchronous=FULL`).
//! - [`PostgresStore`]: a PostgreSQL database that several processes or hosts can share.
//!
//! Both run the same versioned schema migrations ([`schema`]) and the same test suite.
//!
//! The model is small on purpose. Tenant-facing resources (projects, users, images, flavors,
//! server groups, ...) are [`Record`]s in one `resources` table: indexed columns (kind, id,
//! owning project, name, a version counter) and a JSON body the typed layers above own.
//! The things whose consistency matters under concurrency have tables of their own with real
//! columns, so the database itself can check them in a conditional update: quota usage
//! (`quotas`), host capacity and placements (`hosts`, `allocations`), tokens (`tokens`) and
//! the event log (`events`).
//!
//! Every multi-row change is one call to [`Store::apply`] with a list of [`Op`]s, applied in
//! one transaction, all or nothing: a create that claims quota and logs an event, a placement
//! claim that also adds the instance to its server group (compare-and-swap on the group's
//! version), a delete that releases quota. Quota and capacity checks are conditional updates
//! (`... SET in_use = in_use + n WHERE in_use + reserved + n <= limit`), so concurrent claims,
//! from threads or from processes sharing the database, never overshoot.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod conns;
mod group;
pub mod postgres;
pub mod schema;
mod sql;
pub mod sqlite;

pub use self::postgres::PostgresStore;
pub use self::sql::SqlStore;
pub use self::sqlite::SqliteStore;

/// The kinds of [`Record`] the `resources` table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An identity domain.
    Domain,
    /// A project (tenant).
    Project,
    /// A user.
    User,
    /// A role (admin, member, reader).
    Role,
    /// A role assignment: a user has a role on a project.
    Assignment,
    /// A region of the catalog.
    Region,
    /// A unique name: `<kind>:<scope>:<name>` taken in the same transaction as the record it
    /// names, so two concurrent creates of one name cannot both succeed.
    Name,
    /// An image (Glance).
    Image,
    /// A project that an image is shared with.
    ImageMember,
    /// Something that uses an image (an instance's disk), keeping it from being deleted.
    ImageUse,
    /// A flavor.
    Flavor,
    /// A project's access to a private flavor.
    FlavorAccess,
    /// A server group (affinity or anti-affinity policy).
    ServerGroup,
    /// An instance (Nova server).
    Instance,
    /// A tenant network (Neutron).
    Network,
    /// A subnet of a network.
    Subnet,
    /// A port on a network.
    Port,
    /// A security group with its rules.
    SecurityGroup,
    /// A router.
    Router,
    /// A floating IP.
    FloatingIp,
    /// A block-storage volume (Cinder).
    Volume,
    /// A snapshot of a volume.
    VolumeSnapshot,
}

impl Kind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Project => "project",
            Kind::User => "user",
            Kind::Role => "role",
            Kind::Assignment => "assignment",
            Kind::Region => "region",
            Kind::Name => "name",
            Kind::Image => "image",
            Kind::ImageMember => "image_member",
            Kind::ImageUse => "image_use",
            Kind::Flavor => "flavor",
            Kind::FlavorAccess => "flavor_access",
            Kind::ServerGroup => "server_group",
            Kind::Instance => "instance",
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Port => "port",
            Kind::SecurityGroup => "security_group",
            Kind::Router => "router",
            Kind::FloatingIp => "floating_ip",
            Kind::Volume => "volume",
            Kind::VolumeSnapshot => "volume_snapshot",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the `resources` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it is.
    pub kind: Kind,
    /// Its id, unique within the kind.
    pub id: String,
    /// The project that owns it (`None`: a cloud-wide record such as a user or a flavor).
    pub project_id: Option<String>,
    /// Its name (for name lookups; not unique).
    pub name: String,
    /// The typed layer's JSON.
    pub body: String,
    /// Bumped on every update; [`Op::Update`] compares it (optimistic concurrency).
    pub version: i64,
}

/// A token as stored: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Hex SHA-256 of the token secret (the primary key).
    pub hash: String,
    /// The user it was issued to.
    pub user_id: String,
    /// The one project it is scoped to.
    pub project_id: String,
    /// Who the token speaks for, as JSON the identity layer owns: user and project names and
    /// the user's roles on the project when it was issued.
    pub subject: String,
    /// Issue time, microseconds since the Unix epoch.
    pub issued_at: i64,
    /// Expiry time, microseconds since the Unix epoch.
    pub expires_at: i64,
    /// Revoked tokens stay until they expire, so a revoked token is told apart from a bad one.
    pub revoked: bool,
}

/// A project's limit and usage of one quota resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRow {
    /// The resource name (`instances`, `cores`, ...).
    pub resource: String,
    /// The limit; negative means unlimited.
    pub limit: i64,
    /// Committed usage.
    pub in_use: i64,
    /// Claimed by operations in flight, not yet committed.
    pub reserved: i64,
}

/// How a quota change moves usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// `in_use += n`, checked against the limit.
    Use,
    /// `reserved += n`, checked against the limit.
    Reserve,
    /// `reserved -= n; in_use += n` (a reservation becomes usage).
    Commit,
    /// `reserved -= n` (a reservation is given back).
    Rollback,
    /// `in_use -= n` (usage is given back).
    Release,
}

/// A compute host's capacity and what is allocated on it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    /// Its id.
    pub id: String,
    /// Its name (the hypervisor hostname).
    pub name: String,
    /// Whether the scheduler may place on it.
    pub enabled: bool,
    /// Physical CPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub ram_mb: i64,
    /// Disk in GiB.
    pub disk_gb: i64,
    /// CPU allocation ratio (Nova's default 16.0).
    pub cpu_ratio: f64,
    /// RAM allocation ratio (Nova's default 1.5).
    pub ram_ratio: f64,
    /// Disk allocation ratio (Nova's default 1.0).
    pub disk_ratio: f64,
    /// vCPUs allocated.
    pub used_vcpus: i64,
    /// RAM allocated, MiB.
    pub used_ram_mb: i64,
    /// Disk allocated, GiB.
    pub used_disk_gb: i64,
}

/// What one consumer (an instance) holds on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The consumer (instance id).
    pub consumer_id: String,
    /// The host.
    pub host_id: String,
    /// The project the consumer belongs to.
    pub project_id: String,
    /// vCPUs.
    pub vcpus: i64,
    /// RAM, MiB.
    pub ram_mb: i64,
    /// Disk, GiB.
    pub disk_gb: i64,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Its position in the log (assigned by the store; 0 in an [`Op::Event`]).
    pub seq: i64,
    /// Microseconds since the Unix epoch.
    pub at: i64,
    /// The project it concerns.
    pub project_id: String,
    /// Who did it.
    pub user_id: String,
    /// What was done (`image.create`, `quota.set`, ...).
    pub action: String,
    /// The kind of resource.
    pub resource_kind: String,
    /// The resource's id.
    pub resource_id: String,
    /// A short free-form detail (JSON).
    pub detail: String,
}

/// One step of an atomic change ([`Store::apply`]).
#[derive(Debug, Clone)]
pub enum Op {
    /// Inserts a record; an existing (kind, id) fails with [`StoreError::Exists`].
    Insert(Record),
    /// Replaces a record's name, project and body if its version is still `record.version`
    /// (then bumps it); otherwise [`StoreError::Stale`] or [`StoreError::Missing`].
    Update(Record),
    /// Deletes a record; a missing one fails with [`StoreError::Missing`].
    Delete(Kind, String),
    /// Changes a project's quota usage, every resource or none ([`StoreError::OverQuota`]).
    /// Rows missing for the project are created with limit `default_limit`.
    Quota {
        /// The project.
        project_id: String,
        /// (resource, amount, limit for a row not yet there).
        changes: Vec<(String, i64, i64)>,
        /// How usage moves.
        mode: QuotaMode,
    },
    /// Sets a project's limit for one resource (creating the row).
    SetLimit {
        /// The project.
        project_id: String,
        /// The resource.
        resource: String,
        /// The new limit (negative: unlimited).
        limit: i64,
    },
    /// Adds or replaces a host's definition (its usage is kept).
    PutHost(HostRow),
    /// Removes a host that holds no allocations.
    DeleteHost(String),
    /// Claims capacity on a host for a consumer, checked against the host's capacity times its
    /// ratios and its enabled flag ([`StoreError::NoCapacity`]).
    Claim(Allocation),
    /// Gives a consumer's allocation back.
    Unclaim(String),
    /// Stores a token.
    PutToken(TokenRow),
    /// Appends to the event log.
    Event(EventRow),
}

/// What a store call can fail with.
#[derive(Debug, Error)]
pub enum StoreError {
    /// An insert found the id taken.
    #[error("{kind} '{id}' already exists")]
    Exists {
        /// The kind.
        kind: String,
        /// The id.
        id: String,
    },
    /// An update or delete found no such record.
    #[error("{kind} '{id}' does not exist")]
    Missing {
        /// The kind.
        kind: String,
        /// The id.
        id: String,
    },
    /// An update lost a race: the record changed since it was read.
    #[error("{kind} '{id}' changed concurrently (expected version {expected})")]
    Stale {
        /// The kind.
        kind: String,
        /// The id.
        id: String,
        /// The version the caller read.
        expected: i64,
    },
    /// A quota change would pass the limit.
    #[error("quota exceeded for {resource} in project {project_id}: limit {limit}, in use {in_use}, reserved {reserved}, requested {requested}")]
    OverQuota {
        /// The project.
        project_id: String,
        /// The resource.
        resource: String,
        /// Its limit.
        limit: i64,
        /// Usage when checked.
        in_use: i64,
        /// Reservations when checked.
        reserved: i64,
        /// The amount asked for.
        requested: i64,
    },
    /// A placement claim did not fit (or the host is disabled or gone).
    #[error("host '{host_id}' has no room for consumer '{consumer_id}'")]
    NoCapacity {
        /// The host.
        host_id: String,
        /// The consumer.
        consumer_id: String,
    },
    /// A host still holds allocations.
    #[error("host '{0}' still holds allocations")]
    HostBusy(String),
    /// The database's schema is newer than this program knows.
    #[error("database schema version {found} is newer than this program's {known}")]
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The newest version this program has.
        known: i64,
    },
    /// The shared commit of a group of concurrent changes failed: none of them was applied.
    #[error("the group commit failed: {0}")]
    GroupCommit(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// A store path could not be prepared.
    #[error("cannot prepare the store at '{path}': {source}")]
    Path {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The result of a store call.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The state store. `Send + Sync`: one store is shared by every thread of the process.
pub trait Store: Send + Sync + fmt::Debug {
    /// Applies `ops` in one transaction: all of them or, on the first failure, none.
    fn apply(&self, ops: &[Op]) -> Result<()>;
    /// One record.
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>>;
    /// Records of a kind, optionally only a project's and/or of a name, ordered by id.
    fn list(&self, kind: Kind, project_id: Option<&str>, name: Option<&str>)
        -> Result<Vec<Record>>;
    /// A token by the hash of its secret.
    fn token(&self, hash: &str) -> Result<Option<TokenRow>>;
    /// Revokes one token; false if there was none.
    fn revoke_token(&self, hash: &str) -> Result<bool>;
    /// Revokes every token of a user, of a project, or of a user on a project (`None` matches
    /// any; both `None` revokes nothing); returns how many.
    fn revoke_tokens(&self, user_id: Option<&str>, project_id: Option<&str>) -> Result<u64>;
    /// Deletes tokens that expired before `now`; returns how many.
    fn purge_tokens(&self, now: i64) -> Result<u64>;
    /// A project's quota rows, ordered by resource.
    fn quotas(&self, project_id: &str) -> Result<Vec<QuotaRow>>;
    /// Every host, ordered by id.
    fn hosts(&self) -> Result<Vec<HostRow>>;
    /// One host.
    fn host(&self, id: &str) -> Result<Option<HostRow>>;
    /// A consumer's allocation.
    fn allocation(&self, consumer_id: &str) -> Result<Option<Allocation>>;
    /// The allocations on a host, ordered by consumer.
    fn allocations(&self, host_id: &str) -> Result<Vec<Allocation>>;
    /// Event log entries with `seq > after`, optionally of one project, oldest first, at most
    /// `limit`.
    fn events(&self, project_id: Option<&str>, after: i64, limit: i64) -> Result<Vec<EventRow>>;
    /// The schema version the database is at.
    fn schema_version(&self) -> Result<i64>;
}

/// The quota change of `changes` to a row, in the order rows are locked (by resource name, so
/// two transactions never wait on each other in opposite orders).
pub(crate) fn sorted_changes(changes: &[(String, i64, i64)]) -> Vec<(String, i64, i64)> {
    let mut v = changes.to_vec();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The SQL of one quota mode: the SET clause and whether the limit is checked.
pub(crate) fn quota_sql(mode: QuotaMode) -> (&'static str, bool) {
    match mode {
        QuotaMode::Use => ("in_use = in_use + $1", true),
        QuotaMode::Reserve => ("reserved = reserved + $1", true),
        QuotaMode::Commit => ("reserved = reserved - $1, in_use = in_use + $1", false),
        QuotaMode::Rollback => ("reserved = reserved - $1", false),
        QuotaMode::Release => ("in_use = in_use - $1", false),
    }
}

/// Builds the UPDATE for a quota change: `$1` amount, `$2` project, `$3` resource.
pub(crate) fn quota_update(mode: QuotaMode) -> String {
    let (set, checked) = quota_sql(mode);
    let guard =
        if checked { " AND (hard_limit < 0 OR in_use + reserved + $1 <= hard_limit)" } else { "" };
    format!("UPDATE quotas SET {set} WHERE project_id = $2 AND resource = $3{guard}")
}

/// The claim UPDATE: `$1..$3` vcpus, ram, disk; `$4` host.
pub(crate) const CLAIM_SQL: &str = "UPDATE hosts SET used_vcpus = used_vcpus + $1, \
     used_ram_mb = used_ram_mb + $2, used_disk_gb = used_disk_gb + $3 \
     WHERE id = $4 AND enabled \
     AND used_vcpus + $1 <= vcpus * cpu_ratio \
     AND used_ram_mb + $2 <= ram_mb * ram_ratio \
     AND used_disk_gb + $3 <= disk_gb * disk_ratio";

/// The unclaim UPDATE: `$1..$3` vcpus, ram, disk; `$4` host.
pub(crate) const UNCLAIM_SQL: &str = "UPDATE hosts SET used_vcpus = used_vcpus - $1, \
     used_ram_mb = used_ram_mb - $2, used_disk_gb = used_disk_gb - $3 WHERE id = $4";

/// The host upsert: `$1..$10` id, name, enabled, vcpus, ram, disk, ratios.
pub(crate) const PUT_HOST_SQL: &str = "INSERT INTO hosts (id, name, enabled, vcpus, ram_mb, \
     disk_gb, cpu_ratio, ram_ratio, disk_ratio, used_vcpus, used_ram_mb, used_disk_gb) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, 0) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name, enabled = excluded.enabled, \
     vcpus = excluded.vcpus, ram_mb = excluded.ram_mb, disk_gb = excluded.disk_gb, \
     cpu_ratio = excluded.cpu_ratio, ram_ratio = excluded.ram_ratio, \
     disk_ratio = excluded.disk_ratio";

/// Columns of a host row, in [`HostRow`] order.
pub(crate) const HOST_COLS: &str = "id, name, enabled, vcpus, ram_mb, disk_gb, cpu_ratio, \
     ram_ratio, disk_ratio, used_vcpus, used_ram_mb, used_disk_gb";

/// Columns of a token row, in [`TokenRow`] order.
pub(crate) const TOKEN_COLS: &str =
    "hash, user_id, project_id, subject, issued_at, expires_at, revoked";

/// Columns of an allocation row, in [`Allocation`] order.
pub(crate) const ALLOC_COLS: &str = "consumer_id, host_id, project_id, vcpus, ram_mb, disk_gb";

/// Columns of an event row, in [`EventRow`] order.
pub(crate) const EVENT_COLS: &str =
    "seq, at, project_id, user_id, action, resource_kind, resource_id, detail";

/// Columns of a resource row, in [`Record`] order (kind is known by the caller).
pub(crate) const RECORD_COLS: &str = "id, project_id, name, body, version";

/// The list query for a kind with optional project and name filters.
pub(crate) fn list_sql(project: bool, name: bool) -> String {
    let mut sql = format!("SELECT {RECORD_COLS} FROM resources WHERE kind = $1");
    let mut n = 1;
    if project {
        n += 1;
        sql += &format!(" AND project_id = ${n}");
    }
    if name {
        n += 1;
        sql += &format!(" AND name = ${n}");
    }
    sql + " ORDER BY id"
}

/// The events query with an optional project filter: `$1` after, then the project if any,
/// then the limit (parameters appear in number order, which SQLite's `$N` needs).
pub(crate) fn events_sql(project: bool) -> String {
    if project {
        format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 AND project_id = $2 ORDER BY seq LIMIT $3")
    } else {
        format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_quota_modes_guard_the_limit() {
        assert!(quota_update(QuotaMode::Use).contains("hard_limit"));
        assert!(quota_update(QuotaMode::Reserve).contains("hard_limit"));
        assert!(!quota_update(QuotaMode::Release).contains("hard_limit"));
    }
}
