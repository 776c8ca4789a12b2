//! Volume types: formats, the creation spec and its builder, volume info.

use std::path::PathBuf;
use std::str::FromStr;

use super::def::validate_name;
use super::error::{PoolError, Result};

pub use crate::format::VolFormat;

impl FromStr for VolFormat {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(VolFormat::Raw),
            "qcow2" => Ok(VolFormat::Qcow2),
            _ => Err(PoolError::Invalid {
                name: s.to_string(),
                reason: "unknown volume format (raw or qcow2)".into(),
            }),
        }
    }
}

/// What to create: validated by [`VolumeSpecBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The volume name (the file name in a dir pool).
    pub name: String,
    /// The format.
    pub format: VolFormat,
    /// Virtual size in bytes; `None` with a backing volume means "the backing volume's size".
    pub capacity: Option<u64>,
    /// A volume of the same pool to back this one: a qcow2 overlay in a dir pool, a snapshot in
    /// a logical pool.
    pub backing: Option<String>,
    /// The backing volume's format, if the caller states it; it must match what is probed.
    pub backing_format: Option<VolFormat>,
}

impl VolumeSpec {
    /// Starts a spec for volume `name` (raw, no backing volume).
    ///
    /// ```
    /// use hv_storage::pool::{VolFormat, VolumeSpec};
    /// let spec = VolumeSpec::builder("disk0").format(VolFormat::Qcow2).capacity(1 << 30).build().unwrap();
    /// assert_eq!(spec.capacity, Some(1 << 30));
    /// assert!(VolumeSpec::builder("no-size").build().is_err());
    /// ```
    pub fn builder(name: impl Into<String>) -> VolumeSpecBuilder {
        VolumeSpecBuilder {
            name: name.into(),
            format: VolFormat::Raw,
            capacity: None,
            backing: None,
            backing_format: None,
        }
    }
}

/// Builds a [`VolumeSpec`].
#[derive(Debug, Clone)]
pub struct VolumeSpecBuilder {
    name: String,
    format: VolFormat,
    capacity: Option<u64>,
    backing: Option<String>,
    backing_format: Option<VolFormat>,
}

impl VolumeSpecBuilder {
    /// Sets the format (default raw).
    pub fn format(mut self, format: VolFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the capacity in bytes.
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = Some(bytes);
        self
    }

    /// Backs the volume with another volume of the same pool.
    pub fn backing(mut self, volume: impl Into<String>) -> Self {
        self.backing = Some(volume.into());
        self
    }

    /// States the backing volume's format (checked against the probed one).
    pub fn backing_format(mut self, format: VolFormat) -> Self {
        self.backing_format = Some(format);
        self
    }

    /// Validates the spec.
    pub fn build(self) -> Result<VolumeSpec> {
        validate_name("volume", &self.name)?;
        let invalid =
            |reason: &str| PoolError::Invalid { name: self.name.clone(), reason: reason.into() };
        if let Some(b) = &self.backing {
            validate_name("volume", b)?;
            if *b == self.name {
                return Err(invalid("a volume cannot back itself"));
            }
        } else {
            if self.backing_format.is_some() {
                return Err(invalid("a backing format without a backing volume"));
            }
            match self.capacity {
                None => return Err(invalid("a capacity is needed")),
                Some(0) => return Err(invalid("the capacity must be above zero")),
                Some(_) => {}
            }
        }
        if self.capacity.is_some_and(|c| c > MAX_CAPACITY) {
            return Err(invalid("the capacity is above 64 PiB"));
        }
        Ok(VolumeSpec {
            name: self.name,
            format: self.format,
            capacity: self.capacity,
            backing: self.backing,
            backing_format: self.backing_format,
        })
    }
}

/// The largest capacity accepted (qcow2's practical limit is far above any real disk here).
pub const MAX_CAPACITY: u64 = 64 << 50;

/// What `vol-info` shows about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The name.
    pub name: String,
    /// The host file, if it has one (logical volumes have none: see `LogicalPool::lv_segments`).
    pub path: Option<PathBuf>,
    /// libvirt's key: the path for files, `VG/LV` for logical volumes.
    pub key: String,
    /// The probed format.
    pub format: VolFormat,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes actually used on the host (`st_blocks * 512` for files, extents for LVs).
    pub allocation: u64,
    /// The backing volume or file, if any (qcow2 backing file; a snapshot's origin).
    pub backing: Option<String>,
}

/// How to resize (virsh `vol-resize` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResizeFlags {
    /// Allow the new capacity to be smaller (`--shrink`): data past it is lost.
    pub allow_shrink: bool,
}

/// Progress of a long copy: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);
