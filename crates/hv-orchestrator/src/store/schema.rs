//! Versioned schema migrations, one list for both databases.
//!
//! Each [`Migration`] has a version, a name and its DDL in both dialects. A store applies
//! those newer than the version recorded in `schema_migrations`, each in its own transaction
//! together with its row there, so a crash leaves the schema at a whole version. A database
//! at a version newer than [`LATEST`] is refused rather than misread.

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version (1, 2, ...; increasing).
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    /// SQLite statements.
    pub sqlite: &'static str,
    /// PostgreSQL statements.
    pub postgres: &'static str,
}

/// The tables both dialects share, with `{SEQ}` for the event log's key and `{REAL}` for
/// floating point columns.
const V1_TABLES: &str = "
CREATE TABLE resources (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    project_id TEXT,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX resources_project ON resources (kind, project_id);
CREATE INDEX resources_name ON resources (kind, name);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL
);
CREATE INDEX tokens_user ON tokens (user_id);
CREATE TABLE quotas (
    project_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    hard_limit BIGINT NOT NULL,
    in_use BIGINT NOT NULL,
    reserved BIGINT NOT NULL,
    PRIMARY KEY (project_id, resource)
);
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    vcpus BIGINT NOT NULL,
    ram_mb BIGINT NOT NULL,
    disk_gb BIGINT NOT NULL,
    cpu_ratio {REAL} NOT NULL,
    ram_ratio {REAL} NOT NULL,
    disk_ratio {REAL} NOT NULL,
    used_vcpus BIGINT NOT NULL,
    used_ram_mb BIGINT NOT NULL,
    used_disk_gb BIGINT NOT NULL
);
CREATE TABLE allocations (
    consumer_id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL REFERENCES hosts (id),
    project_id TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    ram_mb BIGINT NOT NULL,
    disk_gb BIGINT NOT NULL
);
CREATE INDEX allocations_host ON allocations (host_id);
CREATE TABLE events (
    seq {SEQ},
    at BIGINT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_project ON events (project_id, seq);
";

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "resources, tokens, quotas, hosts, allocations, events",
    sqlite: V1_TABLES,
    postgres: V1_TABLES,
}];

/// The newest schema version this program knows.
pub const LATEST: i64 = 1;

/// The DDL of `m` for a dialect, with the dialect's types filled in.
pub fn ddl(m: &Migration, postgres: bool) -> String {
    let (sql, seq, real) = if postgres {
        (m.postgres, "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "DOUBLE PRECISION")
    } else {
        (m.sqlite, "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")
    };
    sql.replace("{SEQ}", seq).replace("{REAL}", real)
}

/// The table that records applied versions (the same in both dialects).
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_latest_is_the_last() {
        let mut prev = 0;
        for m in MIGRATIONS {
            assert!(m.version > prev, "migration {} out of order", m.name);
            prev = m.version;
        }
        assert_eq!(prev, LATEST);
    }

    #[test]
    fn ddl_fills_in_the_dialect_types() {
        let pg = ddl(&MIGRATIONS[0], true);
        assert!(pg.contains("DOUBLE PRECISION") && pg.contains("IDENTITY"));
        let lite = ddl(&MIGRATIONS[0], false);
        assert!(lite.contains("AUTOINCREMENT") && !lite.contains('{'));
    }
}
