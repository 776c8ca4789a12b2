//! The one check an uploaded image passes before it becomes `active`: its bytes must be what
//! its declared disk format says, and a qcow2 must stand alone (no backing file, no external
//! data file), because a tenant's header must never make the host open another file.
//!
//! The qcow2 header is read by hv-storage's confined prober (`pool::format`); this function
//! is the single place to switch to a stricter opener when hv-storage has one.

use std::path::Path;

use hv_storage::pool::format::{probe_path, FormatError, Probed};

use super::DiskFormat;

/// What the check found in an acceptable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The guest-visible size in bytes (the qcow2 virtual size, or the file size).
    pub virtual_size: u64,
}

/// Checks the uploaded file at `path` against `declared`; the error is the reason the image
/// is refused (it becomes `killed` with it).
pub fn check_image(path: &Path, declared: DiskFormat) -> Result<Checked, String> {
    let probed = probe_path(path).map_err(|e| match e {
        FormatError::BadQcow2 { reason, .. } => {
            format!("the data is a qcow2 image that cannot be used: {reason}")
        }
        FormatError::Unsupported { format, .. } => {
            format!("the data is a {format} image, not {}", declared.as_str())
        }
        FormatError::Io { source, .. } => format!("the data could not be read back: {source}"),
    })?;
    match (&probed, declared) {
        (Probed::Qcow2(h), DiskFormat::Qcow2) => {
            if let Some(b) = &h.backing_file {
                return Err(format!(
                    "the qcow2 image has a backing file ('{}'); images must stand alone",
                    b.escape_debug()
                ));
            }
            Ok(Checked { virtual_size: h.size })
        }
        (Probed::Qcow2(_), other) => {
            Err(format!("declared {} but the data is a qcow2 image", other.as_str()))
        }
        (Probed::Raw { .. }, DiskFormat::Qcow2) => {
            Err("declared qcow2 but the data is not a qcow2 image".into())
        }
        (Probed::Raw { size }, DiskFormat::Aki) => {
            if looks_like_kernel(path) {
                Ok(Checked { virtual_size: *size })
            } else {
                Err("declared aki but the data is not a kernel (neither ELF nor bzImage)".into())
            }
        }
        (Probed::Raw { size }, DiskFormat::Raw | DiskFormat::Ami | DiskFormat::Ari) => {
            Ok(Checked { virtual_size: *size })
        }
    }
}

/// True for an ELF file or a Linux bzImage (`HdrS` at 0x202).
fn looks_like_kernel(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 0x206];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    (n >= 4 && head[..4] == *b"\x7fELF") || (n >= 0x206 && head[0x202..0x206] == *b"HdrS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_pass_as_raw_and_fail_as_qcow2_or_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        assert_eq!(check_image(&p, DiskFormat::Raw), Ok(Checked { virtual_size: 4096 }));
        assert!(check_image(&p, DiskFormat::Qcow2).unwrap_err().contains("not a qcow2"));
        assert!(check_image(&p, DiskFormat::Aki).unwrap_err().contains("not a kernel"));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(&p, elf).unwrap();
        assert!(check_image(&p, DiskFormat::Aki).is_ok());
    }

    #[test]
    fn other_formats_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut vmdk = b"KDMV".to_vec();
        vmdk.resize(512, 0);
        std::fs::write(&p, vmdk).unwrap();
        assert!(check_image(&p, DiskFormat::Raw).unwrap_err().contains("vmdk"));
    }
}
