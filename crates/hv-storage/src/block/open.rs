//! The one confined opener for guest disks, used by VMs and pools alike.
//!
//! Bytes a guest or a tenant wrote never decide how the host opens a file:
//! - the caller names the format ([`DiskFormat`]); probing happens only when it asks for it by
//!   name ([`DiskFormat::Auto`]);
//! - every qcow2 header of the chain is checked by hv's own parser ([`crate::format`]) before
//!   imago reads it;
//! - a backing file or an external data file opens only if its name has no `..` and, after
//!   resolving symlinks, it is a path the caller allowed ([`Confinement`]): a volume of the same pool, or a file or
//!   directory named explicitly. Anything else is a typed error before any guest runs;
//! - a backing file's format comes from the qcow2 backing-format extension or from the pool's
//!   record, never from probing the backing file; where both exist they must agree;
//! - imago then opens exactly the files validated here, through a gate that refuses anything
//!   else (and a backing layer in another format than validated).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

use super::{
    BlockBackend, BlockError, DiskOptions, Engine, Qcow2Disk, RawSyncDisk, RawUringDisk, Result,
};
use crate::format::{probe, FormatError, ImageFormat, Probed};

/// Deepest backing chain followed (QEMU's limit is far higher; hv's pools make short chains).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// The format a caller asks a disk to be opened as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskFormat {
    /// Raw bytes, whatever they look like (the default: a guest may write anything, a qcow2
    /// header included, into a raw disk).
    #[default]
    Raw,
    /// A qcow2 image; anything else is [`BlockError::FormatMismatch`].
    Qcow2,
    /// Probe the file's first bytes. Only for images whose first sector no guest wrote; even
    /// then backing and data files open only as [`DiskOptions::confinement`] allows.
    Auto,
}

impl From<ImageFormat> for DiskFormat {
    fn from(f: ImageFormat) -> Self {
        match f {
            ImageFormat::Raw => DiskFormat::Raw,
            ImageFormat::Qcow2 => DiskFormat::Qcow2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// One file (canonical path).
    File(PathBuf),
    /// The regular files directly in a directory (canonical path), with the formats recorded
    /// for them by name (a pool's record); a file without a record is refused when `records`
    /// is `Some`.
    Dir { dir: PathBuf, records: Option<Arc<HashMap<String, ImageFormat>>> },
}

/// Which files besides the image itself an open may touch: backing files and external data
/// files. The default allows none.
///
/// ```
/// use hv_storage::block::Confinement;
/// let none = Confinement::none();
/// assert!(none.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    allowed: Vec<Allowed>,
}

impl Confinement {
    /// Allows no backing or data file.
    pub fn none() -> Self {
        Self::default()
    }

    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Also allows `path` (resolved now: symlinks followed, so later renames of the link do
    /// not widen the allowance).
    pub fn allow_file(mut self, path: impl AsRef<Path>) -> io::Result<Self> {
        self.allowed.push(Allowed::File(path.as_ref().canonicalize()?));
        Ok(self)
    }

    /// Also allows the regular files directly inside `dir` (not its subdirectories).
    pub fn allow_dir(mut self, dir: impl AsRef<Path>) -> io::Result<Self> {
        self.allowed.push(Allowed::Dir { dir: dir.as_ref().canonicalize()?, records: None });
        Ok(self)
    }

    /// Allows the volumes of a pool: the files of `dir` named in `records`, each only in its
    /// recorded format.
    pub fn allow_pool(
        mut self,
        dir: impl AsRef<Path>,
        records: HashMap<String, ImageFormat>,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().canonicalize()?;
        self.allowed.push(Allowed::Dir { dir, records: Some(Arc::new(records)) });
        Ok(self)
    }

    /// Checks `real` (a canonical path): `Some(recorded format or None)` when allowed.
    fn check(&self, real: &Path) -> Option<Option<ImageFormat>> {
        self.allowed.iter().find_map(|a| match a {
            Allowed::File(f) => (f == real).then_some(None),
            Allowed::Dir { dir, records } => {
                if real.parent() != Some(dir.as_path()) {
                    return None;
                }
                match records {
                    None => Some(None),
                    Some(r) => {
                        let name = real.file_name()?.to_str()?;
                        r.get(name).map(|f| Some(*f))
                    }
                }
            }
        })
    }
}

/// One file of a validated chain, as the gate will let imago open it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    real: PathBuf,
    /// The format of a backing layer; `None` for a data file (storage only).
    format: Option<ImageFormat>,
}

/// Opens a guest disk in the format the caller names, confining its backing chain and data
/// files to what `options.confinement` allows.
///
/// ```no_run
/// use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
/// // A raw disk stays raw whatever a guest wrote into its first sector.
/// let disk = open_disk("/var/lib/hv/vm1.img", DiskFormat::Raw, DiskOptions::default()).unwrap();
/// println!("{} bytes", disk.size());
/// ```
pub fn open_disk(
    path: impl AsRef<Path>,
    format: DiskFormat,
    options: DiskOptions,
) -> Result<Box<dyn BlockBackend>> {
    let path = path.as_ref();
    let format = match format {
        DiskFormat::Raw => ImageFormat::Raw,
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
        DiskFormat::Auto => probe_file(path)?.format(),
    };
    match format {
        ImageFormat::Raw => Ok(match options.engine {
            Engine::Sync => Box::new(RawSyncDisk::open(path, options.read_only, options.direct)?),
            Engine::Uring => Box::new(RawUringDisk::open(path, options.read_only, options.direct)?),
        }),
        ImageFormat::Qcow2 => Ok(Box::new(open_qcow2(path, &options)?)),
    }
}

/// Opens the qcow2 image at `path` (checked by hv's parser) with its confined chain.
pub fn open_qcow2(path: &Path, options: &DiskOptions) -> Result<Qcow2Disk> {
    let links = validate_chain(path, &options.confinement)?;
    if !options.read_only {
        super::refcount_check::check(path)?;
    }
    let gate = ChainGate { links: Arc::new(links), pending: None };
    Qcow2Disk::open_gated(path, options.read_only, options.direct, gate)
}

/// Probes `path` with hv's own parser (a qcow2 header is checked completely).
fn probe_file(path: &Path) -> Result<Probed> {
    let mut f =
        File::open(path).map_err(|source| BlockError::Open { path: path.to_path_buf(), source })?;
    probe(&mut f, path).map_err(BlockError::from)
}

/// Walks the chain from `top`: checks each qcow2 header with hv's parser and each backing or
/// data file against `conf`; returns the files imago may open besides `top`.
fn validate_chain(top: &Path, conf: &Confinement) -> Result<Vec<Link>> {
    let mut links: Vec<Link> = Vec::new();
    let mut image = top.to_path_buf();
    for _ in 0..MAX_CHAIN_DEPTH {
        let header = match probe_file(&image)? {
            Probed::Qcow2(h) => h,
            Probed::Raw { .. } => {
                return Err(BlockError::FormatMismatch {
                    path: image,
                    expected: ImageFormat::Qcow2,
                    probed: ImageFormat::Raw,
                })
            }
        };
        if let Some(name) = &header.data_file {
            let (real, _) = confine(conf, &image, name, "data file")?;
            links.push(Link { real, format: None });
        }
        let Some(name) = &header.backing_file else { return Ok(links) };
        let (real, recorded) = confine(conf, &image, name, "backing file")?;
        let format = match (header.backing_format, recorded) {
            (Some(stated), Some(rec)) if stated != rec => {
                return Err(BlockError::BackingFormatMismatch {
                    image,
                    backing: real,
                    stated,
                    recorded: rec,
                })
            }
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) => return Err(BlockError::BackingFormatUnknown { image, backing: real }),
        };
        if links.iter().any(|l| l.real == real) || real == top.canonicalize().unwrap_or_default() {
            return Err(BlockError::BackingLoop { image, backing: real });
        }
        links.push(Link { real: real.clone(), format: Some(format) });
        if format == ImageFormat::Raw {
            return Ok(links);
        }
        image = real;
    }
    Err(BlockError::BackingTooDeep { path: top.to_path_buf(), max: MAX_CHAIN_DEPTH })
}

/// Resolves `name` (relative to `image`'s directory, as qcow2 says) and checks it against
/// `conf`: the canonical path and the recorded format, if any.
fn confine(
    conf: &Confinement,
    image: &Path,
    name: &str,
    what: &'static str,
) -> Result<(PathBuf, Option<ImageFormat>)> {
    let joined = image.parent().unwrap_or(Path::new(".")).join(name);
    let refused = |reason: String| BlockError::NotAllowed {
        image: image.to_path_buf(),
        what,
        file: joined.clone(),
        reason,
    };
    if conf.is_empty() {
        return Err(refused("the caller allowed no backing or data files".into()));
    }
    if Path::new(name).components().any(|c| c == std::path::Component::ParentDir) {
        return Err(refused("the name climbs out of a directory ('..')".into()));
    }
    let real = joined.canonicalize().map_err(|e| refused(format!("cannot resolve it: {e}")))?;
    if !real.is_file() {
        return Err(refused(format!("{} is not a regular file", real.display())));
    }
    match conf.check(&real) {
        Some(recorded) => Ok((real, recorded)),
        None => Err(refused(format!("{} is not a file the caller allowed", real.display()))),
    }
}

impl From<FormatError> for BlockError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Io { path, source } => BlockError::Probe { path, source },
            FormatError::BadQcow2 { path, reason } => BlockError::BadHeader { path, reason },
            FormatError::Unsupported { path, format } => {
                BlockError::UnsupportedFormat { path, format }
            }
        }
    }
}

/// imago's gate for a validated chain: opens exactly the files [`validate_chain`] accepted,
/// each backing layer only in its validated format; everything else is refused.
#[derive(Clone, Debug)]
pub(crate) struct ChainGate {
    links: Arc<Vec<Link>>,
    /// The format the last storage opened must be wrapped in (set by `open_storage`, taken by
    /// `open_format`).
    pending: Option<Option<ImageFormat>>,
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

impl ImplicitOpenGate<ImagoFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        let want = match F::FORMAT {
            imago::format::Format::Raw => ImageFormat::Raw,
            imago::format::Format::Qcow2 => ImageFormat::Qcow2,
            other => return Err(denied(format!("backing format {other:?} refused"))),
        };
        match self.pending.take() {
            Some(Some(validated)) if validated == want => {}
            other => {
                return Err(denied(format!(
                    "backing layer as {want} refused (validated as {other:?})"
                )))
            }
        }
        let next = ChainGate { links: self.links.clone(), pending: None };
        Ok(FormatAccess::new(builder.open(next)?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<ImagoFile> {
        let name = opts.get_filename().ok_or_else(|| denied("a file without a name".into()))?;
        let real = name.canonicalize()?;
        let link = self
            .links
            .iter()
            .find(|l| l.real == real)
            .ok_or_else(|| denied(format!("{} was not validated", real.display())))?;
        self.pending = Some(link.format);
        <ImagoFile as Storage>::open(opts.filename(real))
    }
}
