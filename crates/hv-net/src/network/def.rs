//! A network's definition and the builder that checks it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{NetworkError, Result};
use crate::dhcp::{DhcpConfig, Reservation};
use crate::types::{Ipv4Cidr, MacAddr};
use crate::IfName;

/// libvirt's forward modes that hv supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Bridge + gateway address + masquerade + DHCP (libvirt's default network).
    Nat,
    /// Bridge + gateway address + DHCP, no forwarding.
    Isolated,
    /// Join an existing bridge; nothing else.
    Bridge,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::Nat => "nat",
            NetworkMode::Isolated => "isolated",
            NetworkMode::Bridge => "bridge",
        })
    }
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nat" => Ok(NetworkMode::Nat),
            "isolated" | "none" => Ok(NetworkMode::Isolated),
            "bridge" => Ok(NetworkMode::Bridge),
            _ => Err(format!("unknown network mode {s:?} (nat, isolated or bridge)")),
        }
    }
}

/// The dynamic DHCP range, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpRange {
    /// First address handed out.
    pub first: Ipv4Addr,
    /// Last address handed out.
    pub last: Ipv4Addr,
}

/// A fixed MAC -> IP assignment (libvirt's `<host mac= ip=/>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    /// The guest NIC's MAC.
    pub mac: MacAddr,
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// Host name handed out with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A checked network definition; make one with [`NetworkDef::builder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    /// Network name (1 to 13 of `[A-Za-z0-9_-]`, so `hv<name>` fits an interface name).
    pub name: String,
    /// Forward mode.
    pub mode: NetworkMode,
    /// The bridge: `hv<name>` by default for nat/isolated; required for bridge mode.
    pub bridge: IfName,
    /// Gateway address and prefix on the bridge (nat/isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Cidr>,
    /// Dynamic DHCP range (nat/isolated); no DHCP without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<DhcpRange>,
    /// Static reservations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_hosts: Vec<DhcpHost>,
}

/// Builds and validates a [`NetworkDef`].
#[derive(Debug, Clone)]
pub struct NetworkBuilder {
    name: String,
    mode: NetworkMode,
    /// The bridge as given, checked by `build`.
    bridge: Option<String>,
    ip: Option<Ipv4Cidr>,
    dhcp_range: Option<DhcpRange>,
    dhcp_hosts: Vec<DhcpHost>,
}

/// Checks a network name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 13
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(NetworkError::Invalid {
            name: name.to_string(),
            why: "a network name is 1 to 13 of A-Z a-z 0-9 _ -".into(),
        });
    }
    Ok(())
}

impl NetworkDef {
    /// Starts a definition of `name` in `mode`.
    pub fn builder(name: &str, mode: NetworkMode) -> NetworkBuilder {
        NetworkBuilder {
            name: name.to_string(),
            mode,
            bridge: None,
            ip: None,
            dhcp_range: None,
            dhcp_hosts: Vec::new(),
        }
    }

    /// The DHCP server configuration for this network, if it serves DHCP.
    pub fn dhcp_config(&self, lease_file: &Path) -> Option<DhcpConfig> {
        let (ip, range) = (self.ip?, self.dhcp_range?);
        if self.mode == NetworkMode::Bridge {
            return None;
        }
        let mut c = DhcpConfig::new(
            self.bridge.as_str(),
            ip.addr,
            ip.prefix,
            range.first..=range.last,
            lease_file,
        );
        if self.mode == NetworkMode::Isolated {
            c.router = None;
        }
        c.reservations = self
            .dhcp_hosts
            .iter()
            .map(|h| Reservation { mac: h.mac, ip: h.ip, hostname: h.name.clone() })
            .collect();
        Some(c)
    }

    /// Checks the definition (the builder does this; call it on one read from elsewhere).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| NetworkError::Invalid { name: self.name.clone(), why };
        check_name(&self.name)?;
        match self.mode {
            NetworkMode::Bridge => {
                if self.ip.is_some() || self.dhcp_range.is_some() || !self.dhcp_hosts.is_empty() {
                    return Err(bad("bridge mode takes no --ip, DHCP range or hosts: the bridge's own network serves them".into()));
                }
            }
            NetworkMode::Nat | NetworkMode::Isolated => {
                let Some(ip) = self.ip else {
                    return Err(bad(format!(
                        "{} mode needs a gateway address (--ip a.b.c.d/len)",
                        self.mode
                    )));
                };
                if !(1..=30).contains(&ip.prefix)
                    || ip.addr == ip.network().addr
                    || ip.addr == ip.broadcast()
                {
                    return Err(bad(format!("{ip} is not a host address in a /1../30 subnet")));
                }
                if self.dhcp_range.is_none() && !self.dhcp_hosts.is_empty() {
                    return Err(bad("DHCP hosts need a DHCP range".into()));
                }
                if let Some(cfg) = self.dhcp_config(Path::new("/nonexistent")) {
                    cfg.validate().map_err(|e| bad(format!("DHCP: {e}")))?;
                }
            }
        }
        Ok(())
    }
}

impl NetworkBuilder {
    /// The bridge to create (nat/isolated) or join (bridge mode).
    pub fn bridge(mut self, name: &str) -> Self {
        self.bridge = Some(name.to_string());
        self
    }

    /// The gateway address and prefix, e.g. `192.168.122.1/24`.
    pub fn ip(mut self, cidr: Ipv4Cidr) -> Self {
        self.ip = Some(cidr);
        self
    }

    /// The dynamic DHCP range.
    pub fn dhcp_range(mut self, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        self.dhcp_range = Some(DhcpRange { first, last });
        self
    }

    /// A static reservation.
    pub fn dhcp_host(mut self, mac: MacAddr, ip: Ipv4Addr) -> Self {
        self.dhcp_hosts.push(DhcpHost { mac, ip, name: None });
        self
    }

    /// A static reservation that also hands out a host name.
    pub fn dhcp_host_named(mut self, mac: MacAddr, ip: Ipv4Addr, name: Option<String>) -> Self {
        self.dhcp_hosts.push(DhcpHost { mac, ip, name });
        self
    }

    /// Checks everything and returns the definition.
    pub fn build(self) -> Result<NetworkDef> {
        let bad = |why: String| NetworkError::Invalid { name: self.name.clone(), why };
        check_name(&self.name)?;
        let bridge = match (&self.bridge, self.mode) {
            (None, NetworkMode::Bridge) => {
                return Err(
                    bad("bridge mode needs the existing bridge's name (--bridge BR)".into()),
                )
            }
            (Some(b), _) => IfName::new(b).map_err(|e| bad(e.to_string()))?,
            (None, _) => {
                IfName::new(&format!("hv{}", self.name)).map_err(|e| bad(e.to_string()))?
            }
        };
        let def = NetworkDef {
            name: self.name,
            mode: self.mode,
            bridge,
            ip: self.ip,
            dhcp_range: self.dhcp_range,
            dhcp_hosts: self.dhcp_hosts,
        };
        def.validate()?;
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat() -> NetworkBuilder {
        NetworkDef::builder("default", NetworkMode::Nat).ip("192.168.122.1/24".parse().unwrap())
    }

    #[test]
    fn valid_definitions() {
        let d = nat()
            .dhcp_range("192.168.122.2".parse().unwrap(), "192.168.122.254".parse().unwrap())
            .dhcp_host("52:54:00:00:00:01".parse().unwrap(), "192.168.122.5".parse().unwrap())
            .build()
            .unwrap();
        assert_eq!(d.bridge, "hvdefault");
        let cfg = d.dhcp_config(Path::new("/x")).unwrap();
        assert_eq!(cfg.router, Some("192.168.122.1".parse().unwrap()));
        assert_eq!(cfg.reservations.len(), 1);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<NetworkDef>(&json).unwrap(), d);
        NetworkDef::builder("lan", NetworkMode::Bridge).bridge("br0").build().unwrap();
        let iso = NetworkDef::builder("iso", NetworkMode::Isolated)
            .ip("10.5.0.1/24".parse().unwrap())
            .dhcp_range("10.5.0.10".parse().unwrap(), "10.5.0.20".parse().unwrap())
            .build()
            .unwrap();
        assert_eq!(iso.dhcp_config(Path::new("/x")).unwrap().router, None);
    }

    #[test]
    fn invalid_definitions() {
        assert!(NetworkDef::builder("this-is-too-long", NetworkMode::Nat).build().is_err());
        assert!(NetworkDef::builder("a/b", NetworkMode::Nat).build().is_err());
        assert!(NetworkDef::builder("n", NetworkMode::Nat).build().is_err(), "nat needs --ip");
        assert!(NetworkDef::builder("n", NetworkMode::Bridge).build().is_err(), "needs --bridge");
        for bad in ["br;0", "br\"0", "br{0}", "br#0", "br 0", "a-sixteen-byte-x"] {
            let e = NetworkDef::builder("n", NetworkMode::Bridge).bridge(bad).build().unwrap_err();
            assert!(e.to_string().contains("invalid interface name"), "{bad}: {e}");
        }
        // A state file naming such a bridge does not load.
        let json = r#"{"name":"n","mode":"bridge","bridge":"br;flush ruleset"}"#;
        assert!(serde_json::from_str::<NetworkDef>(json).is_err());
        assert!(NetworkDef::builder("n", NetworkMode::Bridge)
            .bridge("br0")
            .ip("10.0.0.1/24".parse().unwrap())
            .build()
            .is_err());
        assert!(nat()
            .dhcp_range("192.168.123.2".parse().unwrap(), "192.168.123.9".parse().unwrap())
            .build()
            .is_err());
        assert!(nat()
            .dhcp_range("192.168.122.1".parse().unwrap(), "192.168.122.9".parse().unwrap())
            .build()
            .is_err());
        assert!(NetworkDef::builder("n", NetworkMode::Nat)
            .ip("10.0.0.0/24".parse().unwrap())
            .build()
            .is_err());
    }
}
