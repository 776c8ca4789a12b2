//! libvirt domain XML, the subset hv honours, read into a [`DomainDef`] and written back.
//!
//! The XML is first read into plain serde structs that mirror libvirt's schema, each with
//! `deny_unknown_fields`, so an element or attribute hv does not know is an error naming it
//! (never silently dropped); then each value is checked and turned into the typed definition.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    random_mac, DefError, DiskDef, DiskFormat, DiskSource, DomainDef, InterfaceDef,
    InterfaceSource, LifecycleAction, OsDef, SerialDef,
};

/// The largest domain XML accepted (libvirt's own limit for a definition file is 10 MiB).
pub const MAX_XML_LEN: usize = 1 << 20;

/// Errors reading domain XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// Not well-formed XML, or an element/attribute outside what hv supports.
    #[error("domain XML: {0}")]
    Syntax(String),
    /// Well-formed, but a value hv cannot honour.
    #[error("domain XML: {0}")]
    Def(#[from] DefError),
    /// Larger than [`MAX_XML_LEN`].
    #[error("domain XML is {0} bytes, more than the 1 MiB allowed")]
    TooLarge(usize),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "domain", deny_unknown_fields)]
struct XDomain {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(rename = "@id", default, skip_serializing)]
    _id: Option<String>,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    memory: XAmount,
    #[serde(rename = "currentMemory", default, skip_serializing_if = "Option::is_none")]
    current_memory: Option<XAmount>,
    vcpu: XVcpu,
    os: XOs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    features: Option<XFeatures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clock: Option<XClock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_poweroff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_reboot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_crash: Option<String>,
    #[serde(default)]
    devices: XDevices,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XAmount {
    #[serde(rename = "@unit", default, skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    #[serde(rename = "$text")]
    value: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XVcpu {
    #[serde(rename = "@placement", default, skip_serializing_if = "Option::is_none")]
    placement: Option<String>,
    #[serde(rename = "$text")]
    value: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XOs {
    #[serde(rename = "type")]
    kind: XOsType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XOsType {
    #[serde(rename = "@arch", default, skip_serializing_if = "Option::is_none")]
    arch: Option<String>,
    #[serde(rename = "@machine", default, skip_serializing_if = "Option::is_none")]
    machine: Option<String>,
    #[serde(rename = "$text")]
    value: String,
}

/// An element with no content and no attributes (`<acpi/>`, `<readonly/>`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XEmpty {}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acpi: Option<XEmpty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    apic: Option<XEmpty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pae: Option<XEmpty>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XClock {
    #[serde(rename = "@offset")]
    offset: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XDevices {
    #[serde(rename = "disk", default, skip_serializing_if = "Vec::is_empty")]
    disks: Vec<XDisk>,
    #[serde(rename = "interface", default, skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<XInterface>,
    #[serde(rename = "serial", default, skip_serializing_if = "Vec::is_empty")]
    serials: Vec<XChar>,
    #[serde(rename = "console", default, skip_serializing_if = "Vec::is_empty")]
    consoles: Vec<XChar>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XDisk {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(rename = "@device", default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    driver: Option<XDriver>,
    source: Option<XDiskSource>,
    /// libvirt's `<backingStore>` on input: accepted and ignored, as libvirt does for a
    /// definition (the chain comes from the image headers); skipped without recursion.
    #[serde(rename = "backingStore", default, skip_serializing)]
    _backing_in: Option<serde::de::IgnoredAny>,
    /// The chain as `dumpxml` shows it.
    #[serde(rename = "backingStore", skip_deserializing, skip_serializing_if = "Option::is_none")]
    backing_out: Option<XBackingStore>,
    target: XDiskTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readonly: Option<XEmpty>,
}

/// One layer of a disk's backing chain in libvirt's form; all fields empty is the closing
/// `<backingStore/>`.
#[derive(Debug, Default, Serialize)]
struct XBackingStore {
    #[serde(rename = "@type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(rename = "@index", skip_serializing_if = "Option::is_none")]
    index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<XFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<XDiskSource>,
    #[serde(rename = "backingStore", skip_serializing_if = "Option::is_none")]
    next: Option<Box<XBackingStore>>,
}

#[derive(Debug, Serialize)]
struct XFormat {
    #[serde(rename = "@type")]
    kind: String,
}

/// One backing layer below a disk's image, as [`DomainDef::to_xml_with`] shows it: the file
/// and its format (when the image above states one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingLayer {
    /// The backing file.
    pub path: PathBuf,
    /// Its format as the layer above names it (`raw`, `qcow2`), if it does.
    pub format: Option<String>,
}

/// libvirt's nested `<backingStore>` for `chain` (top first), closed by an empty one.
fn backing_store(chain: &[BackingLayer]) -> XBackingStore {
    let mut node = XBackingStore::default();
    for (i, layer) in chain.iter().enumerate().rev() {
        node = XBackingStore {
            kind: Some("file".into()),
            index: Some((i + 1).to_string()),
            format: layer.format.clone().map(|kind| XFormat { kind }),
            source: Some(XDiskSource {
                file: Some(layer.path.display().to_string()),
                pool: None,
                volume: None,
            }),
            next: Some(Box::new(node)),
        };
    }
    node
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XDriver {
    #[serde(rename = "@name", default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XDiskSource {
    #[serde(rename = "@file", default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(rename = "@pool", default, skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(rename = "@volume", default, skip_serializing_if = "Option::is_none")]
    volume: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XDiskTarget {
    #[serde(rename = "@dev")]
    dev: String,
    #[serde(rename = "@bus", default, skip_serializing_if = "Option::is_none")]
    bus: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XInterface {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<XMac>,
    source: XIfaceSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<XModel>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XMac {
    #[serde(rename = "@address")]
    address: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XIfaceSource {
    #[serde(rename = "@network", default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(rename = "@bridge", default, skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XModel {
    #[serde(rename = "@type")]
    kind: String,
}

/// `<serial>` and `<console>` share a shape.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XChar {
    #[serde(rename = "@type")]
    kind: String,
    /// A running domain's pty, on `<console>` (libvirt writes it; ignored when read).
    #[serde(rename = "@tty", default, skip_serializing_if = "Option::is_none")]
    tty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<XCharSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<XCharTarget>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XCharSource {
    #[serde(rename = "@path")]
    path: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct XCharTarget {
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(rename = "@port", default, skip_serializing_if = "Option::is_none")]
    port: Option<String>,
}

fn unsupported(what: &'static str, value: &str, supported: &'static str) -> DefError {
    DefError::Unsupported { what, value: value.to_string(), supported }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> DefError {
    DefError::Invalid { what, value: value.to_string(), reason }
}

/// A libvirt scaled integer (`<memory unit='MiB'>64</memory>`) in KiB; libvirt's default
/// unit is KiB, and its unit names: `b`/`bytes`, `KB` (1000), `k`/`KiB` (1024), and so on.
fn amount_kib(what: &'static str, a: &XAmount) -> Result<u64, DefError> {
    let text = a.value.trim();
    let n: u64 = text.parse().map_err(|_| invalid(what, text, "not a whole number"))?;
    let unit = a.unit.as_deref().unwrap_or("KiB");
    let bytes_per: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "m" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "g" | "GiB" => 1 << 30,
        "TB" => 1000u64.pow(4),
        "T" | "t" | "TiB" => 1 << 40,
        other => {
            return Err(unsupported("memory unit", other, "b, KB, KiB, MB, MiB, GB, GiB, TB, TiB"))
        }
    };
    let bytes = n.checked_mul(bytes_per).ok_or_else(|| invalid(what, text, "too large"))?;
    // libvirt rounds up to whole KiB.
    Ok(bytes.div_ceil(1024))
}

fn lifecycle(
    what: &'static str,
    v: Option<&str>,
    default: LifecycleAction,
) -> Result<LifecycleAction, DefError> {
    match v.map(str::trim) {
        None => Ok(default),
        Some("destroy") => Ok(LifecycleAction::Destroy),
        Some("restart") => Ok(LifecycleAction::Restart),
        Some("preserve") => Ok(LifecycleAction::Preserve),
        Some(other) => Err(unsupported(what, other, "destroy, restart, preserve")),
    }
}

fn disk_format(v: Option<&XDriver>) -> Result<Option<DiskFormat>, DefError> {
    let Some(d) = v else { return Ok(None) };
    if let Some(name) = d.name.as_deref() {
        if name != "qemu" && name != "hv" {
            return Err(unsupported("disk driver name", name, "qemu (libvirt's name) or hv"));
        }
    }
    match d.kind.as_deref() {
        None => Ok(None),
        Some("raw") => Ok(Some(DiskFormat::Raw)),
        Some("qcow2") => Ok(Some(DiskFormat::Qcow2)),
        Some(other) => Err(unsupported("disk driver type", other, "raw, qcow2")),
    }
}

fn disk(x: &XDisk) -> Result<DiskDef, DefError> {
    if let Some(dev) = x.device.as_deref() {
        if dev != "disk" {
            return Err(unsupported("disk device", dev, "disk"));
        }
    }
    match x.target.bus.as_deref() {
        None | Some("virtio") => {}
        Some(other) => return Err(unsupported("disk target bus", other, "virtio")),
    }
    let format = disk_format(x.driver.as_ref())?;
    let src = x.source.as_ref().ok_or(DefError::Missing("disk source"))?;
    let source = match x.kind.as_str() {
        "file" | "block" => {
            if src.pool.is_some() || src.volume.is_some() {
                return Err(invalid(
                    "disk source",
                    x.kind.as_str(),
                    "a file disk takes source file=, not pool/volume",
                ));
            }
            let path = src.file.as_deref().ok_or(DefError::Missing("disk source file"))?;
            DiskSource::File {
                path: PathBuf::from(path),
                format: format.unwrap_or(DiskFormat::Raw),
            }
        }
        "volume" => {
            if src.file.is_some() {
                return Err(invalid(
                    "disk source",
                    "volume",
                    "a volume disk takes source pool= volume=, not file=",
                ));
            }
            let pool = src.pool.clone().ok_or(DefError::Missing("disk source pool"))?;
            let volume = src.volume.clone().ok_or(DefError::Missing("disk source volume"))?;
            DiskSource::Volume { pool, volume, format }
        }
        other => return Err(unsupported("disk type", other, "file, block, volume")),
    };
    Ok(DiskDef { source, target: x.target.dev.clone(), read_only: x.readonly.is_some() })
}

fn interface(x: &XInterface) -> Result<InterfaceDef, DefError> {
    if let Some(m) = &x.model {
        if m.kind != "virtio" {
            return Err(unsupported("interface model", &m.kind, "virtio"));
        }
    }
    let source = match x.kind.as_str() {
        "network" => InterfaceSource::Network(
            x.source.network.clone().ok_or(DefError::Missing("interface source network"))?,
        ),
        "bridge" => InterfaceSource::Bridge(
            x.source.bridge.clone().ok_or(DefError::Missing("interface source bridge"))?,
        ),
        other => return Err(unsupported("interface type", other, "network, bridge")),
    };
    let mac = match &x.mac {
        Some(m) => m
            .address
            .parse()
            .map_err(|_| invalid("interface mac address", &m.address, "six hex octets"))?,
        None => random_mac(),
    };
    Ok(InterfaceDef { source, mac })
}

fn char_dev(what: &'static str, x: &XChar) -> Result<SerialDef, DefError> {
    if let Some(t) = &x.target {
        if let Some(port) = t.port.as_deref() {
            if port != "0" {
                return Err(unsupported("serial target port", port, "0 (COM1)"));
            }
        }
        if let Some(kind) = t.kind.as_deref() {
            if kind != "serial" && kind != "isa-serial" {
                return Err(unsupported("console target type", kind, "serial"));
            }
        }
    }
    match x.kind.as_str() {
        "pty" => Ok(SerialDef::Pty),
        "file" => {
            let src = x.source.as_ref().ok_or(DefError::Missing("serial source path"))?;
            Ok(SerialDef::File(PathBuf::from(&src.path)))
        }
        "null" => Ok(SerialDef::None),
        other => Err(unsupported(what, other, "file, pty, null")),
    }
}

impl DomainDef {
    /// Reads a domain definition from libvirt domain XML.
    ///
    /// Elements and attributes outside the supported subset are errors that name them. A
    /// missing `<uuid>` is generated, a missing interface `<mac>` is generated in libvirt's
    /// `52:54:00` range, a file disk without `<driver type>` is raw (never probed).
    pub fn from_xml(text: &str) -> Result<DomainDef, XmlError> {
        if text.len() > MAX_XML_LEN {
            return Err(XmlError::TooLarge(text.len()));
        }
        let x: XDomain =
            quick_xml::de::from_str(text).map_err(|e| XmlError::Syntax(e.to_string()))?;
        Ok(Self::from_raw(x)?)
    }

    fn from_raw(x: XDomain) -> Result<DomainDef, DefError> {
        if x.kind != "kvm" && x.kind != "hv" {
            return Err(unsupported("domain type", &x.kind, "kvm (or hv)"));
        }
        let name = x.name.trim().parse()?;
        let uuid = match x.uuid.as_deref().map(str::trim) {
            Some(u) => Uuid::parse_str(u).map_err(|_| invalid("uuid", u, "not a UUID"))?,
            None => Uuid::new_v4(),
        };
        let memory_kib = amount_kib("memory", &x.memory)?;
        if let Some(cur) = &x.current_memory {
            if amount_kib("currentMemory", cur)? != memory_kib {
                return Err(unsupported(
                    "currentMemory",
                    cur.value.trim(),
                    "currentMemory equal to memory (no balloon)",
                ));
            }
        }
        if let Some(p) = x.vcpu.placement.as_deref() {
            if p != "static" {
                return Err(unsupported("vcpu placement", p, "static"));
            }
        }
        let vcpus = x
            .vcpu
            .value
            .trim()
            .parse()
            .map_err(|_| invalid("vcpu", x.vcpu.value.trim(), "not a number"))?;
        if x.os.kind.value.trim() != "hvm" {
            return Err(unsupported("os type", x.os.kind.value.trim(), "hvm"));
        }
        if let Some(arch) = x.os.kind.arch.as_deref() {
            if arch != "x86_64" {
                return Err(unsupported("os type arch", arch, "x86_64"));
            }
        }
        let kernel =
            x.os.kernel
                .as_deref()
                .ok_or(DefError::Missing("os/kernel (hv boots kernels directly)"))?;
        let os = OsDef {
            kernel: PathBuf::from(kernel.trim()),
            initrd: x.os.initrd.as_deref().map(|s| PathBuf::from(s.trim())),
            cmdline: x.os.cmdline.clone(),
        };
        if let Some(c) = &x.clock {
            if c.offset != "utc" {
                return Err(unsupported("clock offset", &c.offset, "utc"));
            }
        }
        let disks = x.devices.disks.iter().map(disk).collect::<Result<Vec<_>, _>>()?;
        let interfaces =
            x.devices.interfaces.iter().map(interface).collect::<Result<Vec<_>, _>>()?;
        if x.devices.serials.len() > 1 {
            return Err(unsupported("serial", "more than one", "one serial port (COM1)"));
        }
        let mut serial = match x.devices.serials.first() {
            Some(s) => char_dev("serial type", s)?,
            None => SerialDef::None,
        };
        match x.devices.consoles.as_slice() {
            [] => {}
            [c] => {
                let console = char_dev("console type", c)?;
                if x.devices.serials.is_empty() {
                    serial = console;
                } else if console != serial {
                    return Err(invalid(
                        "console",
                        &c.kind,
                        "must be the same device as the serial port",
                    ));
                }
            }
            _ => {
                return Err(unsupported(
                    "console",
                    "more than one",
                    "one console on the serial port",
                ))
            }
        }
        let def = DomainDef {
            name,
            uuid,
            description: x.description.clone(),
            memory_kib,
            vcpus,
            os,
            disks,
            interfaces,
            serial,
            on_poweroff: lifecycle(
                "on_poweroff",
                x.on_poweroff.as_deref(),
                LifecycleAction::Destroy,
            )?,
            on_reboot: lifecycle("on_reboot", x.on_reboot.as_deref(), LifecycleAction::Restart)?,
            on_crash: lifecycle("on_crash", x.on_crash.as_deref(), LifecycleAction::Destroy)?,
        };
        def.validate()?;
        Ok(def)
    }

    /// Writes the definition as libvirt domain XML, in the form [`DomainDef::from_xml`] reads.
    pub fn to_xml(&self) -> String {
        self.to_xml_live(None)
    }

    /// [`to_xml`](Self::to_xml) for a running domain whose serial port is the pty `pty`: as
    /// libvirt writes it, the serial and a console naming it (`<source path='/dev/pts/N'/>`).
    pub fn to_xml_live(&self, pty: Option<&Path>) -> String {
        self.to_xml_with(pty, &[])
    }

    /// [`to_xml_live`](Self::to_xml_live) with each disk's backing chain (`chains[i]` for disk
    /// `i`, top layer first) shown as libvirt's nested `<backingStore>` elements.
    pub fn to_xml_with(&self, pty: Option<&Path>, chains: &[Vec<BackingLayer>]) -> String {
        let mut x = self.to_raw();
        for (disk, chain) in x.devices.disks.iter_mut().zip(chains) {
            if !chain.is_empty() {
                disk.backing_out = Some(backing_store(chain));
            }
        }
        if let (Some(pty), SerialDef::Pty) = (pty, &self.serial) {
            let path = pty.display().to_string();
            let source = || Some(XCharSource { path: path.clone() });
            x.devices.serials = vec![XChar {
                kind: "pty".into(),
                tty: None,
                source: source(),
                target: Some(XCharTarget { kind: None, port: Some("0".into()) }),
            }];
            x.devices.consoles = vec![XChar {
                kind: "pty".into(),
                tty: Some(path.clone()),
                source: source(),
                target: Some(XCharTarget { kind: Some("serial".into()), port: Some("0".into()) }),
            }];
        }
        let mut out = String::new();
        let mut ser = quick_xml::se::Serializer::new(&mut out);
        ser.indent(' ', 2);
        // The raw structs hold only strings and options of them, which always serialise.
        if let Err(e) = x.serialize(ser) {
            unreachable!("domain XML serialisation cannot fail: {e}");
        }
        out.push('\n');
        out
    }

    fn to_raw(&self) -> XDomain {
        let disks = self
            .disks
            .iter()
            .map(|d| {
                let (kind, format, source) = match &d.source {
                    DiskSource::File { path, format } => (
                        "file",
                        Some(*format),
                        XDiskSource {
                            file: Some(path.display().to_string()),
                            pool: None,
                            volume: None,
                        },
                    ),
                    DiskSource::Volume { pool, volume, format } => (
                        "volume",
                        *format,
                        XDiskSource {
                            file: None,
                            pool: Some(pool.clone()),
                            volume: Some(volume.clone()),
                        },
                    ),
                };
                XDisk {
                    kind: kind.into(),
                    device: Some("disk".into()),
                    driver: Some(XDriver {
                        name: Some("qemu".into()),
                        kind: format.map(|f| f.as_str().into()),
                    }),
                    source: Some(source),
                    _backing_in: None,
                    backing_out: None,
                    target: XDiskTarget { dev: d.target.clone(), bus: Some("virtio".into()) },
                    readonly: d.read_only.then(XEmpty::default),
                }
            })
            .collect();
        let interfaces = self
            .interfaces
            .iter()
            .map(|i| {
                let (kind, source) = match &i.source {
                    InterfaceSource::Network(n) => {
                        ("network", XIfaceSource { network: Some(n.clone()), bridge: None })
                    }
                    InterfaceSource::Bridge(b) => {
                        ("bridge", XIfaceSource { network: None, bridge: Some(b.clone()) })
                    }
                };
                XInterface {
                    kind: kind.into(),
                    mac: Some(XMac { address: i.mac.to_string() }),
                    source,
                    model: Some(XModel { kind: "virtio".into() }),
                }
            })
            .collect();
        let serials = match &self.serial {
            SerialDef::None => vec![],
            SerialDef::Pty => vec![XChar {
                kind: "pty".into(),
                tty: None,
                source: None,
                target: Some(XCharTarget { kind: None, port: Some("0".into()) }),
            }],
            SerialDef::File(p) => vec![XChar {
                kind: "file".into(),
                tty: None,
                source: Some(XCharSource { path: p.display().to_string() }),
                target: Some(XCharTarget { kind: None, port: Some("0".into()) }),
            }],
        };
        XDomain {
            kind: "kvm".into(),
            _id: None,
            name: self.name.to_string(),
            uuid: Some(self.uuid.to_string()),
            description: self.description.clone(),
            memory: XAmount { unit: Some("KiB".into()), value: self.memory_kib.to_string() },
            current_memory: Some(XAmount {
                unit: Some("KiB".into()),
                value: self.memory_kib.to_string(),
            }),
            vcpu: XVcpu { placement: Some("static".into()), value: self.vcpus.to_string() },
            os: XOs {
                kind: XOsType { arch: Some("x86_64".into()), machine: None, value: "hvm".into() },
                kernel: Some(self.os.kernel.display().to_string()),
                initrd: self.os.initrd.as_ref().map(|p| p.display().to_string()),
                cmdline: self.os.cmdline.clone(),
            },
            // hv machines always have ACPI and an APIC; say so as libvirt does.
            features: Some(XFeatures { acpi: Some(XEmpty {}), apic: Some(XEmpty {}), pae: None }),
            clock: Some(XClock { offset: "utc".into() }),
            on_poweroff: Some(self.on_poweroff.as_str().into()),
            on_reboot: Some(self.on_reboot.as_str().into()),
            on_crash: Some(self.on_crash.as_str().into()),
            devices: XDevices { disks, interfaces, serials, consoles: vec![] },
        }
    }
}

#[cfg(test)]
mod tests;
