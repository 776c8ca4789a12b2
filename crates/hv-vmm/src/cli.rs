//! Cloud Hypervisor's command-line option strings (`size=64M,shared=on`, `path=P,readonly=on`)
//! parsed into the same [`config`](crate::config) types the API takes, so `hv-vmm --disk ...`
//! and a `vm.create` body describe a VM the same way.

use std::path::PathBuf;

use hv_core::seccomp::SeccompMode;

use crate::api::RestoreConfig;
use crate::config::{
    ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, DiskSegment, ImageType, MemoryConfig,
    NetConfig,
};

/// A bad option string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag} {value}: {reason}")]
pub struct OptionError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// The string given.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// `key=value` pairs of one option string, each key checked against `known`.
struct Options<'a> {
    flag: &'static str,
    value: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Options<'a> {
    fn parse(flag: &'static str, value: &'a str, known: &[&str]) -> Result<Self, OptionError> {
        let mut o = Options { flag, value, pairs: Vec::new() };
        for part in value.split(',').filter(|p| !p.is_empty()) {
            let (k, v) =
                part.split_once('=').ok_or_else(|| o.err(format!("{part:?} is not key=value")))?;
            if !known.contains(&k) {
                return Err(o.err(format!("unknown option {k:?} (known: {})", known.join(", "))));
            }
            if o.pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(o.err(format!("{k} given twice")));
            }
            o.pairs.push((k, v));
        }
        Ok(o)
    }

    fn err(&self, reason: impl Into<String>) -> OptionError {
        OptionError { flag: self.flag, value: self.value.into(), reason: reason.into() }
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some("on" | "true") => Ok(Some(true)),
            Some("off" | "false") => Ok(Some(false)),
            Some(v) => Err(self.err(format!("{key}={v}: want on or off"))),
        }
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|v| v.parse().map_err(|_| self.err(format!("{key}={v} is not a number"))))
            .transpose()
    }

    fn size(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.get(key)
            .map(|v| {
                parse_size(v).ok_or_else(|| self.err(format!("{key}={v} is not a size like 64M")))
            })
            .transpose()
    }
}

/// A byte count with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `--cpus boot=N[,max=M]`.
pub fn parse_cpus(s: &str) -> Result<CpusConfig, OptionError> {
    let o = Options::parse("cpus", s, &["boot", "max"])?;
    let boot = o.num("boot")?.unwrap_or(1);
    Ok(CpusConfig {
        boot_vcpus: boot,
        max_vcpus: o.num("max")?.unwrap_or(boot),
        ..Default::default()
    })
}

/// `--memory size=64M[,shared=on][,hugepages=on][,hugepage_size=2M][,mergeable=on][,thp=off]`.
pub fn parse_memory(s: &str) -> Result<MemoryConfig, OptionError> {
    let o = Options::parse(
        "memory",
        s,
        &["size", "shared", "hugepages", "hugepage_size", "mergeable", "thp"],
    )?;
    let d = MemoryConfig::default();
    Ok(MemoryConfig {
        size: o.size("size")?.unwrap_or(d.size),
        shared: o.bool("shared")?.unwrap_or(false),
        hugepages: o.bool("hugepages")?.unwrap_or(false),
        hugepage_size: o.size("hugepage_size")?,
        mergeable: o.bool("mergeable")?.unwrap_or(false),
        thp: o.bool("thp")?.unwrap_or(d.thp),
        ..d
    })
}

/// `--disk path=P[,readonly=on][,direct=on][,image_type=raw|qcow2][,backing_files=on][,id=I][,serial=S][,num_queues=N][,segments=PV:OFFSET:LENGTH;...]`.
///
/// `segments` is hv's extension for a logical volume ([`DiskConfig::segments`]): its extents
/// in order, `;` between them, each a physical volume's path, a byte offset in it and a
/// length (the last two split off at the path's last colons, so the path itself may hold
/// colons but not `,` or `;`).
pub fn parse_disk(s: &str) -> Result<DiskConfig, OptionError> {
    let o = Options::parse(
        "disk",
        s,
        &[
            "path",
            "readonly",
            "direct",
            "image_type",
            "backing_files",
            "id",
            "serial",
            "num_queues",
            "queue_size",
            "segments",
        ],
    )?;
    let segments = o.get("segments").map(|v| parse_segments(&o, v)).transpose()?;
    let image_type = match o.get("image_type") {
        None | Some("raw") => ImageType::Raw,
        Some("qcow2") => ImageType::Qcow2,
        Some(v) => return Err(o.err(format!("image_type={v}: raw or qcow2"))),
    };
    Ok(DiskConfig {
        path: Some(PathBuf::from(o.get("path").ok_or_else(|| o.err("path= is required"))?)),
        readonly: o.bool("readonly")?.unwrap_or(false),
        direct: o.bool("direct")?.unwrap_or(false),
        image_type,
        backing_files: o.bool("backing_files")?.unwrap_or(false),
        num_queues: o.num("num_queues")?,
        queue_size: o.num("queue_size")?,
        id: o.get("id").map(Into::into),
        serial: o.get("serial").map(Into::into),
        segments,
        ..Default::default()
    })
}

/// `PV:OFFSET:LENGTH;...` of `--disk segments=`.
fn parse_segments(o: &Options<'_>, v: &str) -> Result<Vec<DiskSegment>, OptionError> {
    v.split(';')
        .map(|part| {
            let mut it = part.rsplitn(3, ':');
            let (Some(len), Some(off), Some(path)) = (it.next(), it.next(), it.next()) else {
                return Err(o.err(format!("segment {part:?} is not PV:OFFSET:LENGTH")));
            };
            let num = |n: &str| {
                n.parse::<u64>()
                    .map_err(|_| o.err(format!("segment {part:?}: {n:?} is not a byte count")))
            };
            Ok(DiskSegment { path: PathBuf::from(path), offset: num(off)?, length: num(len)? })
        })
        .collect()
}

/// `--net tap=T[,mac=M][,num_queues=N][,id=I]`.
pub fn parse_net(s: &str) -> Result<NetConfig, OptionError> {
    let o = Options::parse("net", s, &["tap", "mac", "num_queues", "queue_size", "id"])?;
    Ok(NetConfig {
        tap: Some(o.get("tap").ok_or_else(|| o.err("tap= is required"))?.into()),
        mac: o.get("mac").map(Into::into),
        num_queues: o.num("num_queues")?,
        queue_size: o.num("queue_size")?,
        id: o.get("id").map(Into::into),
        ..Default::default()
    })
}

/// `--serial off|null|pty|tty|file=F|socket=S` (and `--console off`), Cloud Hypervisor's forms.
pub fn parse_console(flag: &'static str, s: &str) -> Result<ConsoleConfig, OptionError> {
    let err = |reason: &str| OptionError { flag, value: s.into(), reason: reason.into() };
    Ok(match s {
        "off" => ConsoleConfig::mode(ConsoleMode::Off),
        "null" => ConsoleConfig::mode(ConsoleMode::Null),
        "tty" => ConsoleConfig::mode(ConsoleMode::Tty),
        "pty" => ConsoleConfig::mode(ConsoleMode::Pty),
        _ => match s.split_once('=') {
            Some(("file", f)) if !f.is_empty() => {
                ConsoleConfig { file: Some(f.into()), ..ConsoleConfig::mode(ConsoleMode::File) }
            }
            Some(("socket", f)) if !f.is_empty() => {
                ConsoleConfig { socket: Some(f.into()), ..ConsoleConfig::mode(ConsoleMode::Socket) }
            }
            _ => return Err(err("want off, null, pty, tty, file=PATH or socket=PATH")),
        },
    })
}

/// `--api-socket path=S`, or a bare path.
pub fn parse_api_socket(s: &str) -> Result<PathBuf, OptionError> {
    if !s.contains('=') {
        return Ok(PathBuf::from(s));
    }
    let o = Options::parse("api-socket", s, &["path"])?;
    Ok(PathBuf::from(o.get("path").ok_or_else(|| o.err("path= is required"))?))
}

/// `--seccomp true|false|log`, as Cloud Hypervisor spells it: confine every thread of the
/// process (`true`, the default: a forbidden call fails and ends the VM as crashed), no
/// filters (`false`, for debugging), or filters that let forbidden calls through and have the
/// kernel log them (`log`).
pub fn parse_seccomp(s: &str) -> Result<SeccompMode, OptionError> {
    match s {
        "true" => Ok(SeccompMode::Trap),
        "false" => Ok(SeccompMode::Off),
        "log" => Ok(SeccompMode::Log),
        _ => Err(OptionError {
            flag: "seccomp",
            value: s.into(),
            reason: "want true, false or log".into(),
        }),
    }
}

/// `--restore source_url=file:///DIR[,prefault=on][,resume=on]`: the directory must parse.
pub fn parse_restore(s: &str) -> Result<RestoreConfig, OptionError> {
    let o = Options::parse("restore", s, &["source_url", "prefault", "resume"])?;
    let url = o.get("source_url").ok_or_else(|| o.err("source_url= is required"))?;
    crate::urls::snapshot_dir(url).map_err(|e| o.err(e.to_string()))?;
    Ok(RestoreConfig {
        source_url: url.into(),
        prefault: o.bool("prefault")?,
        resume: o.bool("resume")?,
        memory_restore_mode: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloud_hypervisor_option_strings() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        let r = parse_restore("source_url=file:///s,prefault=on").unwrap();
        assert_eq!((r.source_url.as_str(), r.prefault, r.resume), ("file:///s", Some(true), None));
        assert!(parse_restore("source_url=/s").is_err());
        assert!(parse_restore("prefault=on").is_err());
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999G"), None);
        let m = parse_memory("size=64M,shared=on,mergeable=on").unwrap();
        assert_eq!(
            (m.size, m.shared, m.mergeable, m.hugepages, m.thp),
            (64 << 20, true, true, false, true)
        );
        assert_eq!(parse_cpus("boot=2").unwrap().max_vcpus, 2);
        let d = parse_disk("path=/a.qcow2,readonly=on,image_type=qcow2").unwrap();
        assert_eq!((d.readonly, d.image_type), (true, ImageType::Qcow2));
        assert_eq!(parse_disk("path=/a").unwrap().image_type, ImageType::Raw);
        assert!(!parse_disk("path=/a.qcow2,image_type=qcow2").unwrap().backing_files);
        assert!(
            parse_disk("path=/a.qcow2,image_type=qcow2,backing_files=on").unwrap().backing_files
        );
        let lv = parse_disk("path=/dev/vg/lv,segments=/pv:a:1048576:4096;/pv2:0:512").unwrap();
        let segs = lv.segments.unwrap();
        assert_eq!(segs[0], DiskSegment { path: "/pv:a".into(), offset: 1048576, length: 4096 });
        assert_eq!(segs[1], DiskSegment { path: "/pv2".into(), offset: 0, length: 512 });
        let n = parse_net("tap=t0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(n.tap.as_deref(), Some("t0"));
        assert_eq!(parse_console("serial", "file=/x").unwrap().file, Some("/x".into()));
        assert_eq!(parse_api_socket("/s").unwrap(), PathBuf::from("/s"));
        assert_eq!(parse_api_socket("path=/s").unwrap(), PathBuf::from("/s"));
        assert_eq!(parse_seccomp("true").unwrap(), SeccompMode::Trap);
        assert_eq!(parse_seccomp("false").unwrap(), SeccompMode::Off);
        assert_eq!(parse_seccomp("log").unwrap(), SeccompMode::Log);
        assert!(parse_seccomp("trap").is_err());
        for (f, bad) in [
            (parse_disk as fn(&str) -> Result<DiskConfig, OptionError>, "readonly=on"),
            (parse_disk, "path=/a,image_type=vmdk"),
            (parse_disk, "path=/a,readonly=maybe"),
            (parse_disk, "path=/a,path=/b"),
            (parse_disk, "path=/a,bogus=1"),
            (parse_disk, "path=/a,segments=/p:0"),
            (parse_disk, "path=/a,segments=/p:x:1"),
            (parse_disk, "path=/a,segments=/p:0:1;"),
        ] {
            assert!(f(bad).is_err(), "{bad}");
        }
        assert!(parse_memory("size=lots").is_err());
        assert!(parse_net("mac=52:54:00:00:00:01").is_err());
        assert_eq!(parse_console("serial", "pty").unwrap().mode, ConsoleMode::Pty);
        let s = parse_console("serial", "socket=/s").unwrap();
        assert_eq!((s.mode, s.socket), (ConsoleMode::Socket, Some("/s".into())));
        assert!(parse_console("serial", "socket=").is_err());
        assert!(parse_console("serial", "ptyx").is_err());
        assert!(parse_cpus("boot=x").is_err());
    }
}
