//! Making and removing a network's host objects: bridge, gateway address, IPv4 forwarding,
//! nftables table. Each step is recorded in [`Created`] as it succeeds, so a failed start is
//! rolled back and a destroy removes exactly what the start made.

use std::io;

use super::{Created, NetworkDef, NetworkError, NetworkMode, Result};
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{self, Nft};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// True when IPv4 forwarding is on in the calling thread's network namespace.
pub(crate) fn forwarding() -> io::Result<bool> {
    Ok(std::fs::read_to_string(IP_FORWARD)?.trim() == "1")
}

/// Switches IPv4 forwarding in the calling thread's network namespace.
pub(crate) fn set_forwarding(on: bool) -> io::Result<()> {
    std::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" })
}

/// A stable locally administered MAC for a network's bridge, so the bridge's address does not
/// change as ports come and go (a Linux bridge otherwise takes its lowest port's MAC).
pub(crate) fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: small, stable across releases (unlike std's hasher).
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x52, 0x54, 0x00, b[1], b[2], b[3]]
}

fn nl_err(name: &str) -> impl FnOnce(NetlinkError) -> NetworkError + '_ {
    move |source| NetworkError::Netlink { name: name.to_string(), source }
}

fn nft_err(name: &str) -> impl FnOnce(nft::NftError) -> NetworkError + '_ {
    move |source| NetworkError::Nft { name: name.to_string(), source }
}

/// Everything [`bring_up`] would create for `def`: the intent recorded before starting, so
/// a start that crashes half-way can be cleaned up (removing what is absent is a no-op).
pub(crate) fn plan(def: &NetworkDef) -> Created {
    match (def.mode, def.ip) {
        (NetworkMode::Bridge, _) | (_, None) => Created::default(),
        (mode, Some(ip)) => Created {
            bridge: Some(def.bridge.clone()),
            address: Some(ip),
            nft_table: nft::network::table_name(&def.name).ok(),
            enabled_forwarding: mode == NetworkMode::Nat && !forwarding().unwrap_or(true),
        },
    }
}

/// Creates the network's objects, recording each in `created`. On error the caller rolls back
/// with [`tear_down`].
pub(crate) fn bring_up(def: &NetworkDef, created: &mut Created) -> Result<()> {
    let name = def.name.as_str();
    let mut nl = Netlink::new().map_err(nl_err(name))?;
    if def.mode == NetworkMode::Bridge {
        return match nl.link(&def.bridge).map_err(nl_err(name))? {
            Some(l) if l.kind.as_deref() == Some("bridge") => Ok(()),
            _ => Err(NetworkError::NoBridge {
                name: name.to_string(),
                bridge: def.bridge.to_string(),
            }),
        };
    }
    // Find nft before touching anything, so a missing binary leaves nothing behind.
    let nft = Nft::locate().map_err(nft_err(name))?;
    let ip = def.ip.ok_or_else(|| NetworkError::Invalid {
        name: name.to_string(),
        why: "no gateway address".into(),
    })?;

    nl.create_bridge(&def.bridge).map_err(nl_err(name))?;
    created.bridge = Some(def.bridge.clone());
    nl.set_mac(&def.bridge, bridge_mac(name)).map_err(nl_err(name))?;
    nl.set_up(&def.bridge).map_err(nl_err(name))?;
    nl.add_address(&def.bridge, ip.addr.into(), ip.prefix).map_err(nl_err(name))?;
    created.address = Some(ip);

    match def.mode {
        NetworkMode::Nat => {
            let sysctl = |source| NetworkError::Sysctl {
                name: name.to_string(),
                key: "net.ipv4.ip_forward",
                source,
            };
            if !forwarding().map_err(sysctl)? {
                set_forwarding(true).map_err(sysctl)?;
                created.enabled_forwarding = true;
            }
            created.nft_table =
                Some(nft::network::apply_nat(&nft, name, &def.bridge, ip).map_err(nft_err(name))?);
        }
        NetworkMode::Isolated => {
            created.nft_table =
                Some(nft::network::apply_isolated(&nft, name, &def.bridge).map_err(nft_err(name))?);
        }
        NetworkMode::Bridge => {}
    }
    Ok(())
}

/// Removes what `created` records. Forwarding goes back off only when hv switched it on and
/// `keep_forwarding` (another active NAT network needs it) is false. Every step is tried; the
/// first error is returned.
pub(crate) fn tear_down(name: &str, created: &Created, keep_forwarding: bool) -> Result<()> {
    let mut first: Option<NetworkError> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    if let Some(table) = &created.nft_table {
        note(
            Nft::locate()
                .and_then(|n| n.delete_table(nft::Family::Inet, table))
                .map_err(nft_err(name)),
        );
    }
    if created.bridge.is_some() || created.address.is_some() {
        match Netlink::new() {
            Ok(mut nl) => {
                if let (Some(ip), Some(br)) = (created.address, &created.bridge) {
                    note(
                        nl.delete_address(br, ip.addr.into(), ip.prefix)
                            .map(|_| ())
                            .map_err(nl_err(name)),
                    );
                }
                if let Some(br) = &created.bridge {
                    note(nl.delete_link(br).map(|_| ()).map_err(nl_err(name)));
                }
            }
            Err(e) => note(Err(nl_err(name)(e))),
        }
    }
    if created.enabled_forwarding && !keep_forwarding {
        note(set_forwarding(false).map_err(|source| NetworkError::Sysctl {
            name: name.to_string(),
            key: "net.ipv4.ip_forward",
            source,
        }));
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bridge_mac_is_stable_and_local() {
        let a = super::bridge_mac("default");
        assert_eq!(a, super::bridge_mac("default"));
        assert_ne!(a, super::bridge_mac("other"));
        assert_eq!(a[0] & 1, 0);
    }
}
