//! Tenant networks on the compute host, through hv-net: each network with a subnet is an hv-net
//! network (`isolated` mode: its own bridge `hv<name>`, the subnet's gateway address on it, an
//! nftables table that drops forwarding to and from it, so tenant networks cannot reach each
//! other), DHCP served from this process with a reservation per port (MAC -> fixed IP), and
//! port security per instance NIC (hv-net's bridge-family table per TAP: anti-spoofing; the
//! port's security-group rules there too, or, where the kernel cannot track connections in the
//! bridge family, statefully in an `inet` table per TAP on the hooks br_netfilter passes bridged
//! IPv4 through: see `hv_net::nft::port`). A router interface turns the network's table into
//! hv-net's NAT table (masquerade of the subnet), so its instances reach out.
//!
//! All of it runs on the driver thread ([`super::Driver::run`]), in the namespace the cloud was
//! opened in.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use hv_net::dhcp::{DhcpHandle, DhcpServer};
use hv_net::network::{NetworkDef, NetworkManager, NetworkMode, NetworkState};
use hv_net::nft::port::{PortSecurity, PortSpec, SecurityRule};
use hv_net::nft::Nft;
use hv_net::{IfName, Ipv4Cidr, MacAddr};

use crate::error::{Error, Result};

fn net_err(e: impl std::fmt::Display) -> Error {
    Error::Network(e.to_string())
}

/// What the host needs to run one tenant network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostNetwork {
    /// The hv-net network name (13 characters at most).
    pub name: String,
    /// The gateway address and the subnet's prefix.
    pub gateway: Ipv4Cidr,
    /// The dynamic range DHCP may hand out (the allocation pool).
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Fixed MAC -> IP reservations, one per port.
    pub hosts: Vec<(MacAddr, Ipv4Addr)>,
    /// Whether DHCP runs.
    pub dhcp: bool,
    /// Whether a router NATs the subnet out.
    pub nat: bool,
    /// An external network (its bridge forwards freely).
    pub external: bool,
    /// Fixed addresses that floating IPs map to (let in from outside).
    pub inbound: Vec<Ipv4Addr>,
}

/// The DHCP servers this process runs, by network.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetState {
    dhcp: Arc<Mutex<HashMap<String, DhcpHandle>>>,
}

impl NetState {
    fn dhcp(&self) -> std::sync::MutexGuard<'_, HashMap<String, DhcpHandle>> {
        self.dhcp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every DHCP server (the networks stay up).
    pub(crate) fn stop_dhcp_all(&self) {
        for (_, h) in self.dhcp().drain() {
            let _ = h.stop();
        }
    }

    /// Makes (or updates) the network on the host: defines it, starts it if needed, sets the
    /// forwarding policy, and (re)starts its DHCP server with the current reservations.
    pub(crate) fn ensure(&self, mgr: &NetworkManager, n: &HostNetwork) -> Result<()> {
        let mut b = NetworkDef::builder(&n.name, NetworkMode::Isolated).ip(n.gateway);
        if n.dhcp {
            b = b.dhcp_range(n.range.0, n.range.1);
            for (mac, ip) in &n.hosts {
                b = b.dhcp_host(*mac, *ip);
            }
        }
        let def = b.build().map_err(net_err)?;
        let bridge = def.bridge.clone();
        let active = mgr.info(&n.name).map(|i| i.state == NetworkState::Active).unwrap_or(false);
        mgr.define(def).map_err(net_err)?;
        if !active {
            mgr.start(&n.name).map_err(net_err)?;
        }
        set_policy(n, &bridge)?;
        let mut dhcp = self.dhcp();
        if let Some(h) = dhcp.remove(&n.name) {
            let _ = h.stop();
        }
        if n.dhcp {
            // As Neutron: the subnet's gateway is the router option, whether or not a router
            // has an interface there yet (hv-net's isolated mode would announce none).
            let mut cfg = mgr.dhcp_config(&n.name).map_err(net_err)?;
            cfg.router = Some(n.gateway.addr);
            dhcp.insert(n.name.clone(), DhcpServer::spawn(cfg).map_err(net_err)?);
        }
        Ok(())
    }

    /// Removes the network from the host (no error when it is not there).
    pub(crate) fn remove(&self, mgr: &NetworkManager, name: &str) -> Result<()> {
        if let Some(h) = self.dhcp().remove(name) {
            let _ = h.stop();
        }
        let Ok(info) = mgr.info(name) else { return Ok(()) };
        if info.state == NetworkState::Active {
            mgr.destroy(name).map_err(net_err)?;
        }
        mgr.undefine(name).map_err(net_err)
    }
}

/// The network's forwarding policy (see [`super::nat`]).
fn set_policy(n: &HostNetwork, bridge: &IfName) -> Result<()> {
    let spec = if n.external {
        super::nat::external_table(&n.name, bridge)?
    } else {
        let link = hv_net::netlink::Netlink::new()
            .and_then(|mut nl| nl.link(bridge.as_str()))
            .map_err(net_err)?
            .ok_or_else(|| Error::Network(format!("bridge {bridge} is gone")))?;
        let zone = hv_net::nft::port::conns::bridge_zone(link.index);
        super::nat::network_table(&n.name, bridge, n.gateway.network(), n.nat, &n.inbound, zone)?
    };
    if n.nat || n.external {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").map_err(|source| Error::Io {
            what: "switch on IPv4 forwarding in",
            path: "/proc/sys/net/ipv4/ip_forward".into(),
            source,
        })?;
    }
    super::nat::install(&spec)
}

/// Puts exactly the floating addresses `floating` on the external network's bridge (`gateway`
/// is the bridge's own address, kept), so the host answers ARP for them.
pub(crate) fn set_floating_addresses(
    mgr: &NetworkManager,
    external: &str,
    gateway: Ipv4Addr,
    floating: &[Ipv4Addr],
) -> Result<()> {
    let def = mgr.get(external).map_err(net_err)?;
    super::nat::set_bridge_hosts(def.bridge.as_str(), gateway, floating)
}

/// Installs the floating-IP table for `maps` (floating, fixed, the fixed address's subnet).
pub(crate) fn install_floating(maps: &[(Ipv4Addr, Ipv4Addr, Ipv4Cidr)]) -> Result<()> {
    super::nat::install(&super::nat::fip_table(maps)?)
}

/// Installs (or replaces) port security on `tap`, a port of network `network`'s bridge.
pub(crate) fn apply_port(
    mgr: &NetworkManager,
    network: &str,
    tap: &str,
    mac: MacAddr,
    ips: Vec<Ipv4Addr>,
    rules: Vec<SecurityRule>,
) -> Result<()> {
    let port = IfName::new(tap).map_err(net_err)?;
    let bridge = Some(mgr.get(network).map_err(net_err)?.bridge);
    let ps = PortSecurity::new(Nft::locate().map_err(net_err)?);
    ps.apply(&PortSpec { port, mac, ips, rules, bridge }).map_err(net_err)
}

/// One bound port's security groups as the host applies them: its TAP, its network's host
/// name, MAC, addresses and rules.
pub(crate) type PortUpdate = (String, String, MacAddr, Vec<Ipv4Addr>, Vec<SecurityRule>);

/// Replaces the security-group rules of many ports with installed port security, in one nft
/// transaction (all or none), and cuts the connections the new rules no longer admit (each
/// port's in its network's zone).
pub(crate) fn update_ports(mgr: &NetworkManager, updates: Vec<PortUpdate>) -> Result<()> {
    // Each network's definition read once, however many of its ports change.
    let mut bridges = HashMap::new();
    let specs = updates
        .into_iter()
        .map(|(tap, network, mac, ips, rules)| {
            let port = IfName::new(&tap).map_err(net_err)?;
            let bridge = bridges
                .entry(network)
                .or_insert_with_key(|n| mgr.get(n).ok().map(|def| def.bridge))
                .clone();
            Ok(PortSpec { port, mac, ips, rules, bridge })
        })
        .collect::<Result<Vec<_>>>()?;
    PortSecurity::new(Nft::locate().map_err(net_err)?).update_rules_many(&specs).map_err(net_err)
}

/// Removes port security from `tap` (no error when there is none).
pub(crate) fn remove_port(tap: &str) -> Result<()> {
    let port = IfName::new(tap).map_err(net_err)?;
    PortSecurity::new(Nft::locate().map_err(net_err)?).remove(&port).map_err(net_err)
}
