//! Plugging a domain's NICs in: a persistent TAP per NIC, on an hv network's bridge (hv-net's
//! [`NetworkManager`]) or on a host bridge, removed again when the domain stops.

use std::path::Path;

use hv_net::network::NetworkManager;
use hv_net::tap::Tap;
use hv_net::MacAddr;

use crate::domain::InterfaceSource;
use crate::error::{HostError, Result};

/// Makes TAP `tap` (persistent, so it outlives this process until the VMM opens it) and plugs
/// it into what `source` names.
pub fn plug(state_dir: &Path, source: &InterfaceSource, tap: &str, _mac: MacAddr) -> Result<()> {
    let net = |e: &dyn std::fmt::Display| HostError::Network(format!("TAP {tap}: {e}"));
    let t = Tap::builder(tap).persistent(true).open().map_err(|e| net(&e))?;
    drop(t);
    let r = match source {
        InterfaceSource::Network(name) => {
            let mgr = NetworkManager::open(state_dir).map_err(|e| net(&e))?;
            mgr.attach_port(name, tap).map_err(|e| net(&e))
        }
        InterfaceSource::Bridge(bridge) => {
            let mut nl = hv_net::netlink::Netlink::new().map_err(|e| net(&e))?;
            nl.set_master(tap, bridge).and_then(|()| nl.set_up(tap)).map_err(|e| net(&e))
        }
    };
    if r.is_err() {
        unplug(tap);
    }
    r
}

/// Removes TAP `tap` (and so its bridge port); a TAP that is already gone is fine.
pub fn unplug(tap: &str) {
    if let Ok(mut nl) = hv_net::netlink::Netlink::new() {
        if let Err(e) = nl.delete_link(tap) {
            log::debug!("removing TAP {tap}: {e}");
        }
    }
}
