//! What this host's kernel and tools can do for networking, found by trying rather than
//! assumed: a VLAN device or bridge VLAN filtering is attempted in a throw-away network
//! namespace and the kernel's answer (`EOPNOTSUPP`, `ENOENT`) is recorded; vhost-net is
//! present when `/dev/vhost-net` is.
//!
//! ```no_run
//! let f = hv_net::features::host_features();
//! if let Err(e) = f.require(hv_net::features::Feature::VhostNet) {
//!     eprintln!("falling back to userspace virtio-net: {e}");
//! }
//! ```

use std::path::Path;

use crate::netlink::{Netlink, NetlinkError};
use crate::nft::Nft;

/// A host capability hv-net may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// TAP devices (`/dev/net/tun`).
    Tun,
    /// 802.1Q VLAN devices (`8021q`).
    VlanDevices,
    /// VLAN filtering on Linux bridges (`CONFIG_BRIDGE_VLAN_FILTERING`).
    BridgeVlanFiltering,
    /// The in-kernel virtio-net backend (`/dev/vhost-net`).
    VhostNet,
    /// The `nft` binary for nftables.
    Nftables,
    /// Connection tracking in nftables' bridge family (`nf_conntrack_bridge`), for stateful
    /// security groups in the port's bridge table; without it port security is stateful
    /// through `br_netfilter` where the kernel has that, else mirrors rules for replies (see
    /// [`crate::nft::port::ReplyMode`]).
    BridgeConntrack,
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Feature::Tun => "TUN/TAP devices",
            Feature::VlanDevices => "802.1Q VLAN devices",
            Feature::BridgeVlanFiltering => "bridge VLAN filtering",
            Feature::VhostNet => "vhost-net",
            Feature::Nftables => "nftables (the nft binary)",
            Feature::BridgeConntrack => "bridge-family connection tracking",
        })
    }
}

/// A feature this host lacks, and why we think so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature} is not supported on this host: {reason}")]
pub struct Unsupported {
    /// The missing feature.
    pub feature: Feature,
    /// What the probe saw.
    pub reason: String,
}

/// The outcome of probing each [`Feature`].
#[derive(Debug, Clone)]
pub struct HostFeatures {
    results: Vec<(Feature, Result<(), Unsupported>)>,
}

impl HostFeatures {
    /// `Ok` when the host has `feature`, else why not.
    pub fn require(&self, feature: Feature) -> Result<(), Unsupported> {
        self.results
            .iter()
            .find(|(f, _)| *f == feature)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Err(Unsupported { feature, reason: "not probed".into() }))
    }

    /// True when the host has `feature`.
    pub fn has(&self, feature: Feature) -> bool {
        self.require(feature).is_ok()
    }

    /// Every probed feature with its outcome.
    pub fn all(&self) -> &[(Feature, Result<(), Unsupported>)] {
        &self.results
    }
}

fn missing(feature: Feature, reason: impl Into<String>) -> Result<(), Unsupported> {
    Err(Unsupported { feature, reason: reason.into() })
}

fn device(feature: Feature, path: &str) -> Result<(), Unsupported> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        missing(feature, format!("{path} is missing"))
    }
}

fn from_netlink(feature: Feature, r: Result<(), NetlinkError>) -> Result<(), Unsupported> {
    match r {
        Ok(()) => Ok(()),
        Err(e @ NetlinkError::Unsupported { .. }) => missing(feature, e.to_string()),
        Err(e) => missing(feature, format!("probe failed: {e}")),
    }
}

/// Tries VLAN devices and bridge VLAN filtering on a scratch bridge.
fn probe_links() -> (Result<(), Unsupported>, Result<(), Unsupported>) {
    let mut nl = match Netlink::new() {
        Ok(nl) => nl,
        Err(e) => {
            let why = format!("no netlink socket: {e}");
            return (
                missing(Feature::VlanDevices, &why),
                missing(Feature::BridgeVlanFiltering, why),
            );
        }
    };
    let br = format!("hvprb{}", std::process::id() % 100_000);
    if let Err(e) = nl.create_bridge(&br) {
        let why = format!("cannot create a probe bridge: {e}");
        return (missing(Feature::VlanDevices, &why), missing(Feature::BridgeVlanFiltering, why));
    }
    let vlan = nl.create_vlan(&format!("{br}.7"), &br, 7).map(|_| ());
    let filtering = nl.set_bridge_vlan_filtering(&br, true);
    let _ = nl.delete_link(&format!("{br}.7"));
    let _ = nl.delete_link(&br);
    (
        from_netlink(Feature::VlanDevices, vlan),
        from_netlink(Feature::BridgeVlanFiltering, filtering),
    )
}

/// Probes the host. Link probes run on a scratch thread in a fresh network namespace when
/// the process may make one (root), so the host's own networking is never touched; otherwise
/// in the caller's namespace with a scratch bridge that is deleted at once.
pub fn host_features() -> HostFeatures {
    let nft = Nft::locate();
    let nft_for_probe = nft.as_ref().ok().cloned();
    let probed = std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) only changes this scratch thread's network namespace;
        // failure is reported through the return value and leaves the thread as it was.
        let _ = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        let (vlan, filtering) = probe_links();
        let ct = match nft_for_probe {
            Some(n) if n.bridge_conntrack() => Ok(()),
            Some(_) => {
                missing(Feature::BridgeConntrack, "a `ct state` rule in a bridge table is refused")
            }
            None => missing(Feature::BridgeConntrack, "no nft binary to probe with"),
        };
        (vlan, filtering, ct)
    })
    .join();
    let (vlan, filtering, ct) = probed.unwrap_or_else(|_| {
        let p = "probe panicked";
        (
            missing(Feature::VlanDevices, p),
            missing(Feature::BridgeVlanFiltering, p),
            missing(Feature::BridgeConntrack, p),
        )
    });
    let nft = match nft {
        Ok(_) => Ok(()),
        Err(e) => missing(Feature::Nftables, e.to_string()),
    };
    HostFeatures {
        results: vec![
            (Feature::Tun, device(Feature::Tun, "/dev/net/tun")),
            (Feature::VlanDevices, vlan),
            (Feature::BridgeVlanFiltering, filtering),
            (Feature::VhostNet, device(Feature::VhostNet, "/dev/vhost-net")),
            (Feature::Nftables, nft),
            (Feature::BridgeConntrack, ct),
        ],
    }
}
