//! The pool and volume verbs (`pool-*`, `vol-*`), with virsh's names, arguments and output.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use hv::host::http::Bytes;
use hv::host::protocol::{Call, Reply};
use hv::host::storage::{PoolAction, PoolDefineAs, PoolRow, VolCreateAs, VolResize};
use hv::storage::pool::size::{format_size, parse_size};

use crate::connect::Conn;
use crate::output::{field, table};
use crate::progress;

type VerbResult = Result<(), String>;

/// How much of a file one upload chunk carries.
const CHUNK: usize = 1 << 20;

/// Storage verbs.
#[derive(Debug, Subcommand)]
pub enum StorageVerb {
    /// Define an inactive pool: `NAME dir --target PATH` or `NAME logical --source-dev PV...`.
    #[command(name = "pool-define-as")]
    PoolDefineAs {
        /// The pool name.
        name: String,
        /// `dir` or `logical`.
        #[arg(value_name = "TYPE")]
        pool_type: String,
        /// A dir pool's directory.
        #[arg(long, value_name = "PATH")]
        target: Option<PathBuf>,
        /// A logical pool's physical volume (repeatable).
        #[arg(long = "source-dev", value_name = "PV")]
        source_dev: Vec<PathBuf>,
        /// A logical pool's volume group name (default: the pool name).
        #[arg(long = "source-name", value_name = "VG")]
        source_name: Option<String>,
    },
    /// Make a pool's storage (the directory, or PV labels).
    #[command(name = "pool-build")]
    PoolBuild {
        /// The pool.
        pool: String,
        /// Relabel this pool's own earlier PVs.
        #[arg(long)]
        overwrite: bool,
        /// Refuse to touch existing labels (the default).
        #[arg(long = "no-overwrite", conflicts_with = "overwrite")]
        no_overwrite: bool,
    },
    /// Activate a pool.
    #[command(name = "pool-start")]
    PoolStart {
        /// The pool.
        pool: String,
    },
    /// Deactivate a pool (data stays).
    #[command(name = "pool-destroy")]
    PoolDestroy {
        /// The pool.
        pool: String,
    },
    /// Remove an inactive, empty pool's storage.
    #[command(name = "pool-delete")]
    PoolDelete {
        /// The pool.
        pool: String,
    },
    /// Remove an inactive pool's definition.
    #[command(name = "pool-undefine")]
    PoolUndefine {
        /// The pool.
        pool: String,
    },
    /// List pools.
    #[command(name = "pool-list")]
    PoolList {
        /// Inactive pools too.
        #[arg(long)]
        all: bool,
        /// Only inactive pools.
        #[arg(long)]
        inactive: bool,
        /// Sizes too.
        #[arg(long)]
        details: bool,
    },
    /// A pool's state and sizes.
    #[command(name = "pool-info")]
    PoolInfo {
        /// The pool.
        pool: String,
    },
    /// Rescan a pool's volumes.
    #[command(name = "pool-refresh")]
    PoolRefresh {
        /// The pool.
        pool: String,
    },
    /// Create a volume.
    #[command(name = "vol-create-as")]
    VolCreateAs {
        /// The pool.
        pool: String,
        /// The volume name.
        name: String,
        /// Its capacity (`64M`, `1GiB`, bytes...).
        capacity: String,
        /// `raw` or `qcow2`.
        #[arg(long, value_name = "FORMAT")]
        format: Option<String>,
        /// A backing volume (name or path).
        #[arg(long = "backing-vol", value_name = "VOL")]
        backing_vol: Option<String>,
        /// The backing volume's format.
        #[arg(long = "backing-vol-format", value_name = "FORMAT")]
        backing_vol_format: Option<String>,
    },
    /// List a pool's volumes.
    #[command(name = "vol-list")]
    VolList {
        /// The pool.
        pool: String,
        /// Type and sizes too.
        #[arg(long)]
        details: bool,
    },
    /// A volume's type and sizes.
    #[command(name = "vol-info")]
    VolInfo {
        /// The volume.
        vol: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// A volume's host file.
    #[command(name = "vol-path")]
    VolPath {
        /// The volume.
        vol: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Resize a volume.
    #[command(name = "vol-resize")]
    VolResize {
        /// The volume.
        vol: String,
        /// The new capacity, or with `--delta` the change (a leading `-` with `--shrink`).
        #[arg(allow_hyphen_values = true)]
        capacity: String,
        /// The pool.
        #[arg(long)]
        pool: String,
        /// Allow shrinking (data past the new end is lost).
        #[arg(long)]
        shrink: bool,
        /// CAPACITY is a change, not the new size.
        #[arg(long)]
        delta: bool,
    },
    /// Copy a volume fully.
    #[command(name = "vol-clone")]
    VolClone {
        /// The volume.
        vol: String,
        /// The copy's name.
        newname: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Delete a volume.
    #[command(name = "vol-delete")]
    VolDelete {
        /// The volume.
        vol: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Write a file's bytes into a volume (its guest-visible content).
    #[command(name = "vol-upload")]
    VolUpload {
        /// The volume.
        vol: String,
        /// The file read.
        file: PathBuf,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Write a volume's guest-visible bytes to a file.
    #[command(name = "vol-download")]
    VolDownload {
        /// The volume.
        vol: String,
        /// The file written.
        file: PathBuf,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Make a volume read as zeroes.
    #[command(name = "vol-wipe")]
    VolWipe {
        /// The volume.
        vol: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn absolute(p: PathBuf) -> Result<PathBuf, String> {
    std::path::absolute(&p).map_err(|e| format!("bad path '{}': {e}", p.display()))
}

async fn pool_action(conn: &Conn, pool: String, action: PoolAction) -> VerbResult {
    conn.call(&Call::Pool { pool: pool.clone(), action }).await?;
    println!("Pool {pool} {}", action.done());
    Ok(())
}

/// Runs one storage verb against the daemon.
pub async fn run(conn: &Conn, verb: StorageVerb) -> VerbResult {
    use StorageVerb as V;
    match verb {
        V::PoolDefineAs { name, pool_type, target, source_dev, source_name } => {
            let spec = PoolDefineAs {
                name: name.clone(),
                pool_type,
                target: target.map(absolute).transpose()?,
                source_devs: source_dev.into_iter().map(absolute).collect::<Result<_, _>>()?,
                source_name,
            };
            conn.call(&Call::PoolDefineAs(spec)).await?;
            println!("Pool {name} defined");
        }
        V::PoolBuild { pool, overwrite, no_overwrite: _ } => {
            pool_action(conn, pool, PoolAction::Build { overwrite }).await?
        }
        V::PoolStart { pool } => pool_action(conn, pool, PoolAction::Start).await?,
        V::PoolDestroy { pool } => pool_action(conn, pool, PoolAction::Destroy).await?,
        V::PoolDelete { pool } => pool_action(conn, pool, PoolAction::Delete).await?,
        V::PoolRefresh { pool } => pool_action(conn, pool, PoolAction::Refresh).await?,
        V::PoolUndefine { pool } => {
            conn.call(&Call::PoolUndefine { pool: pool.clone() }).await?;
            println!("Pool {pool} has been undefined");
        }
        V::PoolList { all, inactive, details } => pool_list(conn, all, inactive, details).await?,
        V::PoolInfo { pool } => {
            let Reply::PoolInfo(i) = conn.call(&Call::PoolInfo { pool }).await? else {
                return Err("unexpected answer".into());
            };
            field("Name", &i.name);
            field("UUID", &i.uuid);
            field("Type", &i.pool_type);
            field("State", &i.state);
            field("Persistent", "yes");
            field("Autostart", "no");
            if i.active {
                field("Capacity", format_size(i.capacity));
                field("Allocation", format_size(i.allocation));
                field("Available", format_size(i.available));
            }
        }
        V::VolCreateAs { pool, name, capacity, format, backing_vol, backing_vol_format } => {
            let spec = VolCreateAs {
                pool,
                name: name.clone(),
                capacity: size(&capacity)?,
                format,
                backing_vol,
                backing_vol_format,
            };
            conn.call(&Call::VolCreateAs(spec)).await?;
            println!("Vol {name} created");
        }
        V::VolList { pool, details } => {
            let Reply::Volumes { volumes } = conn.call(&Call::VolList { pool }).await? else {
                return Err("unexpected answer".into());
            };
            if details {
                let rows: Vec<Vec<String>> = volumes
                    .into_iter()
                    .map(|v| {
                        vec![
                            v.name,
                            v.path,
                            v.vol_type,
                            format_size(v.capacity),
                            format_size(v.allocation),
                        ]
                    })
                    .collect();
                table(&["Name", "Path", "Type", "Capacity", "Allocation"], &rows);
            } else {
                let rows: Vec<Vec<String>> =
                    volumes.into_iter().map(|v| vec![v.name, v.path]).collect();
                table(&["Name", "Path"], &rows);
            }
        }
        V::VolInfo { vol, pool } => {
            let Reply::VolInfo(v) = conn.call(&Call::VolInfo { pool, vol }).await? else {
                return Err("unexpected answer".into());
            };
            field("Name", &v.name);
            field("Type", &v.vol_type);
            field("Format", &v.format);
            field("Capacity", format_size(v.capacity));
            field("Allocation", format_size(v.allocation));
            if let Some(b) = &v.backing {
                field("Backing", b);
            }
        }
        V::VolPath { vol, pool } => {
            let Reply::Path { path } = conn.call(&Call::VolPath { pool, vol }).await? else {
                return Err("unexpected answer".into());
            };
            println!("{}", path.display());
        }
        V::VolResize { vol, capacity, pool, shrink, delta } => {
            let (negative, text) = match capacity.strip_prefix('-') {
                Some(t) => (true, t),
                None => (false, capacity.strip_prefix('+').unwrap_or(&capacity)),
            };
            // virsh: with --delta the value is added, or subtracted with --shrink (a leading
            // '-' says the same); without --delta it is the new capacity.
            if negative && !shrink {
                return Err("a negative capacity needs --shrink".into());
            }
            if negative && !delta {
                return Err("a negative capacity needs --delta --shrink".into());
            }
            let r = VolResize { pool, vol: vol.clone(), capacity: size(text)?, delta, shrink };
            conn.call(&Call::VolResize(r)).await?;
            println!("Size of volume '{vol}' successfully changed to {text}");
        }
        V::VolClone { vol, newname, pool } => {
            let spinner = progress::spinner(format!("cloning {vol} to {newname}"));
            let call = Call::VolClone { pool, vol: vol.clone(), new_name: newname.clone() };
            let r = conn.call(&call).await;
            progress::finish(spinner);
            r?;
            println!("Vol {newname} cloned from {vol}");
        }
        V::VolDelete { vol, pool } => {
            conn.call(&Call::VolDelete { pool, vol: vol.clone() }).await?;
            println!("Vol {vol} deleted");
        }
        V::VolWipe { vol, pool } => {
            conn.call(&Call::VolWipe { pool, vol: vol.clone() }).await?;
            println!("Vol {vol} wiped");
        }
        V::VolUpload { vol, file, pool } => upload(conn, &pool, &vol, file).await?,
        V::VolDownload { vol, file, pool } => download(conn, &pool, &vol, file).await?,
    }
    Ok(())
}

async fn pool_list(conn: &Conn, all: bool, inactive: bool, details: bool) -> VerbResult {
    let Reply::Pools { pools } = conn.call(&Call::PoolList).await? else {
        return Err("unexpected answer".into());
    };
    let pools: Vec<PoolRow> =
        pools.into_iter().filter(|p| if inactive { !p.active } else { all || p.active }).collect();
    if details {
        let rows: Vec<Vec<String>> = pools
            .into_iter()
            .map(|p| {
                let sz = |v: u64| if p.active { format_size(v) } else { "-".into() };
                vec![
                    p.name.clone(),
                    p.state.clone(),
                    "no".into(),
                    "yes".into(),
                    sz(p.capacity),
                    sz(p.allocation),
                    sz(p.available),
                ]
            })
            .collect();
        table(
            &["Name", "State", "Autostart", "Persistent", "Capacity", "Allocation", "Available"],
            &rows,
        );
    } else {
        let rows: Vec<Vec<String>> = pools
            .into_iter()
            .map(|p| vec![p.name, if p.active { "active" } else { "inactive" }.into(), "no".into()])
            .collect();
        table(&["Name", "State", "Autostart"], &rows);
    }
    Ok(())
}

fn data_path(pool: &str, vol: &str) -> String {
    format!("/v1/pools/{pool}/volumes/{vol}/data")
}

/// Streams `file` to the daemon a chunk at a time (read on a thread of its own).
async fn upload(conn: &Conn, pool: &str, vol: &str, file: PathBuf) -> VerbResult {
    // Ask first, so a missing pool or volume is its own clear error before any byte moves.
    conn.call(&Call::VolInfo { pool: pool.into(), vol: vol.into() }).await?;
    let mut f =
        std::fs::File::open(&file).map_err(|e| format!("cannot open '{}': {e}", file.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress::bar(len, format!("uploading {vol}"));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = {
        let bar = bar.clone();
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(b) = &bar {
                        b.inc(n as u64);
                    }
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        })
    };
    let r = conn.upload(&data_path(pool, vol), len, rx).await;
    let _ = reader.join();
    progress::finish(bar);
    r.map(drop)
}

/// Writes what the daemon streams into `file`, then syncs it.
async fn download(conn: &Conn, pool: &str, vol: &str, file: PathBuf) -> VerbResult {
    let Reply::VolInfo(info) =
        conn.call(&Call::VolInfo { pool: pool.into(), vol: vol.into() }).await?
    else {
        return Err("unexpected answer".into());
    };
    let mut f = std::fs::File::create(&file)
        .map_err(|e| format!("cannot create '{}': {e}", file.display()))?;
    let bar = progress::bar(info.capacity, format!("downloading {vol}"));
    let r = conn
        .download(&data_path(pool, vol), |chunk| {
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
            f.write_all(chunk)
        })
        .await;
    progress::finish(bar);
    r?;
    f.sync_all().map_err(|e| format!("cannot sync '{}': {e}", file.display()))
}
