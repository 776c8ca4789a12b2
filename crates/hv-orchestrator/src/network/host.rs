//! The host side of networks: what the store says, made real by the driver (hv-net). Without
//! a compute driver (a control plane only) these are no-ops.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hv_net::network::NetworkManager;
use hv_net::Ipv4Cidr;

use super::{FloatingIp, Network, Port, PortStatus, Router, Subnet};
use crate::driver::net::{apply_port, remove_port, update_ports, HostNetwork};
use crate::error::Result;
use crate::records::{list, load, to_record};
use crate::store::Op;
use crate::Cloud;

/// The hv-net network name of network `id`: `n` and 12 hex digits of its UUID (hv-net allows
/// 13 characters, so the bridge `hv<name>` fits an interface name).
pub(crate) fn network_name(id: &str) -> String {
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).take(12).collect();
    format!("n{hex}")
}

impl Cloud {
    /// Brings network `network_id` on the host in line with the store: bridge and gateway,
    /// DHCP reservations for its ports, NAT when a router with a gateway has an interface on
    /// its subnet.
    pub(crate) fn sync_host_network(&self, network_id: &str) -> Result<()> {
        let Some(driver) = self.driver() else { return Ok(()) };
        let Some((net, _)) = load::<Network>(self.store(), network_id)? else { return Ok(()) };
        let Some(sid) = net.subnets.first() else { return Ok(()) };
        let Some((s, _)) = load::<Subnet>(self.store(), sid)? else { return Ok(()) };
        let hosts = self
            .ports_of_network(network_id)?
            .into_iter()
            .filter_map(|p| p.ips().first().map(|ip| (p.mac(), *ip)))
            .filter(|(_, ip)| *ip != s.gateway_ip)
            .collect();
        let nat = list::<Router>(self.store(), None, None)?.iter().any(|(r, _)| {
            r.external_gateway.is_some() && r.interfaces.iter().any(|i| &i.subnet_id == sid)
        });
        let inbound = list::<FloatingIp>(self.store(), None, None)?
            .into_iter()
            .filter_map(|(f, _)| f.fixed_ip_address)
            .filter(|ip| s.cidr().contains(*ip))
            .collect();
        let hn = HostNetwork {
            name: net.host_name.clone(),
            gateway: s.gateway_cidr(),
            range: s.dhcp_range(),
            hosts,
            dhcp: s.enable_dhcp && !net.external,
            nat,
            external: net.external,
            inbound,
        };
        let dir = driver.state_dir().to_path_buf();
        let state = driver.net().clone();
        driver.run(move |_| {
            let mgr =
                NetworkManager::open(&dir).map_err(|e| crate::Error::Network(e.to_string()))?;
            state.ensure(&mgr, &hn)
        })
    }

    /// Removes network `net` from the host.
    pub(crate) fn remove_host_network(&self, net: &Network) -> Result<()> {
        let Some(driver) = self.driver() else { return Ok(()) };
        let dir = driver.state_dir().to_path_buf();
        let state = driver.net().clone();
        let name = net.host_name.clone();
        driver.run(move |_| {
            let mgr =
                NetworkManager::open(&dir).map_err(|e| crate::Error::Network(e.to_string()))?;
            state.remove(&mgr, &name)
        })
    }

    /// Records that `port` is plugged into `tap` (its instance runs) and applies its port
    /// security there.
    pub(crate) fn bind_port(&self, port_id: &str, tap: &str) -> Result<()> {
        let Some((mut p, version)) = load::<Port>(self.store(), port_id)? else { return Ok(()) };
        p.binding_tap = Some(tap.to_string());
        p.status = PortStatus::Active;
        self.store().apply(&[Op::Update(to_record(&p, version))])?;
        self.apply_port_security(&p)
    }

    /// Records that `port` is unplugged (its instance stopped).
    pub(crate) fn unbind_port(&self, port_id: &str) -> Result<()> {
        let Some((mut p, version)) = load::<Port>(self.store(), port_id)? else { return Ok(()) };
        if let Some(tap) = p.binding_tap.take() {
            self.unbind_tap(&tap);
        }
        p.status = PortStatus::Down;
        self.store().apply(&[Op::Update(to_record(&p, version))])?;
        Ok(())
    }

    /// Removes port security from a TAP that is going away (best effort: the TAP's removal
    /// makes the table inert anyway).
    pub(crate) fn unbind_tap(&self, tap: &str) {
        let Some(driver) = self.driver() else { return };
        let tap = tap.to_string();
        if let Err(e) = driver.run(move |_| remove_port(&tap)) {
            log::warn!("removing port security: {e}");
        }
    }

    fn apply_port_security(&self, p: &Port) -> Result<()> {
        let Some(driver) = self.driver() else { return Ok(()) };
        let Some(tap) = p.binding_tap.clone() else { return Ok(()) };
        if !p.port_security_enabled {
            return driver.run(move |_| remove_port(&tap));
        }
        // No network, no bridge to filter on: an error, never a port left open.
        let (net, _) = load::<Network>(self.store(), &p.network_id)?.ok_or_else(|| {
            crate::Error::Network(format!("port {}: network {} is gone", p.id, p.network_id))
        })?;
        let rules = self.port_rules(p)?;
        let (mac, ips) = (p.mac(), p.ips());
        let dir = driver.state_dir().to_path_buf();
        driver.run(move |_| {
            let mgr =
                NetworkManager::open(&dir).map_err(|e| crate::Error::Network(e.to_string()))?;
            apply_port(&mgr, &net.host_name, &tap, mac, ips, rules)
        })
    }

    /// Re-applies port security to every bound port of a project (after a rule, group or
    /// membership change: remote-group rules depend on other ports' addresses, so a port made
    /// or removed changes what its groups' members let in).
    pub(crate) fn refresh_port_security(&self, project_id: &str) -> Result<()> {
        let Some(driver) = self.driver() else { return Ok(()) };
        // The project's ports and groups read once; every bound port's chains refilled in one
        // nft transaction (a new member of the default group changes every member's rules, so
        // per-port work here would make n servers cost n^2).
        let ports = list::<Port>(self.store(), Some(project_id), None)?;
        let mut groups = HashMap::new();
        let mut networks: HashMap<String, String> = HashMap::new();
        let mut updates = vec![];
        for (p, _) in &ports {
            let Some(tap) = &p.binding_tap else { continue };
            if !p.port_security_enabled {
                continue;
            }
            let rules = self.port_rules_among(p, &ports, &mut groups)?;
            if !networks.contains_key(&p.network_id) {
                // A network gone meanwhile: no bridge to find its zone by (every zone then).
                let net = load::<Network>(self.store(), &p.network_id)?;
                networks.insert(
                    p.network_id.clone(),
                    net.map(|(n, _)| n.host_name).unwrap_or_default(),
                );
            }
            let network = networks[&p.network_id].clone();
            updates.push((tap.clone(), network, p.mac(), p.ips(), rules));
        }
        let dir = driver.state_dir().to_path_buf();
        let updated = driver.run(move |_| {
            let mgr =
                NetworkManager::open(&dir).map_err(|e| crate::Error::Network(e.to_string()))?;
            update_ports(&mgr, updates)
        });
        if updated.is_ok() {
            return Ok(());
        }
        // A port without its tables (or any other failure of the batch): each port whole.
        for (p, _) in &ports {
            if p.binding_tap.is_some() {
                self.apply_port_security(p)?;
            }
        }
        Ok(())
    }
}

impl Cloud {
    /// Brings the host's floating-IP NAT in line with the store: the `hv_fip` table (DNAT of
    /// each floating address to its port's fixed one, SNAT back), the floating addresses on
    /// their external bridges, and every tenant network's policy (which lets the mapped
    /// addresses be reached).
    pub(crate) fn sync_floating_ips(&self) -> Result<()> {
        let Some(driver) = self.driver() else { return Ok(()) };
        let fips: Vec<FloatingIp> =
            list::<FloatingIp>(self.store(), None, None)?.into_iter().map(|(f, _)| f).collect();
        let mut externals = vec![];
        for (n, _) in list::<Network>(self.store(), None, None)? {
            self.sync_host_network(&n.id)?;
            if !n.external {
                continue;
            }
            let Some(sid) = n.subnets.first() else { continue };
            let Some((s, _)) = load::<Subnet>(self.store(), sid)? else { continue };
            externals.push((n.id.clone(), n.host_name.clone(), s.gateway_ip));
        }
        let mut all_maps: Vec<(Ipv4Addr, Ipv4Addr, Ipv4Cidr)> = vec![];
        for f in &fips {
            let (Some(fixed), Some(port)) = (f.fixed_ip_address, &f.port_id) else { continue };
            let Some((p, _)) = load::<Port>(self.store(), port)? else { continue };
            let Some(ip) = p.fixed_ips.iter().find(|i| i.ip_address == fixed) else { continue };
            let Some((s, _)) = load::<Subnet>(self.store(), &ip.subnet_id)? else { continue };
            all_maps.push((f.floating_ip_address, fixed, s.cidr()));
        }
        let per_net: Vec<(String, Ipv4Addr, Vec<Ipv4Addr>)> = externals
            .into_iter()
            .map(|(id, name, gw)| {
                let mine = fips
                    .iter()
                    .filter(|f| f.floating_network_id == id && f.fixed_ip_address.is_some())
                    .map(|f| f.floating_ip_address)
                    .collect();
                (name, gw, mine)
            })
            .collect();
        let dir = driver.state_dir().to_path_buf();
        driver.run(move |_| {
            let mgr =
                NetworkManager::open(&dir).map_err(|e| crate::Error::Network(e.to_string()))?;
            for (name, gw, mine) in &per_net {
                crate::driver::net::set_floating_addresses(&mgr, name, *gw, mine)?;
            }
            crate::driver::net::install_floating(&all_maps)?;
            Ok(())
        })
    }
}
