//! Networks the way libvirt has them, kept in a state directory:
//!
//! - `nat`: a bridge `hv<name>` with the gateway address, IPv4 forwarding on, nftables
//!   masquerade for the subnet (table `inet hv_<name>`), and a DHCP server.
//! - `isolated`: the bridge, its address and DHCP; nftables drops all forwarding to and from it.
//! - `bridge`: guests join an existing bridge; hv creates nothing.
//!
//! A definition ([`NetworkDef`], built and checked by [`NetworkBuilder`]) lives in
//! `<state_dir>/networks/<name>.json`; while a network runs, `<name>.state.json` records what
//! was created so destroying it removes exactly that. Both are written crash-safely (temporary
//! file, fsync, rename). [`NetworkManager`] is the API over the directory; the states and their
//! transitions are in [`NetworkState::after`].
//!
//! ```no_run
//! use hv_net::network::{NetworkDef, NetworkManager, NetworkMode};
//! let mgr = NetworkManager::open("/var/lib/hv")?;
//! let def = NetworkDef::builder("default", NetworkMode::Nat)
//!     .ip("192.168.122.1/24".parse()?)
//!     .dhcp_range("192.168.122.2".parse()?, "192.168.122.254".parse()?)
//!     .build()?;
//! mgr.define(def)?;
//! mgr.start("default")?;
//! let dhcp = mgr.serve_dhcp("default")?; // or run it in a process of its own
//! # drop(dhcp);
//! mgr.destroy("default")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod daemon;
mod def;
mod host;
mod manager;
mod store;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use def::{DhcpHost, DhcpRange, NetworkBuilder, NetworkDef, NetworkMode};
pub use manager::{NetworkInfo, NetworkManager};

/// The MAC address a started network `name`'s bridge has, always: frames to it are for the
/// host (its gateway address, or to be routed), any other unicast frame on the bridge is
/// bridged between its ports.
pub fn bridge_mac(name: &str) -> crate::MacAddr {
    crate::MacAddr(host::bridge_mac(name))
}

use crate::types::Ipv4Cidr;

/// Where a network is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkState {
    /// Defined in the state directory; nothing on the host.
    Defined,
    /// Started: its bridge, address, nftables table (and DHCP server) exist.
    Active,
}

/// What is asked of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAction {
    /// Replace the definition (takes effect at the next start when active).
    Define,
    /// Create the host objects.
    Start,
    /// Remove the host objects.
    Destroy,
    /// Forget the definition.
    Undefine,
}

impl std::fmt::Display for NetworkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkState::Defined => "inactive",
            NetworkState::Active => "active",
        })
    }
}

impl NetworkState {
    /// The state after `action`, `None` when the network is gone (undefined), or the error
    /// saying why `action` is not allowed now. Every manager call checks here first.
    pub fn after(self, name: &str, action: NetworkAction) -> Result<Option<NetworkState>> {
        use NetworkAction as A;
        use NetworkState as S;
        let refuse = |why: &'static str| NetworkError::InvalidState {
            name: name.to_string(),
            state: self,
            why,
        };
        match (self, action) {
            (s, A::Define) => Ok(Some(s)),
            (S::Defined, A::Start) => Ok(Some(S::Active)),
            (S::Active, A::Start) => Err(refuse("it cannot be started again")),
            (S::Active, A::Destroy) => Ok(Some(S::Defined)),
            (S::Defined, A::Destroy) => Err(refuse("only an active network can be destroyed")),
            (S::Defined, A::Undefine) => Ok(None),
            (S::Active, A::Undefine) => Err(refuse("destroy it before undefining it")),
        }
    }
}

/// What a started network made on the host, recorded so destroy removes exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The bridge hv created.
    pub bridge: Option<crate::IfName>,
    /// The gateway address hv put on the bridge.
    pub address: Option<Ipv4Cidr>,
    /// The nftables table (family `inet`) hv installed.
    pub nft_table: Option<crate::nft::TableName>,
    /// True when hv switched IPv4 forwarding on (it was off).
    pub enabled_forwarding: bool,
}

/// The runtime record of a network (`<name>.state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// Current state.
    pub state: NetworkState,
    /// What the last start created.
    pub created: Created,
    /// The DHCP server process serving the network, if one was started.
    pub dhcp: Option<DhcpProcess>,
}

/// A DHCP server process, identified by pid and start time (so a reused pid is not mistaken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpProcess {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

/// Errors from networks, naming the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The definition is not valid.
    #[error("network {name}: {why}")]
    Invalid {
        /// The network.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// No network of this name is defined.
    #[error("network {0} is not defined")]
    NotFound(String),
    /// The action is not allowed in the network's current state.
    #[error("network {name} is {state}: {why}")]
    InvalidState {
        /// The network.
        name: String,
        /// Its state.
        state: NetworkState,
        /// Why not.
        why: &'static str,
    },
    /// A bridge-mode network's bridge does not exist.
    #[error(
        "network {name}: bridge {bridge} does not exist (bridge mode joins an existing bridge)"
    )]
    NoBridge {
        /// The network.
        name: String,
        /// The missing bridge.
        bridge: String,
    },
    /// A state-directory file could not be read or written.
    #[error("network state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A state-directory file is not valid JSON for what it should hold.
    #[error("network state {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A netlink operation failed.
    #[error("network {name}: {source}")]
    Netlink {
        /// The network.
        name: String,
        /// The error.
        #[source]
        source: crate::netlink::NetlinkError,
    },
    /// An nftables operation failed (or `nft` is missing).
    #[error("network {name}: {source}")]
    Nft {
        /// The network.
        name: String,
        /// The error.
        #[source]
        source: crate::nft::NftError,
    },
    /// The DHCP server could not be set up or run.
    #[error("network {name}: {source}")]
    Dhcp {
        /// The network.
        name: String,
        /// The error.
        #[source]
        source: crate::dhcp::DhcpError,
    },
    /// The network has no DHCP (bridge mode, or no range defined).
    #[error("network {0} has no DHCP range")]
    NoDhcp(String),
    /// A system setting (sysctl) could not be changed.
    #[error("network {name}: set {key}: {source}")]
    Sysctl {
        /// The network.
        name: String,
        /// The setting.
        key: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The DHCP server process could not be signalled or did not stop.
    #[error("network {name}: DHCP server process {pid}: {why}")]
    DhcpProcess {
        /// The network.
        name: String,
        /// Its pid.
        pid: u32,
        /// What went wrong.
        why: String,
    },
}

/// Result of a network operation.
pub type Result<T> = std::result::Result<T, NetworkError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        use NetworkAction as A;
        use NetworkState as S;
        assert_eq!(S::Defined.after("n", A::Start).unwrap(), Some(S::Active));
        assert_eq!(S::Active.after("n", A::Destroy).unwrap(), Some(S::Defined));
        assert_eq!(S::Defined.after("n", A::Undefine).unwrap(), None);
        assert_eq!(S::Active.after("n", A::Define).unwrap(), Some(S::Active));
        assert!(S::Active.after("n", A::Start).is_err());
        assert!(S::Defined.after("n", A::Destroy).is_err());
        let e = S::Active.after("n", A::Undefine).unwrap_err();
        assert_eq!(e.to_string(), "network n is active: destroy it before undefining it");
    }
}
