//! The embedded store: one SQLite file (rusqlite, SQLite bundled), the default.
//!
//! WAL journal with `synchronous=FULL`: a committed change survives a crash or power loss,
//! and readers never block the writer. Writes take the database's write lock at the start
//! of their transaction (`BEGIN IMMEDIATE`), so two processes sharing the file are as safe as
//! two threads. Several connections serve concurrent readers.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, TransactionBehavior};

use super::conns::Conns;
use super::sql::{Backend, Conn, SqlStore, Ty, Val};
use super::{Result, StoreError};

/// How many connections a store keeps.
const CONNECTIONS: usize = 4;

/// How long a writer waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The SQLite backend.
#[derive(Debug)]
pub struct Sqlite {
    conns: Conns<Connection>,
}

/// The embedded store.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database file at `path` and brings its schema up to
    /// date.
    ///
    /// ```
    /// use hv_orchestrator::store::{SqliteStore, Store};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("cloud.db")).unwrap();
    /// assert_eq!(store.schema_version().unwrap(), hv_orchestrator::store::schema::LATEST);
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            let c = Connection::open(path)?;
            c.busy_timeout(BUSY_TIMEOUT)?;
            if i == 0 {
                c.pragma_update(None, "journal_mode", "WAL")?;
            }
            c.pragma_update(None, "synchronous", "FULL")?;
            c.pragma_update(None, "foreign_keys", "ON")?;
            conns.push(c);
        }
        SqlStore::migrate(Sqlite { conns: Conns::new(conns) })
    }
}

struct Lite<'a>(&'a Connection);

fn values(args: &[Val]) -> Vec<Value> {
    args.iter()
        .map(|v| match v {
            Val::I64(i) => Value::Integer(*i),
            Val::F64(f) => Value::Real(*f),
            Val::Text(s) => Value::Text(s.clone()),
            Val::OptText(Some(s)) => Value::Text(s.clone()),
            Val::OptText(None) => Value::Null,
            Val::Bool(b) => Value::Integer(i64::from(*b)),
        })
        .collect()
}

impl Conn for Lite<'_> {
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(values(args)))? as u64)
    }

    fn query(&mut self, sql: &str, args: &[Val], types: &[Ty]) -> Result<Vec<Vec<Val>>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values(args)), |row| {
            types
                .iter()
                .enumerate()
                .map(|(i, ty)| {
                    Ok(match ty {
                        Ty::I64 => Val::I64(row.get(i)?),
                        Ty::F64 => Val::F64(row.get(i)?),
                        Ty::Text => Val::Text(row.get(i)?),
                        Ty::OptText => Val::OptText(row.get(i)?),
                        Ty::Bool => Val::Bool(row.get(i)?),
                    })
                })
                .collect::<rusqlite::Result<Vec<Val>>>()
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }
}

impl Backend for Sqlite {
    const POSTGRES: bool = false;
    const GROUP_COMMIT: bool = true;

    fn read<R>(&self, f: &mut dyn FnMut(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.conns.with(|c| f(&mut Lite(c)))
    }

    fn write<R>(&self, f: &mut dyn FnMut(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.conns.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&mut Lite(&tx))?;
            tx.commit().map_err(StoreError::from)?;
            Ok(out)
        })
    }

    fn lock_migrations(_c: &mut dyn Conn) -> Result<()> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        Ok(())
    }
}
