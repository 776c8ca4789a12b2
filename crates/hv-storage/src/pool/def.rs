//! Pool definitions: what libvirt keeps as pool XML, here as JSON in the state directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{PoolError, Result};

/// The default extent size of logical pools (LVM's default, 4 MiB).
pub const DEFAULT_EXTENT_SIZE: u64 = 4 << 20;

/// The type of a pool and its type-specific source/target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PoolKind {
    /// A directory, a file per volume (`pool-define-as NAME dir --target PATH`).
    Dir {
        /// The directory.
        target: PathBuf,
    },
    /// A volume group over physical volumes
    /// (`pool-define-as NAME logical --source-dev PV...`).
    Logical {
        /// The physical volumes: files or block devices.
        source_devs: Vec<PathBuf>,
        /// The volume group name (libvirt's `--source-name`; defaults to the pool name).
        vg_name: String,
        /// Extent size in bytes (a power of two, at least 64 KiB).
        extent_size: u64,
    },
}

impl PoolKind {
    /// libvirt's type name: `dir` or `logical`.
    pub fn type_name(&self) -> &'static str {
        match self {
            PoolKind::Dir { .. } => "dir",
            PoolKind::Logical { .. } => "logical",
        }
    }
}

/// A persistent pool definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDef {
    /// The pool name, unique in a state directory.
    pub name: String,
    /// A UUID, made at definition time.
    pub uuid: String,
    /// Type, source and target.
    pub kind: PoolKind,
}

impl PoolDef {
    /// Starts a directory pool definition.
    pub fn dir(name: impl Into<String>, target: impl Into<PathBuf>) -> PoolDefBuilder {
        PoolDefBuilder { name: name.into(), target: Some(target.into()), ..Default::default() }
    }

    /// Starts a logical pool definition over `source_devs`.
    pub fn logical<P: Into<PathBuf>>(
        name: impl Into<String>,
        source_devs: impl IntoIterator<Item = P>,
    ) -> PoolDefBuilder {
        PoolDefBuilder {
            name: name.into(),
            logical: true,
            source_devs: source_devs.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// Builds a [`PoolDef`], validated at [`PoolDefBuilder::build`].
///
/// ```
/// use hv_storage::pool::PoolDef;
/// let def = PoolDef::dir("images", "/var/lib/hv/images").build().unwrap();
/// assert_eq!(def.kind.type_name(), "dir");
/// let lvm = PoolDef::logical("vg0", ["/dev/sdb"]).extent_size(8 << 20).build().unwrap();
/// assert!(PoolDef::logical("bad", Vec::<String>::new()).build().is_err());
/// ```
#[derive(Debug, Default, Clone)]
pub struct PoolDefBuilder {
    name: String,
    target: Option<PathBuf>,
    logical: bool,
    source_devs: Vec<PathBuf>,
    vg_name: Option<String>,
    extent_size: Option<u64>,
    uuid: Option<String>,
}

impl PoolDefBuilder {
    /// Adds a physical volume (logical pools).
    pub fn source_dev(mut self, dev: impl Into<PathBuf>) -> Self {
        self.source_devs.push(dev.into());
        self
    }

    /// Sets the volume group name (logical pools; default: the pool name).
    pub fn vg_name(mut self, vg: impl Into<String>) -> Self {
        self.vg_name = Some(vg.into());
        self
    }

    /// Sets the extent size in bytes (logical pools; default 4 MiB).
    pub fn extent_size(mut self, bytes: u64) -> Self {
        self.extent_size = Some(bytes);
        self
    }

    /// Uses this UUID instead of a fresh one.
    pub fn uuid(mut self, uuid: impl Into<String>) -> Self {
        self.uuid = Some(uuid.into());
        self
    }

    /// Validates and returns the definition.
    pub fn build(self) -> Result<PoolDef> {
        validate_name("pool", &self.name)?;
        let invalid =
            |reason: &str| PoolError::Invalid { name: self.name.clone(), reason: reason.into() };
        let kind = if self.logical {
            if self.source_devs.is_empty() {
                return Err(invalid("a logical pool needs at least one --source-dev"));
            }
            if self.source_devs.iter().any(|p| !p.is_absolute()) {
                return Err(invalid("source devices must be absolute paths"));
            }
            let mut sorted = self.source_devs.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != self.source_devs.len() {
                return Err(invalid("a source device is listed twice"));
            }
            let extent_size = self.extent_size.unwrap_or(DEFAULT_EXTENT_SIZE);
            if !extent_size.is_power_of_two() || !(64 << 10..=1 << 30).contains(&extent_size) {
                return Err(invalid("extent size must be a power of two from 64 KiB to 1 GiB"));
            }
            let vg_name = self.vg_name.clone().unwrap_or_else(|| self.name.clone());
            validate_name("volume group", &vg_name)?;
            PoolKind::Logical { source_devs: self.source_devs.clone(), vg_name, extent_size }
        } else {
            let Some(target) = self.target.clone() else {
                return Err(invalid("a dir pool needs --target"));
            };
            if !target.is_absolute() {
                return Err(invalid("the target must be an absolute path"));
            }
            PoolKind::Dir { target }
        };
        let uuid = match self.uuid {
            Some(u) => u,
            None => new_uuid().map_err(|source| PoolError::Io {
                op: "read random bytes from",
                path: "/dev/urandom".into(),
                source,
            })?,
        };
        Ok(PoolDef { name: self.name, uuid, kind })
    }
}

/// Checks a pool, volume group or volume name: 1..=200 bytes of `[A-Za-z0-9_.+-]`, not
/// starting with `.` or `-` (so it can never be a hidden temporary file or an option).
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| Err(PoolError::InvalidName { what, name: name.to_string(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 200 {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it starts with '.' or '-'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b)) {
        return bad("only letters, digits and _ . + - are allowed");
    }
    Ok(())
}

/// A random (version 4) UUID in its text form.
pub(crate) fn new_uuid() -> std::io::Result<String> {
    let b = random_bytes::<16>()?;
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

/// `N` bytes from the kernel's random source.
pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}
