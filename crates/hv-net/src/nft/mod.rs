//! nftables through the `nft` binary (Debian's `nftables` package): rule sets are written as
//! nft scripts and fed to `nft -f -`, which applies each script as one atomic transaction.
//!
//! - [`network`]: the table a NAT or isolated network owns (masquerade, forwarding policy).
//! - [`port`]: port security for a guest port on a bridge (anti-spoofing, security groups).
//!
//! Every table hv makes is named `hv_...` and is replaced whole (`table X {}; delete table X;
//! table X {...}` in one transaction), so applying twice is the same as applying once and a
//! reader never sees a half-written table.

pub mod network;
pub mod port;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

    fn parse(s: &str) -> Option<Family> {
        Some(match s {
            "ip" => Family::Ip,
            "ip6" => Family::Ip6,
            "inet" => Family::Inet,
            "bridge" => Family::Bridge,
            "arp" => Family::Arp,
            "netdev" => Family::Netdev,
            _ => return None,
        })
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

    /// Applies an nft script atomically (`nft -f -`).
    pub fn apply(&self, what: &str, script: &str) -> Result<()> {
        self.run(what, &["-f", "-"], Some(script)).map(|_| ())
    }

    /// Every table in the namespace as `(family, name)`.
    pub fn tables(&self) -> Result<Vec<(Family, String)>> {
        let out = self.run("list tables", &["list", "tables"], None)?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("table")).then_some(())?;
                let fam = Family::parse(w.next()?)?;
                Some((fam, w.next()?.to_string()))
            })
            .collect())
    }

    /// True when the table exists.
    pub fn has_table(&self, family: Family, name: &str) -> Result<bool> {
        Ok(self.tables()?.iter().any(|(f, n)| *f == family && n == name))
    }

    /// The table's rules as `nft list table` prints them.
    pub fn list_table(&self, family: Family, name: &str) -> Result<String> {
        self.run(
            &format!("list table {family} {name}"),
            &["list", "table", family.as_str(), name],
            None,
        )
    }

    /// Deletes a table; a missing table is not an error.
    pub fn delete_table(&self, family: Family, name: &str) -> Result<()> {
        let script = format!("table {family} {name} {{}}\ndelete table {family} {name}\n");
        self.apply(&format!("delete table {family} {name}"), &script)
    }

    /// Replaces the table `family name` with `body` (the text inside its braces) in one
    /// transaction.
    pub fn replace_table(&self, family: Family, name: &str, body: &str) -> Result<()> {
        let script = format!(
            "table {family} {name} {{}}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"
        );
        self.apply(&format!("apply table {family} {name}"), &script)
    }

    /// True when the kernel can track connections in the bridge family
    /// (`nf_conntrack_bridge`), which stateful security groups need. Tries a `ct state` rule
    /// in a scratch table that is removed again.
    pub fn bridge_conntrack(&self) -> bool {
        let name = format!("hv_probe_ct_{}", std::process::id());
        let body = "  chain c {\n    ct state established accept\n  }\n";
        let ok = self.replace_table(Family::Bridge, &name, body).is_ok();
        let _ = self.delete_table(Family::Bridge, &name);
        ok
    }
}

/// Quotes an interface name for nft (names are checked to be plain already).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace(['"', '\\'], ""))
}
