//! The domain verbs (and the dispatch to the storage and network verbs): one small function each that makes the call and prints the answer.

use std::path::Path;

use hv::host::host::MigrateFlags;
use hv::host::protocol::{Call, Reply};

use crate::connect::Conn;
use crate::output::{field, table};
use crate::Verb;

type VerbResult = Result<(), String>;

/// Runs one verb against the daemon.
pub async fn run(conn: &Conn, verb: Verb) -> VerbResult {
    match verb {
        Verb::Define { file } => define(conn, &file).await,
        Verb::Undefine { domain } => {
            let n = done(conn.call(&Call::Undefine { domain }).await?);
            println!("Domain '{n}' has been undefined\n");
            Ok(())
        }
        Verb::Start { domain } => {
            let n = done(conn.call(&Call::Start { domain }).await?);
            println!("Domain '{n}' started\n");
            Ok(())
        }
        Verb::Shutdown { domain, timeout } => {
            let n = done(conn.call(&Call::Shutdown { domain, timeout_secs: timeout }).await?);
            println!("Domain '{n}' is being shutdown\n");
            Ok(())
        }
        Verb::Destroy { domain } => {
            let n = done(conn.call(&Call::Destroy { domain }).await?);
            println!("Domain '{n}' destroyed\n");
            Ok(())
        }
        Verb::Reboot { domain } => {
            let n = done(conn.call(&Call::Reboot { domain }).await?);
            println!("Domain '{n}' is being rebooted\n");
            Ok(())
        }
        Verb::Suspend { domain } => {
            let n = done(conn.call(&Call::Suspend { domain }).await?);
            println!("Domain '{n}' suspended\n");
            Ok(())
        }
        Verb::Resume { domain } => {
            let n = done(conn.call(&Call::Resume { domain }).await?);
            println!("Domain '{n}' resumed\n");
            Ok(())
        }
        Verb::List { all, inactive, name } => list(conn, all || inactive, inactive, name).await,
        Verb::Dominfo { domain } => dominfo(conn, domain).await,
        Verb::Domstate { domain, reason } => {
            let Reply::State { state, reason: why } = conn.call(&Call::DomState { domain }).await?
            else {
                return Err("unexpected answer".into());
            };
            if reason {
                println!("{state} ({why})\n");
            } else {
                println!("{state}\n");
            }
            Ok(())
        }
        Verb::Dumpxml { domain } => {
            let Reply::Xml { xml } = conn.call(&Call::DumpXml { domain }).await? else {
                return Err("unexpected answer".into());
            };
            print!("{xml}");
            Ok(())
        }
        Verb::Console { domain, force } => crate::console::run(conn, &domain, force).await,
        Verb::Autostart { domain, disable } => {
            let n = done(conn.call(&Call::Autostart { domain, enable: !disable }).await?);
            if disable {
                println!("Domain '{n}' unmarked as autostarted\n");
            } else {
                println!("Domain '{n}' marked as autostarted\n");
            }
            Ok(())
        }
        Verb::Domblklist { domain } => {
            let Reply::Disks { disks } = conn.call(&Call::DomBlkList { domain }).await? else {
                return Err("unexpected answer".into());
            };
            let rows: Vec<Vec<String>> = disks.into_iter().map(|(t, s)| vec![t, s]).collect();
            table(&["Target", "Source"], &rows);
            Ok(())
        }
        Verb::Domiflist { domain } => {
            let Reply::Interfaces { interfaces } = conn.call(&Call::DomIfList { domain }).await?
            else {
                return Err("unexpected answer".into());
            };
            let rows: Vec<Vec<String>> = interfaces
                .into_iter()
                .map(|i| vec![i.interface, i.kind, i.source, i.model, i.mac])
                .collect();
            table(&["Interface", "Type", "Source", "Model", "MAC"], &rows);
            Ok(())
        }
        Verb::AttachDisk { domain, source, target, subdriver, mode, config: _ } => {
            let read_only = match mode.as_deref() {
                None => false,
                Some("readonly") => true,
                Some(other) => return Err(format!("unsupported --mode {other} (only readonly)")),
            };
            conn.call(&Call::AttachDisk { domain, source, target, format: subdriver, read_only })
                .await?;
            println!("Disk attached successfully\n");
            Ok(())
        }
        Verb::DetachDisk { domain, target, config: _ } => {
            conn.call(&Call::DetachDisk { domain, target }).await?;
            println!("Disk detached successfully\n");
            Ok(())
        }
        Verb::Save { domain, file } => {
            let file = absolute(&file)?;
            let call = Call::Save { domain: domain.clone(), file: file.clone() };
            let n = done(with_spinner(format!("saving {domain}"), conn.call(&call)).await?);
            println!("\nDomain '{n}' saved to {}\n", file.display());
            Ok(())
        }
        Verb::Restore { file } => {
            let file = absolute(&file)?;
            let call = Call::Restore { file: file.clone() };
            with_spinner(format!("restoring {}", file.display()), conn.call(&call)).await?;
            println!("Domain restored from {}\n", file.display());
            Ok(())
        }
        Verb::Migrate { live, persistent: _, undefinesource, domain, desturi, dest_key } => {
            let flags = MigrateFlags { live, undefine_source: undefinesource };
            let call = Call::Migrate {
                domain: domain.clone(),
                dest_uri: desturi.clone(),
                dest_key,
                flags,
            };
            with_spinner(format!("migrating {domain} to {desturi}"), conn.call(&call)).await?;
            println!("\nMigration: [100 %]\n");
            Ok(())
        }
        Verb::Storage(v) => crate::storage::run(conn, v).await,
        Verb::Net(v) => crate::net::run(conn, v).await,
        Verb::Completions { .. } => Ok(()),
    }
}

/// Awaits `f` with a spinner on the terminal meanwhile.
async fn with_spinner<T>(what: String, f: impl std::future::Future<Output = T>) -> T {
    let s = crate::progress::spinner(what);
    let r = f.await;
    crate::progress::finish(s);
    r
}

fn absolute(p: &Path) -> Result<std::path::PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn done(r: Reply) -> String {
    match r {
        Reply::Done { domain: Some(d) } => d,
        _ => String::new(),
    }
}

async fn define(conn: &Conn, file: &Path) -> VerbResult {
    let xml = std::fs::read_to_string(file)
        .map_err(|e| format!("Failed to open file '{}': {e}", file.display()))?;
    let Reply::Defined { domain, .. } = conn.call(&Call::Define { xml }).await? else {
        return Err("unexpected answer".into());
    };
    println!("Domain '{domain}' defined from {}\n", file.display());
    Ok(())
}

async fn list(conn: &Conn, all: bool, only_inactive: bool, names: bool) -> VerbResult {
    let Reply::Domains { domains } = conn.call(&Call::List { all }).await? else {
        return Err("unexpected answer".into());
    };
    let domains: Vec<_> =
        domains.into_iter().filter(|d| !only_inactive || d.id.is_none()).collect();
    if names {
        for d in &domains {
            println!("{}", d.name);
        }
        println!();
        return Ok(());
    }
    let rows: Vec<Vec<String>> = domains
        .into_iter()
        .map(|d| vec![d.id.map_or("-".into(), |i| i.to_string()), d.name, d.state.to_string()])
        .collect();
    table(&["Id", "Name", "State"], &rows);
    Ok(())
}

async fn dominfo(conn: &Conn, domain: String) -> VerbResult {
    let Reply::Info(i) = conn.call(&Call::DomInfo { domain }).await? else {
        return Err("unexpected answer".into());
    };
    field("Id", i.id.map_or("-".into(), |i| i.to_string()));
    field("Name", &i.name);
    field("UUID", &i.uuid);
    field("OS Type", "hvm");
    field("State", i.state);
    field("CPU(s)", i.cpus);
    field("Max memory", format!("{} KiB", i.max_memory_kib));
    field("Used memory", format!("{} KiB", i.used_memory_kib));
    field("Persistent", "yes");
    field("Autostart", if i.autostart { "enable" } else { "disable" });
    field("Managed save", if i.managed_save { "yes" } else { "no" });
    field("Security model", "none");
    field("Security DOI", "0");
    println!();
    Ok(())
}
