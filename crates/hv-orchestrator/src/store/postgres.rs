//! The shared store: a PostgreSQL database (the synchronous `postgres` client), for clouds
//! whose control plane runs in several processes or on several hosts.
//!
//! Transactions run at READ COMMITTED; what must be atomic is a conditional UPDATE (quota,
//! capacity, record versions), which PostgreSQL re-checks on the locked row, so concurrent
//! claims never overshoot. Rows are locked in a fixed order; a deadlock or serialization
//! failure reported anyway is retried. Migrations hold an advisory lock, so two processes
//! starting at once apply each migration once.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement, Transaction};

use super::conns::Conns;
use super::sql::{Backend, Conn, SqlStore, Ty, Val};
use super::{Result, StoreError};

/// How many connections a store keeps.
const CONNECTIONS: usize = 4;

/// How often a transaction that hit a deadlock or serialization failure is retried.
const RETRIES: usize = 20;

/// The key of the advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x6876_6f72_6368; // "hvorch"

/// One connection and its prepared statements.
pub struct PgConn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn").field("prepared", &self.prepared.len()).finish()
    }
}

/// The PostgreSQL backend.
#[derive(Debug)]
pub struct Postgres {
    conns: Conns<PgConn>,
}

/// The shared store.
pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Connects to the database at `url` (a libpq-style string such as
    /// `host=/run/postgresql user=hv dbname=hv` or a `postgresql://` URL) and brings its
    /// schema up to date.
    pub fn connect(url: &str) -> Result<Self> {
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            conns.push(PgConn { client: Client::connect(url, NoTls)?, prepared: HashMap::new() });
        }
        SqlStore::migrate(Postgres { conns: Conns::new(conns) })
    }
}

/// Statements run either on the client or inside a transaction.
enum Target<'a, 'b> {
    Client(&'a mut Client),
    Tx(&'a mut Transaction<'b>),
}

struct Pg<'a, 'b> {
    target: Target<'a, 'b>,
    prepared: &'a mut HashMap<String, Statement>,
}

fn params(args: &[Val]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Val::I64(i) => Box::new(*i),
                Val::F64(f) => Box::new(*f),
                Val::Text(s) => Box::new(s.clone()),
                Val::OptText(s) => Box::new(s.clone()),
                Val::Bool(b) => Box::new(*b),
            }
        })
        .collect()
}

impl Pg<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = match &mut self.target {
            Target::Client(c) => c.prepare(sql)?,
            Target::Tx(t) => t.prepare(sql)?,
        };
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl Conn for Pg<'_, '_> {
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let owned = params(args);
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
        Ok(match &mut self.target {
            Target::Client(c) => c.execute(&stmt, &refs)?,
            Target::Tx(t) => t.execute(&stmt, &refs)?,
        })
    }

    fn query(&mut self, sql: &str, args: &[Val], types: &[Ty]) -> Result<Vec<Vec<Val>>> {
        let stmt = self.statement(sql)?;
        let owned = params(args);
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
        let rows = match &mut self.target {
            Target::Client(c) => c.query(&stmt, &refs)?,
            Target::Tx(t) => t.query(&stmt, &refs)?,
        };
        rows.iter()
            .map(|row| {
                types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| {
                        Ok(match ty {
                            Ty::I64 => Val::I64(row.try_get(i)?),
                            Ty::F64 => Val::F64(row.try_get(i)?),
                            Ty::Text => Val::Text(row.try_get(i)?),
                            Ty::OptText => Val::OptText(row.try_get(i)?),
                            Ty::Bool => Val::Bool(row.try_get(i)?),
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.target {
            Target::Client(c) => c.batch_execute(sql)?,
            Target::Tx(t) => t.batch_execute(sql)?,
        }
        Ok(())
    }
}

/// True for errors after which the whole transaction may simply be run again.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(e) => matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
        ),
        _ => false,
    }
}

impl Backend for Postgres {
    const POSTGRES: bool = true;
    const GROUP_COMMIT: bool = false;

    fn read<R>(&self, f: &mut dyn FnMut(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.conns.with(|c| {
            f(&mut Pg { target: Target::Client(&mut c.client), prepared: &mut c.prepared })
        })
    }

    fn write<R>(&self, f: &mut dyn FnMut(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.conns.with(|c| {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = (|| {
                    let mut tx = c.client.transaction()?;
                    let out =
                        f(&mut Pg { target: Target::Tx(&mut tx), prepared: &mut c.prepared })?;
                    tx.commit()?;
                    Ok(out)
                })();
                match result {
                    Err(e) if attempt < RETRIES && retryable(&e) => continue,
                    other => return other,
                }
            }
        })
    }

    fn lock_migrations(c: &mut dyn Conn) -> Result<()> {
        c.query(
            "SELECT pg_advisory_xact_lock($1)::text",
            &[Val::I64(MIGRATION_LOCK)],
            &[Ty::OptText],
        )?;
        Ok(())
    }
}
