//! nftables through the `nft` binary (Debian's `nftables` package) and its JSON API: rule sets
//! are built as data (the `nftables` crate's typed schema, [`rules`]) and fed to
//! `nft -j -f -`, which applies each batch as one atomic transaction. No rule is ever text, so
//! no name or address can change what a rule means.
//!
//! - [`network`]: the table a NAT or isolated network owns (masquerade, forwarding policy).
//! - [`port`]: port security for a guest port on a bridge (anti-spoofing, security groups;
//!   stateful through `br_netfilter` in an `inet` table of the port's own, [`port::brnf`],
//!   where the bridge family cannot track connections).
//!
//! Every table hv makes has a [`TableName`] `hv_...` built injectively from the network or
//! port name (distinct ports get distinct tables), and is replaced whole (add, delete, add
//! again with its chains and rules, in one transaction), so applying twice is the same as
//! applying once and a reader never sees a half-written table.

pub mod network;
pub mod port;
pub mod rules;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use rules::{ChainSpec, TableSpec};

/// Where `nft` is looked for, in order, after the `HV_NFT` environment variable.
const NFT_PATHS: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

/// Errors from nftables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// No `nft` binary: install Debian's `nftables` package.
    #[error("nft binary not found (looked at $HV_NFT, {}); install the nftables package", NFT_PATHS.join(", "))]
    NotFound,
    /// `nft` could not be run.
    #[error("run {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `nft` refused a script or command.
    #[error("nft {what}: {stderr}")]
    Failed {
        /// What was being done (`apply table inet hv_default`...).
        what: String,
        /// nft's error output.
        stderr: String,
    },
    /// A port-security specification that cannot be expressed (bad port range, multicast MAC...).
    #[error("invalid port security for {port}: {reason}")]
    Invalid {
        /// The port.
        port: String,
        /// What is wrong.
        reason: String,
    },
    /// An nftables feature the kernel lacks (e.g. conntrack in the bridge family).
    #[error("{0}")]
    Unsupported(#[from] crate::features::Unsupported),
    /// A table name hv would not make (see [`TableName`]).
    #[error("invalid nftables table name {0:?}: hv_ followed by at most 120 of a-z A-Z 0-9 _")]
    InvalidTable(String),
    /// A kernel setting nftables rules depend on could not be read or written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The setting's file under `/proc/sys`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection table could not be read or changed (ctnetlink).
    #[error("connection tracking: {0}")]
    Conntrack(#[source] crate::netlink::NetlinkError),
    /// `nft -j` printed something that is not the JSON it documents.
    #[error("nft {what}: unreadable JSON output: {source}")]
    Json {
        /// What was being done.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of an nftables operation.
pub type Result<T> = std::result::Result<T, NftError>;

/// An nftables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    Ip,
    /// IPv6.
    Ip6,
    /// IPv4 and IPv6.
    Inet,
    /// Ethernet bridges.
    Bridge,
    /// ARP.
    Arp,
    /// Ingress per device.
    Netdev,
}

impl Family {
    /// nft's keyword for the family.
    pub fn as_str(&self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
            Family::Bridge => "bridge",
            Family::Arp => "arp",
            Family::Netdev => "netdev",
        }
    }

    /// The family in the JSON schema.
    pub fn nf(self) -> NfFamily {
        match self {
            Family::Ip => NfFamily::IP,
            Family::Ip6 => NfFamily::IP6,
            Family::Inet => NfFamily::INet,
            Family::Bridge => NfFamily::Bridge,
            Family::Arp => NfFamily::ARP,
            Family::Netdev => NfFamily::NetDev,
        }
    }

    fn from_nf(f: NfFamily) -> Family {
        match f {
            NfFamily::IP => Family::Ip,
            NfFamily::IP6 => Family::Ip6,
            NfFamily::INet => Family::Inet,
            NfFamily::Bridge => Family::Bridge,
            NfFamily::ARP => Family::Arp,
            NfFamily::NetDev => Family::Netdev,
        }
    }
}

/// The name of a table hv owns: `hv_` and then only ASCII letters, digits and `_` (an nft
/// identifier, so it is safe even on an `nft list` command line), at most 123 bytes. Made by
/// [`network::table_name`], [`port::table_name`], or checked when read back from a state file.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName(String);

impl TableName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<TableName> {
        let ok = name.len() <= 123
            && name.len() > 3
            && name.starts_with("hv_")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(NftError::InvalidTable(name.to_string()));
        }
        Ok(TableName(name.to_string()))
    }

    /// `hv_` + `parts` joined: each part is an [`IfName::escaped`](crate::IfName::escaped)
    /// form or a fixed word of letters, digits and `_`.
    pub(crate) fn from_parts(parts: &[&str]) -> TableName {
        TableName(format!("hv_{}", parts.join("_")))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for TableName {
    type Err = NftError;
    fn from_str(s: &str) -> Result<Self> {
        TableName::new(s)
    }
}

impl PartialEq<&str> for TableName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for TableName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TableName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A handle on the `nft` binary. Child processes inherit the calling thread's network
/// namespace, so rules land where the caller's netlink sockets do.
#[derive(Debug, Clone)]
pub struct Nft {
    path: PathBuf,
}

impl Nft {
    /// Finds `nft` (`$HV_NFT`, then the usual sbin and bin directories).
    pub fn locate() -> Result<Nft> {
        if let Some(p) = std::env::var_os("HV_NFT") {
            let p = PathBuf::from(p);
            return if p.is_file() { Ok(Nft { path: p }) } else { Err(NftError::NotFound) };
        }
        NFT_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(|p| Nft { path: p.to_path_buf() })
            .ok_or(NftError::NotFound)
    }

    /// Uses the binary at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Nft {
        Nft { path: path.into() }
    }

    /// The binary in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn run(&self, what: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(&self.path)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn { path: self.path.clone(), source })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|source| NftError::Spawn { path: self.path.clone(), source })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NftError::Spawn { path: self.path.clone(), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().find(|l| l.contains("Error")).unwrap_or(stderr.trim());
            return Err(NftError::Failed {
                what: what.to_string(),
                stderr: first.trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a batch of commands atomically (`nft -j -f -`).
    pub fn apply(&self, what: &str, batch: &Nftables) -> Result<()> {
        let json = serde_json::to_string(batch)
            .map_err(|source| NftError::Json { what: what.to_string(), source })?;
        self.run(what, &["-j", "-f", "-"], Some(&json)).map(|_| ())
    }

    /// Every table in the namespace as `(family, name)` (`nft -j list tables`).
    pub fn tables(&self) -> Result<Vec<(Family, String)>> {
        let what = "list tables";
        let out = self.run(what, &["-j", "list", "tables"], None)?;
        let parsed: Nftables = serde_json::from_str(&out)
            .map_err(|source| NftError::Json { what: what.to_string(), source })?;
        Ok(parsed
            .objects
            .iter()
            .filter_map(|o| match o {
                NfObject::ListObject(NfListObject::Table(t)) => {
                    Some((Family::from_nf(t.family), t.name.to_string()))
                }
                _ => None,
            })
            .collect())
    }

    /// True when the table exists.
    pub fn has_table(&self, family: Family, name: &TableName) -> Result<bool> {
        Ok(self.tables()?.iter().any(|(f, n)| *f == family && n == name.as_str()))
    }

    /// The table's rules as `nft list table` prints them, for people (and tests) to read.
    pub fn list_table(&self, family: Family, name: &TableName) -> Result<String> {
        self.run(
            &format!("list table {family} {name}"),
            &["list", "table", family.as_str(), name.as_str()],
            None,
        )
    }

    /// Deletes a table; a missing table is not an error.
    pub fn delete_table(&self, family: Family, name: &TableName) -> Result<()> {
        self.apply(&format!("delete table {family} {name}"), &rules::delete_table(family, name))
    }

    /// Replaces the table `spec` names with `spec`'s chains and rules in one transaction.
    pub fn replace_table(&self, spec: &TableSpec) -> Result<()> {
        self.apply(&format!("apply table {} {}", spec.family, spec.name), &spec.replace())
    }

    /// True when the kernel can track connections in the bridge family
    /// (`nf_conntrack_bridge`), which stateful security groups need. Tries a `ct state` rule
    /// in a scratch table that is removed again.
    pub fn bridge_conntrack(&self) -> bool {
        let name = TableName::from_parts(&["probe", "ct", &std::process::id().to_string()]);
        let spec = TableSpec {
            family: Family::Bridge,
            name: name.clone(),
            chains: vec![ChainSpec::regular("c", vec![rules::ct_established(&["established"])])],
        };
        let ok = self.replace_table(&spec).is_ok();
        let _ = self.delete_table(Family::Bridge, &name);
        ok
    }
}
