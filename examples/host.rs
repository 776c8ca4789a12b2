//! The hv-host library in-process, without the daemon: a [`Host`] on a state directory owns
//! the host's pools, networks and domains, with virsh's verbs as methods (what `hvd` serves
//! to `hvctl`).
//!
//! ```text
//! cargo run --example host -- STATE_DIR [DOMAIN.xml]
//! ```
//!
//! Makes a directory pool `images` under STATE_DIR with a 64 MiB qcow2 volume `disk0`, lists
//! pools and volumes, and, given a libvirt domain XML file, defines that domain and shows it.

use std::path::PathBuf;

use hv::host::storage::{PoolAction, PoolDefineAs, VolCreateAs};
use hv::host::{Host, HostConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let state_dir = std::path::absolute(PathBuf::from(
        args.next().ok_or("usage: host STATE_DIR [DOMAIN.xml]")?,
    ))?;
    let xml = args.next().map(PathBuf::from);
    let vmm_binary = std::env::current_exe()?.with_file_name("hv-vmm");
    let host = Host::open(HostConfig { state_dir: state_dir.clone(), vmm_binary }).await?;

    if host.pool_list().await?.iter().all(|p| p.name != "images") {
        host.pool_define_as(PoolDefineAs {
            name: "images".into(),
            pool_type: "dir".into(),
            target: Some(state_dir.join("images")),
            source_devs: vec![],
            source_name: None,
        })
        .await?;
        host.pool_action("images", PoolAction::Build { overwrite: false }).await?;
        host.pool_action("images", PoolAction::Start).await?;
    }
    if host.vol_list("images").await?.iter().all(|v| v.name != "disk0") {
        host.vol_create_as(VolCreateAs {
            pool: "images".into(),
            name: "disk0".into(),
            capacity: 64 << 20,
            format: Some("qcow2".into()),
            backing_vol: None,
            backing_vol_format: None,
        })
        .await?;
    }
    for p in host.pool_list().await? {
        println!("pool {} ({}, {}): {} bytes free", p.name, p.pool_type, p.state, p.available);
        for v in host.vol_list(&p.name).await? {
            println!("  volume {} {} {} bytes at {}", v.name, v.format, v.capacity, v.path);
        }
    }
    if let Some(xml) = xml {
        let (name, _) = host.define(&std::fs::read_to_string(&xml)?).await?;
        let info = host.info(name.as_str()).await?;
        println!(
            "domain {} ({}): {}, {} vCPU, {} KiB",
            info.name, info.uuid, info.state, info.cpus, info.max_memory_kib
        );
    }
    Ok(())
}
