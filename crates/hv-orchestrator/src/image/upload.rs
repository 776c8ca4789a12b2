//! Image data: streamed from a reader into the image pool's directory (never whole in
//! memory), hashed on the way (md5 for Glance's `checksum`, sha512 for `os_hash_value`),
//! checked ([`super::check::check_image`]), and only then linked into the pool as the volume
//! named by the image id.
//!
//! The data goes to a hidden temporary file (`.ID.part.PID`, which the pool removes when it
//! starts), is fsynced, and is hard-linked into place, so a crash leaves either no volume or
//! a complete one. The record moves queued -> saving (compare-and-swap, so two uploads of
//! one image cannot race) -> active, or -> killed with the reason.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;

use hv_storage::pool::Pool;
use md5::Md5;
use sha2::{Digest, Sha512};

use super::check::check_image;
use super::{Image, ImageStatus};
use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::now;
use crate::policy::{authorize, Action, Context};
use crate::records::to_record;
use crate::store::{Op, StoreError};
use crate::Cloud;

/// The largest image accepted (1 TiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;

/// The copy buffer.
const CHUNK: usize = 1 << 20;

fn io_err(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { what, path, source }
}

impl Cloud {
    /// Uploads an image's data from `src`. A refused image becomes `killed` and the call
    /// answers [`Error::ImageRefused`] with the reason.
    pub fn upload_image(&self, ctx: &Context, id: &str, src: &mut dyn Read) -> Result<Image> {
        authorize(ctx, Action::ImageUpload)?;
        let (mut img, version) = self.load_own_image(ctx, id)?;
        if img.status != ImageStatus::Queued {
            return Err(Error::Conflict {
                kind: "image",
                id: id.into(),
                reason: format!(
                    "data can only be uploaded to a queued image (it is {:?})",
                    img.status
                ),
            });
        }
        img.status = ImageStatus::Saving;
        img.updated_at = now();
        self.store().apply(&[Op::Update(to_record(&img, version))]).map_err(|e| match e {
            StoreError::Stale { .. } => Error::Conflict {
                kind: "image",
                id: id.into(),
                reason: "another upload is under way".into(),
            },
            e => e.into(),
        })?;
        let version = version + 1;
        let dir = self.image_pool().target().to_path_buf();
        let tmp = dir.join(format!(".{id}.part.{}", std::process::id()));
        let outcome = stream(src, &tmp).and_then(|(size, md5, sha512)| {
            let checked = check_image(&tmp, img.disk_format)
                .map_err(|reason| Error::ImageRefused { id: id.into(), reason })?;
            Ok((size, md5, sha512, checked))
        });
        let (size, md5, sha512, checked) = match outcome {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                img.status = ImageStatus::Killed;
                img.fault = Some(e.to_string());
                img.updated_at = now();
                self.store().apply(&[
                    Op::Update(to_record(&img, version)),
                    event(
                        ctx,
                        &img.owner,
                        "image.upload.refused",
                        "image",
                        id,
                        serde_json::json!({"reason": e.to_string()}),
                    ),
                ])?;
                return Err(e);
            }
        };
        let dest: PathBuf = dir.join(id);
        let linked = fs::hard_link(&tmp, &dest).map_err(io_err("link", &dest));
        let _ = fs::remove_file(&tmp);
        linked?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", &dir))?;
        img.status = ImageStatus::Active;
        img.size = Some(size);
        img.virtual_size = Some(checked.virtual_size);
        img.checksum = Some(md5);
        img.os_hash_algo = Some("sha512".into());
        img.os_hash_value = Some(sha512);
        img.updated_at = now();
        self.store().apply(&[
            Op::Update(to_record(&img, version)),
            event(ctx, &img.owner, "image.upload", "image", id, serde_json::json!({"size": size})),
        ])?;
        Ok(img)
    }

    /// Writes an active image's data to `dst` (streamed); returns the bytes written.
    pub fn download_image(&self, ctx: &Context, id: &str, dst: &mut dyn Write) -> Result<u64> {
        authorize(ctx, Action::ImageGet)?;
        let (img, _) = self.load_image(ctx, id)?;
        if img.status != ImageStatus::Active {
            return Err(Error::Conflict {
                kind: "image",
                id: id.into(),
                reason: "the image has no data".into(),
            });
        }
        let path = self.image_path(id)?;
        let mut f = File::open(&path).map_err(io_err("open", &path))?;
        std::io::copy(&mut f, dst).map_err(io_err("read", &path))
    }

    /// The host path of an image's data in the pool (for the host layer to back disks on).
    pub(crate) fn image_path(&self, id: &str) -> Result<PathBuf> {
        Ok(self.image_pool().volume_path(id)?)
    }

    /// Deletes an image's volume from the pool.
    pub(crate) fn image_pool_delete(&self, id: &str) -> Result<()> {
        Ok(self.image_pool().delete_volume(id)?)
    }
}

/// Copies `src` into a new file at `path`, hashing; returns size, md5 and sha512 (hex).
fn stream(src: &mut dyn Read, path: &std::path::Path) -> Result<(u64, String, String)> {
    let mut out = File::create(path).map_err(io_err("create", path))?;
    let (mut md5, mut sha) = (Md5::new(), Sha512::new());
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Io {
                    what: "read the upload for",
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        size += n as u64;
        if size > MAX_IMAGE_BYTES {
            return Err(Error::invalid(
                "image data",
                format!("larger than {MAX_IMAGE_BYTES} bytes"),
            ));
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err("write", path))?;
    }
    out.sync_all().map_err(io_err("fsync", path))?;
    Ok((size, hex::encode(md5.finalize()), hex::encode(sha.finalize())))
}
