//! Directory pools: a directory, a file per volume; raw (sparse) or qcow2 files.
//!
//! Volumes are made crash-safely: the file is written under a hidden temporary name
//! (`.NAME.part.PID`), fsynced, then hard-linked to its name (which fails rather than replace an
//! existing volume) and the directory fsynced. A crash leaves either no volume or a complete
//! one; leftover temporary files are removed when the pool starts or is refreshed.
//!
//! Each volume's format is recorded ([`super::record`]) and used from then on; files are opened
//! through the one confined opener ([`crate::block::open`]), whose backing files must be
//! recorded volumes of this pool. Volume files are created `0600`, as libvirt does.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;

use super::copy;
use super::def::{validate_name, PoolDef, PoolKind};
use super::error::{io_err, PoolError, Result};
use super::failpoint;
use super::image::{create_qcow2, RawIo, VolumeIo};
use super::persist::{clean_temp_files, sync_dir};
use super::record::{Records, RECORD_FILE};
use super::volume::{ResizeFlags, VolFormat, VolumeInfo, VolumeSpec};
use super::{copy_err, BuildFlags, Lifecycle, Pool, PoolInfo, PoolOp, PoolState};
use crate::block::{self, BlockBackend, Confinement, DiskOptions};
use crate::format::{probe_path, Probed};

/// Mode of new volume files: owner only, as libvirt creates them.
const VOLUME_MODE: u32 = 0o600;

/// A directory pool.
#[derive(Debug)]
pub struct DirPool {
    def: PoolDef,
    target: PathBuf,
    life: Lifecycle,
}

impl DirPool {
    /// A dir pool for `def` in `state` (as persisted by the manager).
    pub fn new(def: PoolDef, state: PoolState) -> Result<DirPool> {
        let PoolKind::Dir { target } = &def.kind else {
            return Err(PoolError::Invalid {
                name: def.name.clone(),
                reason: "not a dir pool".into(),
            });
        };
        let target = target.clone();
        let life = Lifecycle::new(&def.name, state);
        Ok(DirPool { def, target, life })
    }

    /// The pool directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    fn vol_path(&self, name: &str) -> Result<PathBuf> {
        validate_name("volume", name)?;
        Ok(self.target.join(name))
    }

    fn not_found(&self, name: &str) -> PoolError {
        PoolError::VolumeNotFound { pool: self.def.name.clone(), volume: name.to_string() }
    }

    fn image_err(&self, volume: &str, what: &'static str) -> impl FnOnce(io::Error) -> PoolError {
        let (pool, volume) = (self.def.name.clone(), volume.to_string());
        move |source| PoolError::Image { pool, volume, what, source }
    }

    /// An existing volume's path and what it is, per its recorded format (recorded now, from
    /// a probe, if the pool had never seen the file).
    fn existing(&self, name: &str) -> Result<(PathBuf, Probed)> {
        let mut records = Records::load(&self.target)?;
        let found = self.existing_in(&mut records, name)?;
        if found.2 {
            records.save(&self.target)?;
        }
        Ok((found.0, found.1))
    }

    /// Like [`Self::existing`] with the record loaded; the flag says the record changed.
    fn existing_in(&self, records: &mut Records, name: &str) -> Result<(PathBuf, Probed, bool)> {
        let path = self.vol_path(name)?;
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(self.not_found(name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_found(name)),
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        match records.get(name) {
            // Recorded raw: raw, whatever its bytes say now.
            Some(VolFormat::Raw) => Ok((path, Probed::Raw { size: meta.len() }, false)),
            Some(VolFormat::Qcow2) => match probe_path(&path)? {
                p @ Probed::Qcow2(_) => Ok((path, p, false)),
                Probed::Raw { .. } => Err(PoolError::Open {
                    pool: self.def.name.clone(),
                    volume: name.to_string(),
                    source: Box::new(block::BlockError::FormatMismatch {
                        path,
                        expected: VolFormat::Qcow2,
                        probed: VolFormat::Raw,
                    }),
                }),
            },
            // First sight of a file placed by hand: probe it once and record the result.
            None => {
                let probed = probe_path(&path)?;
                records.set(name, probed.format());
                Ok((path, probed, true))
            }
        }
    }

    /// What the confined opener may open for this pool's volumes: its recorded volumes.
    fn confinement(&self) -> Result<Confinement> {
        let records = Records::load(&self.target)?;
        Confinement::none()
            .allow_pool(&self.target, records.to_map())
            .map_err(io_err("resolve", &self.target))
    }

    fn open_err(&self, volume: &str) -> impl FnOnce(block::BlockError) -> PoolError {
        let (pool, volume) = (self.def.name.clone(), volume.to_string());
        move |source| PoolError::Open { pool, volume, source: Box::new(source) }
    }

    /// Records every volume file not yet recorded and forgets records of files gone.
    fn record_all(&self) -> Result<()> {
        let mut records = Records::load(&self.target)?;
        let mut changed = records.retain_existing(&self.target);
        for e in fs::read_dir(&self.target).map_err(io_err("read directory", &self.target))? {
            let e = e.map_err(io_err("read directory", &self.target))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if validate_name("volume", &name).is_err() || records.get(&name).is_some() {
                continue;
            }
            if let Ok((_, _, c)) = self.existing_in(&mut records, &name) {
                changed |= c;
            }
        }
        if changed {
            records.save(&self.target)?;
        }
        Ok(())
    }

    fn info_of(&self, name: &str, path: PathBuf, probed: &Probed) -> Result<VolumeInfo> {
        let meta = fs::metadata(&path).map_err(io_err("stat", &path))?;
        let backing = match probed {
            Probed::Qcow2(h) => h.backing_file.clone(),
            Probed::Raw { .. } => None,
        };
        Ok(VolumeInfo {
            name: name.to_string(),
            key: path.display().to_string(),
            path: Some(path),
            format: probed.format(),
            capacity: probed.capacity(),
            allocation: meta.blocks() * 512,
            backing,
        })
    }

    fn clean_partial_files(&self) {
        let Ok(entries) = fs::read_dir(&self.target) else { return };
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with('.') && n.contains(".part.") {
                let _ = fs::remove_file(e.path());
            }
        }
        clean_temp_files(&self.target);
    }

    /// Makes volume `name` by filling a temporary file with `fill`, then linking it into place.
    fn make_volume(
        &mut self,
        name: &str,
        format: VolFormat,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<VolumeInfo> {
        let path = self.vol_path(name)?;
        if fs::symlink_metadata(&path).is_ok() {
            return Err(PoolError::VolumeExists {
                pool: self.def.name.clone(),
                volume: name.to_string(),
            });
        }
        let tmp = self.target.join(format!(".{name}.part.{}", std::process::id()));
        failpoint::point("dir.create.tmp");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(VOLUME_MODE)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let mut recorded = false;
        let result = fill(&tmp).and_then(|()| {
            failpoint::point("dir.create.fsync");
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err("fsync", &tmp))?;
            // Recorded before it exists under its name: no crash leaves it unrecorded.
            let mut records = Records::load(&self.target)?;
            records.set(name, format);
            records.save(&self.target)?;
            recorded = true;
            failpoint::point("dir.create.link");
            fs::hard_link(&tmp, &path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    PoolError::VolumeExists {
                        pool: self.def.name.clone(),
                        volume: name.to_string(),
                    }
                } else {
                    io_err("link", &path)(e)
                }
            })
        });
        let _ = fs::remove_file(&tmp);
        if let Err(e) = result {
            if recorded && !matches!(e, PoolError::VolumeExists { .. }) {
                let mut records = Records::load(&self.target)?;
                records.remove(name);
                records.save(&self.target)?;
            }
            return Err(e);
        }
        failpoint::point("dir.create.fsync_dir");
        sync_dir(&self.target)?;
        let (path, probed) = self.existing(name)?;
        self.info_of(name, path, &probed)
    }

    /// Opens a volume for data access, in its recorded format.
    fn open_io(
        &self,
        name: &str,
        path: &Path,
        probed: &Probed,
        writable: bool,
    ) -> Result<Box<dyn VolumeIo>> {
        Ok(match probed {
            Probed::Raw { .. } => {
                Box::new(RawIo::open(path, writable).map_err(self.image_err(name, "open"))?)
            }
            Probed::Qcow2(_) => {
                let options = DiskOptions {
                    read_only: !writable,
                    confinement: self.confinement()?,
                    ..Default::default()
                };
                Box::new(block::open::open_qcow2(path, &options).map_err(self.open_err(name))?)
            }
        })
    }
}

impl Pool for DirPool {
    fn def(&self) -> &PoolDef {
        &self.def
    }

    fn state(&self) -> PoolState {
        self.life.state()
    }

    fn build(&mut self, _flags: BuildFlags) -> Result<()> {
        let before = self.life.begin(PoolOp::Build)?;
        let r = (|| {
            match fs::metadata(&self.target) {
                Ok(m) if m.is_dir() => return Ok(()),
                Ok(_) => {
                    return Err(PoolError::Invalid {
                        name: self.def.name.clone(),
                        reason: format!(
                            "target '{}' exists and is not a directory",
                            self.target.display()
                        ),
                    })
                }
                Err(_) => {}
            }
            fs::create_dir_all(&self.target).map_err(io_err("create directory", &self.target))?;
            if let Some(parent) = self.target.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        })();
        self.life.end(PoolOp::Build, before, &r);
        r
    }

    fn start(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Start)?;
        let r = match fs::metadata(&self.target) {
            Ok(m) if m.is_dir() => {
                self.clean_partial_files();
                self.record_all()
            }
            Ok(_) => Err(PoolError::Invalid {
                name: self.def.name.clone(),
                reason: format!("target '{}' is not a directory", self.target.display()),
            }),
            Err(e) => Err(io_err("open pool directory (run pool-build first?)", &self.target)(e)),
        };
        self.life.end(PoolOp::Start, before, &r);
        r
    }

    fn stop(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Stop)?;
        let r = Ok(());
        self.life.end(PoolOp::Stop, before, &r);
        r
    }

    fn refresh(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Refresh)?;
        let r = match fs::metadata(&self.target) {
            Ok(m) if m.is_dir() => {
                self.clean_partial_files();
                self.record_all()
            }
            Ok(_) => {
                Err(io_err("open", &self.target)(io::Error::from(io::ErrorKind::NotADirectory)))
            }
            Err(e) => Err(io_err("open", &self.target)(e)),
        };
        self.life.end(PoolOp::Refresh, before, &r);
        if r.is_err() {
            self.life.set(PoolState::Inaccessible);
        }
        r
    }

    fn delete(&mut self) -> Result<()> {
        let before = self.life.begin(PoolOp::Delete)?;
        // The format record goes with the last volume.
        let only_record = fs::read_dir(&self.target)
            .map(|d| d.flatten().all(|e| e.file_name() == RECORD_FILE))
            .unwrap_or(false);
        if only_record {
            let _ = fs::remove_file(self.target.join(RECORD_FILE));
        }
        let r = match fs::remove_dir(&self.target) {
            Ok(()) => match self.target.parent() {
                Some(p) => sync_dir(p),
                None => Ok(()),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                Err(PoolError::NotEmpty { pool: self.def.name.clone(), path: self.target.clone() })
            }
            Err(e) => Err(io_err("remove directory", &self.target)(e)),
        };
        self.life.end(PoolOp::Delete, before, &r);
        r
    }

    fn info(&self) -> Result<PoolInfo> {
        let mut info = PoolInfo::without_sizes(&self.def, self.state());
        if self.state() == PoolState::Running {
            let st =
                statvfs(&self.target).map_err(|e| io_err("statvfs", &self.target)(e.into()))?;
            let frsize = st.fragment_size() as u64;
            info.capacity = st.blocks() as u64 * frsize;
            info.allocation = (st.blocks() as u64 - st.blocks_free() as u64) * frsize;
            info.available = st.blocks_available() as u64 * frsize;
        }
        Ok(info)
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.life.require(PoolOp::Volumes)?;
        let mut out = vec![];
        let mut records = Records::load(&self.target)?;
        let mut changed = false;
        for e in fs::read_dir(&self.target).map_err(io_err("read directory", &self.target))? {
            let e = e.map_err(io_err("read directory", &self.target))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if validate_name("volume", &name).is_err() {
                continue; // hidden, temporary or unusable names
            }
            // Files whose format we cannot use are left out, as libvirt does.
            if let Ok((path, probed, c)) = self.existing_in(&mut records, &name) {
                changed |= c;
                out.push(self.info_of(&name, path, &probed)?);
            }
        }
        if changed {
            records.save(&self.target)?;
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn create_volume(&mut self, spec: &VolumeSpec) -> Result<VolumeInfo> {
        self.life.require(PoolOp::Volumes)?;
        let backing = match &spec.backing {
            None => None,
            Some(b) => {
                let (bpath, probed) = self.existing(b)?;
                if let Some(f) = spec.backing_format {
                    if f != probed.format() {
                        return Err(PoolError::Invalid {
                            name: spec.name.clone(),
                            reason: format!("backing volume '{b}' is {}, not {f}", probed.format()),
                        });
                    }
                }
                Some((bpath, probed))
            }
        };
        let mut capacity =
            spec.capacity.or(backing.as_ref().map(|(_, p)| p.capacity())).unwrap_or(0);
        if spec.format == VolFormat::Qcow2 {
            // qcow2 sizes are whole 512-byte sectors: round up, as libvirt does.
            capacity = round_up_sector(capacity)?;
        }
        match (spec.format, backing) {
            (VolFormat::Raw, Some(_)) => Err(PoolError::Unsupported {
                pool: self.def.name.clone(),
                what: "a raw volume with a backing volume (use --format qcow2 for an overlay)"
                    .into(),
            }),
            (VolFormat::Raw, None) => self.make_volume(&spec.name, VolFormat::Raw, |tmp| {
                failpoint::point("dir.create.set_len");
                let f = OpenOptions::new().write(true).open(tmp).map_err(io_err("open", tmp))?;
                f.set_len(capacity).map_err(io_err("set length of", tmp))
            }),
            (VolFormat::Qcow2, backing) => {
                let err = self.image_err(&spec.name, "create qcow2 image");
                let backing =
                    backing.map(|(p, probed)| (p.display().to_string(), probed.format().as_str()));
                self.make_volume(&spec.name, VolFormat::Qcow2, |tmp| {
                    failpoint::point("dir.create.qcow2");
                    create_qcow2(tmp, capacity, backing.as_ref().map(|(p, f)| (p.as_str(), *f)))
                        .map_err(err)
                })
            }
        }
    }

    fn delete_volume(&mut self, name: &str) -> Result<()> {
        self.life.require(PoolOp::Volumes)?;
        let (path, _) = self.existing(name)?;
        for v in self.list_volumes()? {
            if v.backing.as_deref().is_some_and(|b| Path::new(b) == path || b == name) {
                return Err(PoolError::VolumeInUse {
                    pool: self.def.name.clone(),
                    volume: name.to_string(),
                    user: v.name,
                });
            }
        }
        failpoint::point("dir.delete.unlink");
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        failpoint::point("dir.delete.fsync_dir");
        sync_dir(&self.target)?;
        // A crash before this leaves a record of a missing file, which refresh drops.
        let mut records = Records::load(&self.target)?;
        if records.remove(name) {
            records.save(&self.target)?;
        }
        Ok(())
    }

    fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        self.life.require(PoolOp::Volumes)?;
        let (path, probed) = self.existing(name)?;
        self.info_of(name, path, &probed)
    }

    fn volume_path(&self, name: &str) -> Result<PathBuf> {
        self.life.require(PoolOp::Volumes)?;
        Ok(self.existing(name)?.0)
    }

    fn resize_volume(&mut self, name: &str, capacity: u64, flags: ResizeFlags) -> Result<()> {
        self.life.require(PoolOp::Volumes)?;
        let (path, probed) = self.existing(name)?;
        let current = probed.capacity();
        let capacity = match probed {
            Probed::Qcow2(_) => round_up_sector(capacity)?,
            Probed::Raw { .. } => capacity,
        };
        if capacity < current && !flags.allow_shrink {
            return Err(PoolError::ShrinkRefused {
                pool: self.def.name.clone(),
                volume: name.to_string(),
                current,
                requested: capacity,
            });
        }
        if capacity == 0 || capacity > super::volume::MAX_CAPACITY {
            return Err(PoolError::Invalid {
                name: name.to_string(),
                reason: format!("capacity {capacity} out of range"),
            });
        }
        match probed {
            Probed::Raw { .. } => {
                let f =
                    OpenOptions::new().write(true).open(&path).map_err(io_err("open", &path))?;
                failpoint::point("dir.resize.set_len");
                f.set_len(capacity).map_err(io_err("resize", &path))?;
                failpoint::point("dir.resize.fsync");
                f.sync_all().map_err(io_err("fsync", &path))
            }
            Probed::Qcow2(_) if capacity < current => Err(PoolError::Unsupported {
                pool: self.def.name.clone(),
                what: "shrinking a qcow2 volume".into(),
            }),
            Probed::Qcow2(_) => {
                failpoint::point("dir.resize.qcow2");
                let options =
                    DiskOptions { confinement: self.confinement()?, ..Default::default() };
                let mut img =
                    block::open::open_qcow2(&path, &options).map_err(self.open_err(name))?;
                img.grow(capacity).map_err(self.image_err(name, "grow"))
            }
        }
    }

    fn clone_volume(&mut self, name: &str, new_name: &str) -> Result<VolumeInfo> {
        self.life.require(PoolOp::Volumes)?;
        let (path, probed) = self.existing(name)?;
        validate_name("volume", new_name)?;
        let src = self.open_io(name, &path, &probed, false)?;
        let pool = self.def.name.clone();
        let capacity = probed.capacity();
        let format = probed.format();
        self.make_volume(new_name, format, |tmp| {
            let img_err = |what| {
                let (pool, volume) = (pool.clone(), new_name.to_string());
                move |source| PoolError::Image { pool, volume, what, source }
            };
            let dst: Box<dyn VolumeIo> = match format {
                VolFormat::Raw => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(tmp)
                        .map_err(io_err("open", tmp))?;
                    f.set_len(capacity).map_err(io_err("set length of", tmp))?;
                    Box::new(RawIo::from_file(f, capacity))
                }
                VolFormat::Qcow2 => {
                    create_qcow2(tmp, capacity, None).map_err(img_err("create qcow2 image"))?;
                    let options = DiskOptions::default();
                    Box::new(block::open::open_qcow2(tmp, &options).map_err(|source| {
                        let (pool, volume) = (pool.clone(), new_name.to_string());
                        PoolError::Open { pool, volume, source: Box::new(source) }
                    })?)
                }
            };
            copy::copy(src.as_ref(), dst.as_ref(), &mut |_, _| {})
                .map_err(|e| copy_err(&pool, new_name, e, capacity))?;
            Ok(())
        })
    }

    fn open_volume(&self, name: &str, writable: bool) -> Result<Box<dyn VolumeIo>> {
        self.life.require(PoolOp::Volumes)?;
        let (path, probed) = self.existing(name)?;
        self.open_io(name, &path, &probed, writable)
    }

    fn open_disk(&self, name: &str, options: DiskOptions) -> Result<Box<dyn BlockBackend>> {
        self.life.require(PoolOp::Volumes)?;
        let (path, probed) = self.existing(name)?;
        let options = DiskOptions { confinement: self.confinement()?, ..options };
        block::open_disk(&path, probed.format().into(), options).map_err(self.open_err(name))
    }
}

/// Rounds a qcow2 capacity up to a whole 512-byte sector (libvirt does; qemu-img reads a
/// header size of 1000 as 512).
fn round_up_sector(capacity: u64) -> Result<u64> {
    capacity.checked_next_multiple_of(512).ok_or_else(|| PoolError::Invalid {
        name: capacity.to_string(),
        reason: "the capacity overflows when rounded up to 512 bytes".into(),
    })
}
