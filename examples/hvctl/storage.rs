//! hvctl verbs for storage pools and volumes, with virsh's names, flags and output.

use std::fs::File;
use std::path::{Path, PathBuf};

use hv::storage::pool::size::{format_size, parse_size};
use hv::storage::pool::{
    BuildFlags, Pool, PoolDef, PoolKind, PoolManager, ResizeFlags, VolFormat, VolumeSpec,
};

use crate::cli::{print_table, Args};
use crate::VerbResult;

/// `(verb, one-line help)` for each verb this module handles.
pub const VERBS: &[(&str, &str)] = &[
    (
        "pool-define-as",
        "NAME dir --target PATH | NAME logical --source-dev PV... [--source-name VG]",
    ),
    ("pool-build", "POOL [--overwrite]: make the directory or PV labels"),
    ("pool-start", "POOL: activate a pool"),
    ("pool-destroy", "POOL: deactivate a pool (data stays)"),
    ("pool-delete", "POOL: remove an inactive, empty pool's storage"),
    ("pool-undefine", "POOL: remove an inactive pool's definition"),
    ("pool-list", "[--all] [--inactive]: list pools"),
    ("pool-info", "POOL: state and sizes"),
    ("pool-refresh", "POOL: rescan volumes"),
    (
        "vol-create-as",
        "POOL NAME CAPACITY [--format raw|qcow2] [--backing-vol VOL] [--backing-vol-format FMT]",
    ),
    ("vol-list", "POOL [--details]: list volumes"),
    ("vol-info", "VOL --pool POOL: type and sizes"),
    ("vol-path", "VOL --pool POOL: the volume's file"),
    ("vol-resize", "VOL CAPACITY --pool POOL [--shrink] [--delta]"),
    ("vol-clone", "VOL NEWNAME --pool POOL: full copy"),
    ("vol-delete", "VOL --pool POOL"),
    ("vol-upload", "VOL FILE --pool POOL: write FILE's bytes into the volume"),
    ("vol-download", "VOL FILE --pool POOL: write the volume's bytes to FILE"),
    ("vol-wipe", "VOL --pool POOL: make the volume read as zeroes"),
];

/// Options that take a value; every other `--x` is a switch.
const VALUED: &[&str] = &[
    "--target",
    "--source-dev",
    "--source-name",
    "--pool",
    "--format",
    "--backing-vol",
    "--backing-vol-format",
    "--type",
    "--name",
    "--capacity",
];

/// The `--pool POOL` every vol-* verb takes.
fn pool(a: &Args) -> Result<&str, String> {
    a.opt("--pool").ok_or_else(|| "missing --pool POOL".to_string())
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// Runs `verb` if this module handles it; `None` when the verb is not ours.
pub fn run(state_dir: &Path, verb: &str, args: &[String]) -> Option<VerbResult> {
    if !VERBS.iter().any(|(v, _)| *v == verb) {
        return None;
    }
    Some(run_verb(state_dir, verb, args))
}

fn run_verb(state_dir: &Path, verb: &str, args: &[String]) -> VerbResult {
    let switches: &[&str] = match verb {
        "pool-build" => &["--overwrite", "--no-overwrite"],
        "pool-list" => &["--all", "--inactive", "--details"],
        "vol-list" => &["--details"],
        "vol-resize" => &["--shrink", "--delta"],
        _ => &[],
    };
    let a = Args::parse(args, VALUED, switches)?;
    let mgr = PoolManager::new(state_dir).map_err(|e| e.to_string())?;
    let e = |e: hv::storage::pool::PoolError| e.to_string();
    match verb {
        "pool-define-as" => {
            a.check_known(&["--type", "--name", "--target", "--source-dev", "--source-name"], 2)?;
            let name = a.arg(0, "--name", "pool name")?;
            let ty = a.arg(1, "--type", "pool type (dir or logical)")?;
            let def = match ty {
                "dir" => {
                    let target = a.opt("--target").ok_or("a dir pool needs --target PATH")?;
                    PoolDef::dir(name, absolute(target)?).build().map_err(e)?
                }
                "logical" => {
                    let devs = a.all("--source-dev");
                    let devs: Vec<PathBuf> =
                        devs.iter().map(|d| absolute(d)).collect::<Result<_, _>>()?;
                    let mut b = PoolDef::logical(name, devs);
                    if let Some(vg) = a.opt("--source-name") {
                        b = b.vg_name(vg);
                    }
                    b.build().map_err(e)?
                }
                other => return Err(format!("unsupported pool type '{other}' (dir or logical)")),
            };
            mgr.define(def).map_err(e)?;
            println!("Pool {name} defined");
        }
        "pool-build" | "pool-start" | "pool-destroy" | "pool-delete" | "pool-refresh" => {
            a.check_known(&[], 1)?;
            let name = a.arg(0, "--pool", "pool name")?;
            let mut pool = mgr.open(name).map_err(e)?;
            let done = match verb {
                "pool-build" => {
                    pool.build(BuildFlags { overwrite: a.has("--overwrite") }).map_err(e)?;
                    "built"
                }
                "pool-start" => {
                    pool.start().map_err(e)?;
                    "started"
                }
                "pool-destroy" => {
                    pool.stop().map_err(e)?;
                    "destroyed"
                }
                "pool-delete" => {
                    pool.delete().map_err(e)?;
                    "deleted"
                }
                _ => {
                    pool.refresh().map_err(e)?;
                    "refreshed"
                }
            };
            println!("Pool {name} {done}");
        }
        "pool-undefine" => {
            a.check_known(&[], 1)?;
            let name = a.arg(0, "--pool", "pool name")?;
            mgr.undefine(name).map_err(e)?;
            println!("Pool {name} has been undefined");
        }
        "pool-list" => {
            a.check_known(&[], 0)?;
            let rows: Vec<_> = mgr
                .list()
                .map_err(e)?
                .into_iter()
                .filter(|(_, s)| {
                    if a.has("--inactive") {
                        !s.is_active()
                    } else {
                        a.has("--all") || s.is_active()
                    }
                })
                .collect();
            if a.has("--details") {
                let mut table = vec![];
                for (def, _) in &rows {
                    let info = mgr.open(&def.name).and_then(|p| p.info()).map_err(e)?;
                    let sz =
                        |v: u64| if info.state.is_active() { format_size(v) } else { "-".into() };
                    table.push(vec![
                        def.name.clone(),
                        info.state.to_string(),
                        "no".into(),
                        "yes".into(),
                        sz(info.capacity),
                        sz(info.allocation),
                        sz(info.available),
                    ]);
                }
                print_table(
                    &[
                        "Name",
                        "State",
                        "Autostart",
                        "Persistent",
                        "Capacity",
                        "Allocation",
                        "Available",
                    ],
                    &table,
                );
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(d, s)| {
                        vec![
                            d.name.clone(),
                            if s.is_active() { "active" } else { "inactive" }.into(),
                            "no".into(),
                        ]
                    })
                    .collect();
                print_table(&["Name", "State", "Autostart"], &table);
            }
        }
        "pool-info" => {
            a.check_known(&[], 1)?;
            let name = a.arg(0, "--pool", "pool name")?;
            let pool = mgr.open(name).map_err(e)?;
            let info = pool.info().map_err(e)?;
            println!("{:<16}{}", "Name:", info.name);
            println!("{:<16}{}", "UUID:", info.uuid);
            println!("{:<16}{}", "Type:", pool.def().kind.type_name());
            println!("{:<16}{}", "State:", info.state);
            println!("{:<16}yes", "Persistent:");
            println!("{:<16}no", "Autostart:");
            if info.state.is_active() {
                println!("{:<16}{}", "Capacity:", format_size(info.capacity));
                println!("{:<16}{}", "Allocation:", format_size(info.allocation));
                println!("{:<16}{}", "Available:", format_size(info.available));
            }
        }
        "vol-create-as" => {
            a.check_known(
                &[
                    "--pool",
                    "--name",
                    "--capacity",
                    "--format",
                    "--backing-vol",
                    "--backing-vol-format",
                ],
                3,
            )?;
            let pool_name = a.arg(0, "--pool", "pool name")?;
            let name = a.arg(1, "--name", "volume name")?;
            let capacity = size_arg(a.arg(2, "--capacity", "capacity")?)?;
            let mut pool = mgr.open(pool_name).map_err(e)?;
            let default_format = match pool.def().kind {
                PoolKind::Dir { .. } if a.opt("--backing-vol").is_some() => VolFormat::Qcow2,
                _ => VolFormat::Raw,
            };
            let format =
                a.opt("--format").map(str::parse).transpose().map_err(e)?.unwrap_or(default_format);
            let mut spec = VolumeSpec::builder(name).format(format).capacity(capacity);
            if let Some(b) = a.opt("--backing-vol") {
                spec = spec.backing(backing_name(&pool, b));
            }
            if let Some(f) = a.opt("--backing-vol-format") {
                spec = spec.backing_format(f.parse().map_err(e)?);
            }
            pool.create_volume(&spec.build().map_err(e)?).map_err(e)?;
            println!("Vol {name} created");
        }
        "vol-list" => {
            a.check_known(&["--pool"], 1)?;
            let pool = mgr.open(a.arg(0, "--pool", "pool name")?).map_err(e)?;
            let vols = pool.list_volumes().map_err(e)?;
            let path = |v: &hv::storage::pool::VolumeInfo| {
                v.path.as_ref().map_or(v.key.clone(), |p| p.display().to_string())
            };
            if a.has("--details") {
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            path(v),
                            vol_type(&pool).into(),
                            format_size(v.capacity),
                            format_size(v.allocation),
                        ]
                    })
                    .collect();
                print_table(&["Name", "Path", "Type", "Capacity", "Allocation"], &rows);
            } else {
                let rows: Vec<Vec<String>> =
                    vols.iter().map(|v| vec![v.name.clone(), path(v)]).collect();
                print_table(&["Name", "Path"], &rows);
            }
        }
        "vol-info" | "vol-path" | "vol-delete" | "vol-wipe" => {
            a.check_known(&["--pool", "--vol"], 1)?;
            let vol = a.arg(0, "--vol", "volume name")?;
            let mut pool = mgr.open(pool(&a)?).map_err(e)?;
            match verb {
                "vol-info" => {
                    let v = pool.volume_info(vol).map_err(e)?;
                    println!("{:<16}{}", "Name:", v.name);
                    println!("{:<16}{}", "Type:", vol_type(&pool));
                    println!("{:<16}{}", "Format:", v.format);
                    println!("{:<16}{}", "Capacity:", format_size(v.capacity));
                    println!("{:<16}{}", "Allocation:", format_size(v.allocation));
                    if let Some(b) = &v.backing {
                        println!("{:<16}{}", "Backing:", b);
                    }
                }
                "vol-path" => println!("{}", pool.volume_path(vol).map_err(e)?.display()),
                "vol-delete" => {
                    pool.delete_volume(vol).map_err(e)?;
                    println!("Vol {vol} deleted");
                }
                _ => {
                    pool.wipe_volume(vol).map_err(e)?;
                    println!("Vol {vol} wiped");
                }
            }
        }
        "vol-resize" => {
            a.check_known(&["--pool", "--vol", "--capacity"], 2)?;
            let vol = a.arg(0, "--vol", "volume name")?;
            let text = a.arg(1, "--capacity", "capacity")?;
            let mut pool = mgr.open(pool(&a)?).map_err(e)?;
            let current = pool.volume_info(vol).map_err(e)?.capacity;
            let (negative, text) = match text.strip_prefix('-') {
                Some(t) => (true, t),
                None => (false, text.strip_prefix('+').unwrap_or(text)),
            };
            let n = size_arg(text)?;
            // virsh: with --delta, the value is added, or subtracted when --shrink is given
            // (a leading '-' says the same); without --delta it is the new capacity.
            let shrink = a.has("--shrink");
            if negative && !shrink {
                return Err("a negative capacity needs --shrink".into());
            }
            let capacity = match (a.has("--delta"), negative || shrink) {
                (true, false) => current.checked_add(n).ok_or("capacity overflows")?,
                (true, true) => current.checked_sub(n).ok_or("cannot shrink below zero")?,
                (false, false) => n,
                (false, true) if negative => {
                    return Err("a negative capacity needs --delta --shrink".into())
                }
                (false, true) => n,
            };
            pool.resize_volume(vol, capacity, ResizeFlags { allow_shrink: a.has("--shrink") })
                .map_err(e)?;
            println!("Size of volume '{vol}' successfully changed to {text}");
        }
        "vol-clone" => {
            a.check_known(&["--pool", "--vol", "--newname"], 2)?;
            let vol = a.arg(0, "--vol", "volume name")?;
            let new = a.arg(1, "--newname", "new volume name")?;
            let mut pool = mgr.open(pool(&a)?).map_err(e)?;
            pool.clone_volume(vol, new).map_err(e)?;
            println!("Vol {new} cloned from {vol}");
        }
        "vol-upload" | "vol-download" => {
            a.check_known(&["--pool", "--vol", "--file"], 2)?;
            let vol = a.arg(0, "--vol", "volume name")?;
            let file = a.arg(1, "--file", "file")?;
            let mut pool = mgr.open(pool(&a)?).map_err(e)?;
            if verb == "vol-upload" {
                let mut f =
                    File::open(file).map_err(|err| format!("cannot open '{file}': {err}"))?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                pool.upload_volume(vol, &mut f, len, &mut |_, _| {}).map_err(e)?;
            } else {
                let mut f =
                    File::create(file).map_err(|err| format!("cannot create '{file}': {err}"))?;
                pool.download_volume(vol, &mut f, &mut |_, _| {}).map_err(e)?;
                f.sync_all().map_err(|err| format!("cannot sync '{file}': {err}"))?;
            }
        }
        _ => unreachable!("listed in VERBS"),
    }
    Ok(())
}

/// virsh's volume type column: `file` in dir pools, `block` for logical volumes.
fn vol_type(pool: &dyn Pool) -> &'static str {
    match pool.def().kind {
        PoolKind::Dir { .. } => "file",
        PoolKind::Logical { .. } => "block",
    }
}

/// virsh takes `--backing-vol` as a name, key or path; map a path inside a dir pool to its name.
fn backing_name(pool: &dyn Pool, vol: &str) -> String {
    if let PoolKind::Dir { target } = &pool.def().kind {
        if let Ok(rest) = Path::new(vol).strip_prefix(target) {
            return rest.display().to_string();
        }
    }
    vol.to_string()
}

fn absolute(p: &str) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|err| format!("bad path '{p}': {err}"))
}
