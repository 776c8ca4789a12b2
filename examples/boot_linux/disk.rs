//! `--disk PATH[,ro][,format=raw|qcow2|auto][,allow=PATH]...[,engine=sync|uring][,serial=S]` for
//! boot_linux: a
//! virtio-blk disk per flag, in the order given (the first is the guest's `vda`).
//!
//! A disk is raw unless `format=` says otherwise: a guest can write a qcow2 header into a raw
//! disk, and a probing open would then take it for a qcow2 image with a backing file of the
//! guest's choosing. `format=auto` probes the file's first bytes, for images no guest wrote.
//! A qcow2 image's backing file or data file opens only if `allow=` names it (or the
//! directory it is directly in), after resolving symlinks; anything else is an error before
//! the guest runs.

use std::path::PathBuf;

use hv::storage::block::{open_disk, Confinement, DiskFormat, DiskOptions, Engine};
use hv::storage::virtio_blk::{BlockConfig, VirtioBlock};

/// One `--disk` flag.
#[derive(Debug, Clone)]
pub struct DiskArg {
    /// The image file or block device.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// The format (raw unless `format=` says otherwise).
    pub format: DiskFormat,
    /// Files or directories a backing or data file may be in.
    pub allow: Vec<PathBuf>,
    /// The I/O engine for raw disks (`engine=sync|uring`, default sync).
    pub engine: Engine,
    /// The GET_ID serial (default `hv-disk<N>`).
    pub serial: Option<String>,
}

/// Parses `PATH[,ro][,format=raw|qcow2|auto][,allow=PATH]...[,serial=S]`.
pub fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("--disk needs a path")?;
    let mut disk = DiskArg {
        path: PathBuf::from(path),
        read_only: false,
        format: DiskFormat::Raw,
        allow: Vec::new(),
        engine: Engine::Sync,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            Some(("format", "raw")) => disk.format = DiskFormat::Raw,
            Some(("format", "qcow2")) => disk.format = DiskFormat::Qcow2,
            Some(("format", "auto")) => disk.format = DiskFormat::Auto,
            Some(("format", other)) => {
                return Err(format!("--disk {s}: unknown format {other:?} (raw, qcow2 or auto)"))
            }
            Some(("allow", p)) if !p.is_empty() => disk.allow.push(PathBuf::from(p)),
            Some(("engine", "sync")) => disk.engine = Engine::Sync,
            Some(("engine", "uring")) => disk.engine = Engine::Uring,
            Some(("serial", v)) => disk.serial = Some(v.to_string()),
            _ => return Err(format!("--disk {s}: unknown option {opt:?}")),
        }
    }
    Ok(disk)
}

/// A device made from a `--disk` flag, with a line describing it.
pub struct Disk {
    /// The virtio-blk device.
    pub device: VirtioBlock,
    /// What boot_linux prints about it.
    pub summary: String,
}

/// Opens every disk; the first failure is a one-line error naming the file.
pub fn make_disks(args: &[DiskArg]) -> Result<Vec<Disk>, String> {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            let mut confinement = Confinement::none();
            for p in &a.allow {
                let allowed =
                    if p.is_dir() { confinement.allow_dir(p) } else { confinement.allow_file(p) };
                confinement = allowed.map_err(|e| format!("--disk allow={}: {e}", p.display()))?;
            }
            let opts = DiskOptions {
                read_only: a.read_only,
                confinement,
                engine: a.engine,
                ..Default::default()
            };
            let backend = open_disk(&a.path, a.format, opts)
                .map_err(|e| format!("--disk {}: {e}", a.path.display()))?;
            let serial = a.serial.clone().unwrap_or_else(|| format!("hv-disk{i}"));
            let format =
                if format!("{backend:?}").starts_with("Qcow2Disk") { "qcow2" } else { "raw" };
            let summary = format!(
                "disk{i}: {} ({format}{}, {} sectors{}, serial {serial})",
                a.path.display(),
                if a.format == DiskFormat::Auto { ", probed" } else { "" },
                backend.size() >> 9,
                if a.read_only { ", read-only" } else { "" },
            );
            let device = VirtioBlock::new(backend, BlockConfig::default().with_serial(&serial));
            Ok(Disk { device, summary })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let d = parse_disk("/x.img,ro,format=qcow2,serial=root,allow=/b,allow=/c").unwrap();
        assert_eq!(d.path, PathBuf::from("/x.img"));
        assert!(d.read_only);
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.allow, [PathBuf::from("/b"), PathBuf::from("/c")]);
        assert_eq!(parse_disk("/x.img").unwrap().format, DiskFormat::Raw, "raw unless told");
        assert_eq!(parse_disk("/x.img,format=auto").unwrap().format, DiskFormat::Auto);
        assert!(parse_disk("/x.img,allow=").is_err());
        assert_eq!(d.serial.as_deref(), Some("root"));
        assert!(parse_disk("/x.img,format=vmdk").is_err());
        assert!(parse_disk("/x.img,rw").is_err());
        assert!(parse_disk("").is_err());
    }
}
