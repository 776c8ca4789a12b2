//! The store logic both databases share: every statement is written once (with `$N`
//! parameters, which both understand), and a backend only supplies connections,
//! transactions and value conversion ([`Backend`], [`Conn`]).

use std::sync::Arc;

use super::group::{GroupCommit, Job};
use super::schema::{self, LATEST, MIGRATIONS, MIGRATIONS_TABLE};
use super::*;

/// A value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// BIGINT.
    I64(i64),
    /// REAL / DOUBLE PRECISION.
    F64(f64),
    /// TEXT.
    Text(String),
    /// Nullable TEXT.
    OptText(Option<String>),
    /// BOOLEAN.
    Bool(bool),
}

/// The column types of a query's result, so each backend reads them the right way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// BIGINT.
    I64,
    /// REAL / DOUBLE PRECISION.
    F64,
    /// TEXT.
    Text,
    /// Nullable TEXT.
    OptText,
    /// BOOLEAN.
    Bool,
}

impl Val {
    fn i64(&self) -> i64 {
        match self {
            Val::I64(v) => *v,
            _ => 0,
        }
    }
    fn f64(&self) -> f64 {
        match self {
            Val::F64(v) => *v,
            _ => 0.0,
        }
    }
    fn text(&self) -> String {
        match self {
            Val::Text(s) => s.clone(),
            Val::OptText(s) => s.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }
    fn opt_text(&self) -> Option<String> {
        match self {
            Val::OptText(s) => s.clone(),
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn bool(&self) -> bool {
        matches!(self, Val::Bool(true))
    }
}

fn t(s: &str) -> Val {
    Val::Text(s.to_string())
}

/// A connection or transaction that runs statements.
pub trait Conn {
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64>;
    /// Runs a query, reading each row's columns as `types`.
    fn query(&mut self, sql: &str, args: &[Val], types: &[Ty]) -> Result<Vec<Vec<Val>>>;
    /// Runs several statements without parameters (DDL).
    fn batch(&mut self, sql: &str) -> Result<()>;
}

/// A database: how to read and how to write in a transaction.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// True for PostgreSQL (DDL dialect).
    const POSTGRES: bool;
    /// True when concurrent writes of this process should share commits
    /// ([`group`](super::group)): a database with one writer at a time (SQLite). A server
    /// database with concurrent transactions (PostgreSQL) flushes concurrent commits together
    /// itself.
    const GROUP_COMMIT: bool;
    /// Runs `f` on a connection outside any explicit transaction.
    fn read<R>(&self, f: &mut dyn FnMut(&mut dyn Conn) -> Result<R>) -> Result<R>;
    /// Runs `f` in a write transaction, committing on `Ok`, rolling back on `Err`; retries
    /// when the database reports a serialization failure or deadlock.
    fn write<R>(&self, f: &mut dyn FnMut(&mut dyn Conn) -> Result<R>) -> Result<R>;
    /// Takes the lock that serialises migrations between processes (inside `write`).
    fn lock_migrations(c: &mut dyn Conn) -> Result<()>;
}

/// A [`Store`] over a SQL [`Backend`]: [`SqliteStore`] or [`PostgresStore`].
#[derive(Debug)]
pub struct SqlStore<B> {
    pub(crate) db: B,
    group: Option<GroupCommit>,
}

impl<B: Backend> SqlStore<B> {
    /// Brings the schema up to [`LATEST`], one migration per transaction.
    pub(crate) fn migrate(db: B) -> Result<Self> {
        db.write(&mut |c| {
            B::lock_migrations(c)?;
            c.batch(MIGRATIONS_TABLE)?;
            let found = current_version(c)?;
            if found > LATEST {
                return Err(StoreError::SchemaTooNew { found, known: LATEST });
            }
            for m in MIGRATIONS.iter().filter(|m| m.version > found) {
                c.batch(&schema::ddl(m, B::POSTGRES))?;
                c.exec(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    &[Val::I64(m.version), t(m.name), Val::I64(crate::ids::now().0)],
                )?;
            }
            Ok(())
        })?;
        Ok(SqlStore { db, group: B::GROUP_COMMIT.then(GroupCommit::default) })
    }
}

fn current_version(c: &mut dyn Conn) -> Result<i64> {
    let rows =
        c.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[], &[Ty::I64])?;
    Ok(rows.first().map(|r| r[0].i64()).unwrap_or(0))
}

const HOST_TYPES: &[Ty] = &[
    Ty::Text,
    Ty::Text,
    Ty::Bool,
    Ty::I64,
    Ty::I64,
    Ty::I64,
    Ty::F64,
    Ty::F64,
    Ty::F64,
    Ty::I64,
    Ty::I64,
    Ty::I64,
];
const TOKEN_TYPES: &[Ty] = &[Ty::Text, Ty::Text, Ty::Text, Ty::Text, Ty::I64, Ty::I64, Ty::Bool];
const ALLOC_TYPES: &[Ty] = &[Ty::Text, Ty::Text, Ty::Text, Ty::I64, Ty::I64, Ty::I64];
const EVENT_TYPES: &[Ty] =
    &[Ty::I64, Ty::I64, Ty::Text, Ty::Text, Ty::Text, Ty::Text, Ty::Text, Ty::Text];
const RECORD_TYPES: &[Ty] = &[Ty::Text, Ty::OptText, Ty::Text, Ty::Text, Ty::I64];
const QUOTA_TYPES: &[Ty] = &[Ty::Text, Ty::I64, Ty::I64, Ty::I64];

fn host_row(r: &[Val]) -> HostRow {
    HostRow {
        id: r[0].text(),
        name: r[1].text(),
        enabled: r[2].bool(),
        vcpus: r[3].i64(),
        ram_mb: r[4].i64(),
        disk_gb: r[5].i64(),
        cpu_ratio: r[6].f64(),
        ram_ratio: r[7].f64(),
        disk_ratio: r[8].f64(),
        used_vcpus: r[9].i64(),
        used_ram_mb: r[10].i64(),
        used_disk_gb: r[11].i64(),
    }
}

fn alloc_row(r: &[Val]) -> Allocation {
    Allocation {
        consumer_id: r[0].text(),
        host_id: r[1].text(),
        project_id: r[2].text(),
        vcpus: r[3].i64(),
        ram_mb: r[4].i64(),
        disk_gb: r[5].i64(),
    }
}

fn record_row(kind: Kind, r: &[Val]) -> Record {
    Record {
        kind,
        id: r[0].text(),
        project_id: r[1].opt_text(),
        name: r[2].text(),
        body: r[3].text(),
        version: r[4].i64(),
    }
}

fn quota_row(r: &[Val]) -> QuotaRow {
    QuotaRow { resource: r[0].text(), limit: r[1].i64(), in_use: r[2].i64(), reserved: r[3].i64() }
}

fn find_alloc(c: &mut dyn Conn, consumer: &str) -> Result<Option<Allocation>> {
    let sql = format!("SELECT {ALLOC_COLS} FROM allocations WHERE consumer_id = $1");
    Ok(c.query(&sql, &[t(consumer)], ALLOC_TYPES)?.first().map(|r| alloc_row(r)))
}

fn find_quota(c: &mut dyn Conn, project: &str, resource: &str) -> Result<Option<QuotaRow>> {
    let rows = c.query(
        "SELECT resource, hard_limit, in_use, reserved FROM quotas \
         WHERE project_id = $1 AND resource = $2",
        &[t(project), t(resource)],
        QUOTA_TYPES,
    )?;
    Ok(rows.first().map(|r| quota_row(r)))
}

fn record_exists(c: &mut dyn Conn, kind: Kind, id: &str) -> Result<bool> {
    let rows = c.query(
        "SELECT id FROM resources WHERE kind = $1 AND id = $2",
        &[t(kind.as_str()), t(id)],
        &[Ty::Text],
    )?;
    Ok(!rows.is_empty())
}

/// Applies one [`Op`] inside a transaction.
fn apply_op(c: &mut dyn Conn, op: &Op) -> Result<()> {
    match op {
        Op::Insert(r) => {
            let n = c.exec(
                "INSERT INTO resources (kind, id, project_id, name, body, version) \
                 VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT DO NOTHING",
                &[
                    t(r.kind.as_str()),
                    t(&r.id),
                    Val::OptText(r.project_id.clone()),
                    t(&r.name),
                    t(&r.body),
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Exists { kind: r.kind.to_string(), id: r.id.clone() });
            }
        }
        Op::Update(r) => {
            let n = c.exec(
                "UPDATE resources SET project_id = $1, name = $2, body = $3, \
                 version = version + 1 WHERE kind = $4 AND id = $5 AND version = $6",
                &[
                    Val::OptText(r.project_id.clone()),
                    t(&r.name),
                    t(&r.body),
                    t(r.kind.as_str()),
                    t(&r.id),
                    Val::I64(r.version),
                ],
            )?;
            if n == 0 {
                let (kind, id) = (r.kind.to_string(), r.id.clone());
                return Err(if record_exists(c, r.kind, &r.id)? {
                    StoreError::Stale { kind, id, expected: r.version }
                } else {
                    StoreError::Missing { kind, id }
                });
            }
        }
        Op::Delete(kind, id) => {
            let n = c.exec(
                "DELETE FROM resources WHERE kind = $1 AND id = $2",
                &[t(kind.as_str()), t(id)],
            )?;
            if n == 0 {
                return Err(StoreError::Missing { kind: kind.to_string(), id: id.clone() });
            }
        }
        Op::Quota { project_id, changes, mode } => {
            let update = quota_update(*mode);
            for (resource, amount, default_limit) in sorted_changes(changes) {
                c.exec(
                    "INSERT INTO quotas (project_id, resource, hard_limit, in_use, reserved) \
                     VALUES ($1, $2, $3, 0, 0) ON CONFLICT DO NOTHING",
                    &[t(project_id), t(&resource), Val::I64(default_limit)],
                )?;
                let n = c.exec(&update, &[Val::I64(amount), t(project_id), t(&resource)])?;
                if n == 0 {
                    let row = find_quota(c, project_id, &resource)?;
                    let row = row.unwrap_or(QuotaRow {
                        resource: resource.clone(),
                        limit: default_limit,
                        in_use: 0,
                        reserved: 0,
                    });
                    return Err(StoreError::OverQuota {
                        project_id: project_id.clone(),
                        resource,
                        limit: row.limit,
                        in_use: row.in_use,
                        reserved: row.reserved,
                        requested: amount,
                    });
                }
            }
        }
        Op::SetLimit { project_id, resource, limit } => {
            c.exec(
                "INSERT INTO quotas (project_id, resource, hard_limit, in_use, reserved) \
                 VALUES ($1, $2, $3, 0, 0) ON CONFLICT (project_id, resource) \
                 DO UPDATE SET hard_limit = excluded.hard_limit",
                &[t(project_id), t(resource), Val::I64(*limit)],
            )?;
        }
        Op::PutHost(h) => {
            c.exec(
                PUT_HOST_SQL,
                &[
                    t(&h.id),
                    t(&h.name),
                    Val::Bool(h.enabled),
                    Val::I64(h.vcpus),
                    Val::I64(h.ram_mb),
                    Val::I64(h.disk_gb),
                    Val::F64(h.cpu_ratio),
                    Val::F64(h.ram_ratio),
                    Val::F64(h.disk_ratio),
                ],
            )?;
        }
        Op::DeleteHost(id) => {
            // Conditional on holding nothing, so a concurrent claim cannot slip in between.
            let n = c.exec(
                "DELETE FROM hosts WHERE id = $1 AND used_vcpus = 0 AND used_ram_mb = 0 \
                 AND used_disk_gb = 0 \
                 AND NOT EXISTS (SELECT 1 FROM allocations WHERE host_id = $1)",
                &[t(id)],
            )?;
            if n == 0 {
                let exists = !c
                    .query("SELECT id FROM hosts WHERE id = $1", &[t(id)], &[Ty::Text])?
                    .is_empty();
                return Err(if exists {
                    StoreError::HostBusy(id.clone())
                } else {
                    StoreError::Missing { kind: "host".into(), id: id.clone() }
                });
            }
        }
        Op::Claim(a) => {
            let n = c.exec(
                CLAIM_SQL,
                &[Val::I64(a.vcpus), Val::I64(a.ram_mb), Val::I64(a.disk_gb), t(&a.host_id)],
            )?;
            if n == 0 {
                return Err(StoreError::NoCapacity {
                    host_id: a.host_id.clone(),
                    consumer_id: a.consumer_id.clone(),
                });
            }
            let n = c.exec(
                "INSERT INTO allocations (consumer_id, host_id, project_id, vcpus, ram_mb, \
                 disk_gb) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    t(&a.consumer_id),
                    t(&a.host_id),
                    t(&a.project_id),
                    Val::I64(a.vcpus),
                    Val::I64(a.ram_mb),
                    Val::I64(a.disk_gb),
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Exists {
                    kind: "allocation".into(),
                    id: a.consumer_id.clone(),
                });
            }
        }
        Op::Unclaim(consumer) => {
            // DELETE ... RETURNING: two concurrent unclaims cannot both give the room back.
            let sql =
                format!("DELETE FROM allocations WHERE consumer_id = $1 RETURNING {ALLOC_COLS}");
            let rows = c.query(&sql, &[t(consumer)], ALLOC_TYPES)?;
            let a = rows.first().map(|r| alloc_row(r)).ok_or_else(|| StoreError::Missing {
                kind: "allocation".into(),
                id: consumer.clone(),
            })?;
            c.exec(
                UNCLAIM_SQL,
                &[Val::I64(a.vcpus), Val::I64(a.ram_mb), Val::I64(a.disk_gb), t(&a.host_id)],
            )?;
        }
        Op::PutToken(tk) => {
            let sql = format!(
                "INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT DO NOTHING"
            );
            let n = c.exec(
                &sql,
                &[
                    t(&tk.hash),
                    t(&tk.user_id),
                    t(&tk.project_id),
                    t(&tk.subject),
                    Val::I64(tk.issued_at),
                    Val::I64(tk.expires_at),
                    Val::Bool(tk.revoked),
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Exists { kind: "token".into(), id: "(hash)".into() });
            }
        }
        Op::Event(e) => {
            c.exec(
                "INSERT INTO events (at, project_id, user_id, action, resource_kind, \
                 resource_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    Val::I64(e.at),
                    t(&e.project_id),
                    t(&e.user_id),
                    t(&e.action),
                    t(&e.resource_kind),
                    t(&e.resource_id),
                    t(&e.detail),
                ],
            )?;
        }
    }
    Ok(())
}

/// Applies each job's ops inside a savepoint of the open transaction: a job that fails is
/// rolled back alone and keeps its error; the others stay for the one commit.
fn apply_group(c: &mut dyn Conn, jobs: &[Arc<Job>]) -> Result<Vec<Result<()>>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        c.batch("SAVEPOINT hv_change")?;
        match job.ops.iter().try_for_each(|op| apply_op(c, op)) {
            Ok(()) => c.batch("RELEASE hv_change")?,
            // If the database dropped the whole transaction (an I/O error), the savepoint is
            // gone too and this fails the group: nothing of it is committed.
            Err(e) => {
                c.batch("ROLLBACK TO hv_change; RELEASE hv_change")?;
                out.push(Err(e));
                continue;
            }
        }
        out.push(Ok(()));
    }
    Ok(out)
}

impl<B: Backend> Store for SqlStore<B> {
    fn apply(&self, ops: &[Op]) -> Result<()> {
        match &self.group {
            Some(g) => g.apply(ops, |jobs| self.db.write(&mut |c| apply_group(c, jobs))),
            None => self.db.write(&mut |c| ops.iter().try_for_each(|op| apply_op(c, op))),
        }
    }

    fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>> {
        let sql = format!("SELECT {RECORD_COLS} FROM resources WHERE kind = $1 AND id = $2");
        self.db.read(&mut |c| {
            let rows = c.query(&sql, &[t(kind.as_str()), t(id)], RECORD_TYPES)?;
            Ok(rows.first().map(|r| record_row(kind, r)))
        })
    }

    fn list(
        &self,
        kind: Kind,
        project_id: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Record>> {
        let sql = list_sql(project_id.is_some(), name.is_some());
        let mut args = vec![t(kind.as_str())];
        args.extend(project_id.map(t));
        args.extend(name.map(t));
        self.db.read(&mut |c| {
            let rows = c.query(&sql, &args, RECORD_TYPES)?;
            Ok(rows.iter().map(|r| record_row(kind, r)).collect())
        })
    }

    fn token(&self, hash: &str) -> Result<Option<TokenRow>> {
        let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1");
        self.db.read(&mut |c| {
            let rows = c.query(&sql, &[t(hash)], TOKEN_TYPES)?;
            Ok(rows.first().map(|r| TokenRow {
                hash: r[0].text(),
                user_id: r[1].text(),
                project_id: r[2].text(),
                subject: r[3].text(),
                issued_at: r[4].i64(),
                expires_at: r[5].i64(),
                revoked: r[6].bool(),
            }))
        })
    }

    fn revoke_token(&self, hash: &str) -> Result<bool> {
        self.db.write(&mut |c| {
            Ok(c.exec(
                "UPDATE tokens SET revoked = $1 WHERE hash = $2",
                &[Val::Bool(true), t(hash)],
            )? > 0)
        })
    }

    fn revoke_tokens(&self, user_id: Option<&str>, project_id: Option<&str>) -> Result<u64> {
        let (sql, args) = match (user_id, project_id) {
            (Some(u), Some(p)) => (
                "UPDATE tokens SET revoked = $1 WHERE user_id = $2 AND project_id = $3",
                vec![Val::Bool(true), t(u), t(p)],
            ),
            (Some(u), None) => {
                ("UPDATE tokens SET revoked = $1 WHERE user_id = $2", vec![Val::Bool(true), t(u)])
            }
            (None, Some(p)) => (
                "UPDATE tokens SET revoked = $1 WHERE project_id = $2",
                vec![Val::Bool(true), t(p)],
            ),
            (None, None) => return Ok(0),
        };
        self.db.write(&mut |c| c.exec(sql, &args))
    }

    fn purge_tokens(&self, now: i64) -> Result<u64> {
        self.db.write(&mut |c| c.exec("DELETE FROM tokens WHERE expires_at < $1", &[Val::I64(now)]))
    }

    fn quotas(&self, project_id: &str) -> Result<Vec<QuotaRow>> {
        self.db.read(&mut |c| {
            let rows = c.query(
                "SELECT resource, hard_limit, in_use, reserved FROM quotas \
                 WHERE project_id = $1 ORDER BY resource",
                &[t(project_id)],
                QUOTA_TYPES,
            )?;
            Ok(rows.iter().map(|r| quota_row(r)).collect())
        })
    }

    fn hosts(&self) -> Result<Vec<HostRow>> {
        let sql = format!("SELECT {HOST_COLS} FROM hosts ORDER BY id");
        self.db.read(&mut |c| {
            Ok(c.query(&sql, &[], HOST_TYPES)?.iter().map(|r| host_row(r)).collect())
        })
    }

    fn host(&self, id: &str) -> Result<Option<HostRow>> {
        let sql = format!("SELECT {HOST_COLS} FROM hosts WHERE id = $1");
        self.db.read(&mut |c| Ok(c.query(&sql, &[t(id)], HOST_TYPES)?.first().map(|r| host_row(r))))
    }

    fn allocation(&self, consumer_id: &str) -> Result<Option<Allocation>> {
        self.db.read(&mut |c| find_alloc(c, consumer_id))
    }

    fn allocations(&self, host_id: &str) -> Result<Vec<Allocation>> {
        let sql =
            format!("SELECT {ALLOC_COLS} FROM allocations WHERE host_id = $1 ORDER BY consumer_id");
        self.db.read(&mut |c| {
            Ok(c.query(&sql, &[t(host_id)], ALLOC_TYPES)?.iter().map(|r| alloc_row(r)).collect())
        })
    }

    fn events(&self, project_id: Option<&str>, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        let sql = events_sql(project_id.is_some());
        let mut args = vec![Val::I64(after)];
        args.extend(project_id.map(t));
        args.push(Val::I64(limit));
        self.db.read(&mut |c| {
            let rows = c.query(&sql, &args, EVENT_TYPES)?;
            Ok(rows
                .iter()
                .map(|r| EventRow {
                    seq: r[0].i64(),
                    at: r[1].i64(),
                    project_id: r[2].text(),
                    user_id: r[3].text(),
                    action: r[4].text(),
                    resource_kind: r[5].text(),
                    resource_id: r[6].text(),
                    detail: r[7].text(),
                })
                .collect())
        })
    }

    fn schema_version(&self) -> Result<i64> {
        self.db.read(&mut |c| current_version(c))
    }
}
