//! `--disk PATH[,ro][,format=raw|qcow2][,serial=S]` for boot_linux: a virtio-blk disk per flag,
//! in the order given (the first is the guest's `vda`).
//!
//! The format is probed from the file unless `format=` pins it. Pin `format=raw` for a raw
//! image a guest writes: a guest can write a qcow2 header into a raw disk, and a later probing
//! open would then take it for a qcow2 image (with a backing file of the guest's choosing).

use std::path::PathBuf;

use hv::storage::block::{open_disk, probe_path, DiskOptions, ImageFormat};
use hv::storage::virtio_blk::{BlockConfig, VirtioBlock};

/// One `--disk` flag.
#[derive(Debug, Clone)]
pub struct DiskArg {
    /// The image file or block device.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// The format, when pinned; probed otherwise.
    pub format: Option<ImageFormat>,
    /// The GET_ID serial (default `hv-disk<N>`).
    pub serial: Option<String>,
}

/// Parses `PATH[,ro][,format=raw|qcow2][,serial=S]`.
pub fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("--disk needs a path")?;
    let mut disk =
        DiskArg { path: PathBuf::from(path), read_only: false, format: None, serial: None };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            Some(("format", "raw")) => disk.format = Some(ImageFormat::Raw),
            Some(("format", "qcow2")) => disk.format = Some(ImageFormat::Qcow2),
            Some(("format", other)) => {
                return Err(format!("--disk {s}: unknown format {other:?} (raw or qcow2)"))
            }
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
            let opts =
                DiskOptions { read_only: a.read_only, format: a.format, ..Default::default() };
            let backend = open_disk(&a.path, opts)
                .map_err(|e| format!("--disk {}: {e}", a.path.display()))?;
            let serial = a.serial.clone().unwrap_or_else(|| format!("hv-disk{i}"));
            let format = match a.format.map_or_else(|| probe_path(&a.path).ok(), Some) {
                Some(ImageFormat::Raw) => "raw",
                Some(ImageFormat::Qcow2) => "qcow2",
                None => "?",
            };
            let summary = format!(
                "disk{i}: {} ({format}{}, {} sectors{}, serial {serial})",
                a.path.display(),
                if a.format.is_some() { "" } else { ", probed" },
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
        let d = parse_disk("/x.img,ro,format=qcow2,serial=root").unwrap();
        assert_eq!(d.path, PathBuf::from("/x.img"));
        assert!(d.read_only);
        assert_eq!(d.format, Some(ImageFormat::Qcow2));
        assert_eq!(d.serial.as_deref(), Some("root"));
        assert!(parse_disk("/x.img,format=vmdk").is_err());
        assert!(parse_disk("/x.img,rw").is_err());
        assert!(parse_disk("").is_err());
    }
}
