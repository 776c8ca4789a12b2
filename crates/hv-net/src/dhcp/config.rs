//! What one network's DHCP server is told, and the checks it must pass before a server uses it.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::{sanitize_hostname, MacAddr};

/// The largest dynamic range a server accepts (a /16): allocation scans the range.
pub const MAX_RANGE_ADDRESSES: u32 = 1 << 16;

/// A fixed MAC -> IP assignment, like libvirt's `<host mac=... ip=... name=.../>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The guest NIC's MAC address.
    pub mac: MacAddr,
    /// The address it always gets; inside the subnet, not necessarily inside the dynamic range.
    pub ip: Ipv4Addr,
    /// The host name handed out with it (option 12) and recorded in the lease.
    pub hostname: Option<String>,
}

/// The configuration of one network's DHCP server.
///
/// Build it with [`DhcpConfig::new`] and adjust the public fields; [`DhcpConfig::validate`]
/// (called by every server constructor) rejects an inconsistent one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The interface (normally the network's bridge) to serve on, bound with `SO_BINDTODEVICE`.
    pub interface: String,
    /// The server's own address on that interface (the network's gateway); sent as the server
    /// identifier (option 54).
    pub server_ip: Ipv4Addr,
    /// The subnet's prefix length; the subnet mask (option 1) is derived from it.
    pub prefix_len: u8,
    /// The default gateway handed out (option 3); `None` hands out none (isolated networks).
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out (option 6); empty hands out none.
    pub dns_servers: Vec<Ipv4Addr>,
    /// The domain name handed out (option 15), if any.
    pub domain_name: Option<String>,
    /// How long a lease lasts (option 51); at least 1 s, at most `u32::MAX` s.
    pub lease_time: Duration,
    /// The dynamic range, both ends included.
    pub range: RangeInclusive<Ipv4Addr>,
    /// Fixed assignments, which win over the dynamic range and are never handed to others.
    pub reservations: Vec<Reservation>,
    /// Where leases are persisted; created on the first lease, reloaded at start.
    pub lease_file: PathBuf,
}

impl DhcpConfig {
    /// A configuration with the common defaults: the server is also the router, no DNS servers,
    /// no domain, one-hour leases, no reservations.
    pub fn new(
        interface: impl Into<String>,
        server_ip: Ipv4Addr,
        prefix_len: u8,
        range: RangeInclusive<Ipv4Addr>,
        lease_file: impl Into<PathBuf>,
    ) -> Self {
        DhcpConfig {
            interface: interface.into(),
            server_ip,
            prefix_len,
            router: Some(server_ip),
            dns_servers: Vec::new(),
            domain_name: None,
            lease_time: Duration::from_secs(3600),
            range,
            reservations: Vec::new(),
            lease_file: lease_file.into(),
        }
    }

    /// The subnet mask for [`DhcpConfig::prefix_len`] (an invalid length gives `0.0.0.0`).
    pub fn netmask(&self) -> Ipv4Addr {
        mask_of(self.prefix_len).into()
    }

    /// The subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        (u32::from(self.server_ip) & mask_of(self.prefix_len)).into()
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        (u32::from(self.server_ip) | !mask_of(self.prefix_len)).into()
    }

    /// True when `ip` is a host address of the subnet (not its network or broadcast address).
    pub fn is_host_in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = mask_of(self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network())
            && ip != self.network()
            && ip != self.broadcast()
    }

    /// True when `ip` lies in the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(&ip)
    }

    /// The reservation for `mac`, if any.
    pub fn reservation_for(&self, mac: MacAddr) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.mac == mac)
    }

    /// The reservation holding `ip`, if any.
    pub fn reservation_of_ip(&self, ip: Ipv4Addr) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.ip == ip)
    }

    /// Checks that the configuration is consistent: a usable interface name, a prefix of 1..=30,
    /// the server, range and reservations inside the subnet, the range not holding the server's
    /// address, no MAC or IP reserved twice, a sane lease time and host names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if crate::IfName::new(&self.interface).is_err() {
            return Err(ConfigError::InterfaceName(self.interface.clone()));
        }
        if !(1..=30).contains(&self.prefix_len) {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        if !self.is_host_in_subnet(self.server_ip) {
            return Err(ConfigError::ServerIp(self.server_ip));
        }
        let (first, last) = (*self.range.start(), *self.range.end());
        if first > last {
            return Err(ConfigError::EmptyRange { first, last });
        }
        if !self.is_host_in_subnet(first) || !self.is_host_in_subnet(last) {
            return Err(ConfigError::RangeOutsideSubnet { first, last });
        }
        if u32::from(last) - u32::from(first) >= MAX_RANGE_ADDRESSES {
            return Err(ConfigError::RangeTooLarge { first, last });
        }
        if self.in_range(self.server_ip) {
            return Err(ConfigError::RangeHoldsServer { server: self.server_ip });
        }
        let secs = self.lease_time.as_secs();
        if secs == 0 || secs > u64::from(u32::MAX) {
            return Err(ConfigError::LeaseTime(self.lease_time));
        }
        if let Some(domain) = &self.domain_name {
            if domain.is_empty()
                || domain.len() > 253
                || domain.bytes().any(|b| b.is_ascii_whitespace())
            {
                return Err(ConfigError::DomainName(domain.clone()));
            }
        }
        for (i, r) in self.reservations.iter().enumerate() {
            if !self.is_host_in_subnet(r.ip) || r.ip == self.server_ip {
                return Err(ConfigError::ReservationAddress { mac: r.mac, ip: r.ip });
            }
            if r.mac.is_multicast() || r.mac.is_zero() {
                return Err(ConfigError::ReservationMac(r.mac));
            }
            if let Some(h) = &r.hostname {
                if sanitize_hostname(h).is_none() {
                    return Err(ConfigError::Hostname { mac: r.mac, hostname: h.clone() });
                }
            }
            for other in &self.reservations[..i] {
                if other.mac == r.mac {
                    return Err(ConfigError::DuplicateMac(r.mac));
                }
                if other.ip == r.ip {
                    return Err(ConfigError::DuplicateIp(r.ip));
                }
            }
        }
        Ok(())
    }
}

fn mask_of(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        1..=32 => u32::MAX << (32 - u32::from(prefix_len)),
        _ => 0,
    }
}

/// What is wrong with a [`DhcpConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The interface name is not an [`IfName`](crate::IfName) (1 to 15 of `A-Z a-z 0-9 _ - .`).
    #[error("bad interface name {0:?}")]
    InterfaceName(String),
    /// The prefix length is not in 1..=30 (a /31 or /32 leaves no addresses to hand out).
    #[error("prefix length /{0} is not in 1..=30")]
    PrefixLen(u8),
    /// The server address is the subnet's network or broadcast address.
    #[error("server address {0} is not a host address of its subnet")]
    ServerIp(Ipv4Addr),
    /// The range's first address is above its last.
    #[error("DHCP range {first}..={last} is empty")]
    EmptyRange {
        /// First address of the range.
        first: Ipv4Addr,
        /// Last address of the range.
        last: Ipv4Addr,
    },
    /// An end of the range is outside the server's subnet (or is its network/broadcast address).
    #[error("DHCP range {first}..={last} is not inside the server's subnet")]
    RangeOutsideSubnet {
        /// First address of the range.
        first: Ipv4Addr,
        /// Last address of the range.
        last: Ipv4Addr,
    },
    /// The range holds more than [`MAX_RANGE_ADDRESSES`] addresses.
    #[error("DHCP range {first}..={last} holds more than {MAX_RANGE_ADDRESSES} addresses")]
    RangeTooLarge {
        /// First address of the range.
        first: Ipv4Addr,
        /// Last address of the range.
        last: Ipv4Addr,
    },
    /// The server's own address lies inside the dynamic range.
    #[error("DHCP range holds the server's own address {server}")]
    RangeHoldsServer {
        /// The server address.
        server: Ipv4Addr,
    },
    /// The lease time is zero or longer than `u32::MAX` seconds.
    #[error("lease time {0:?} is not in 1 s..=u32::MAX s")]
    LeaseTime(std::time::Duration),
    /// The domain name is empty, too long or holds whitespace.
    #[error("bad domain name {0:?}")]
    DomainName(String),
    /// A reservation's address is outside the subnet or is the server's own.
    #[error("reservation {mac} -> {ip}: address is not a free host address of the subnet")]
    ReservationAddress {
        /// The reserved MAC.
        mac: MacAddr,
        /// The reserved address.
        ip: Ipv4Addr,
    },
    /// A reservation's MAC is a group or all-zero address.
    #[error("reservation for {0}: not a unicast MAC address")]
    ReservationMac(MacAddr),
    /// A reservation's host name is not a plain DNS label.
    #[error("reservation for {mac}: bad host name {hostname:?}")]
    Hostname {
        /// The reserved MAC.
        mac: MacAddr,
        /// The rejected host name.
        hostname: String,
    },
    /// Two reservations name the same MAC.
    #[error("MAC {0} is reserved twice")]
    DuplicateMac(MacAddr),
    /// Two reservations name the same address.
    #[error("address {0} is reserved twice")]
    DuplicateIp(Ipv4Addr),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DhcpConfig {
        DhcpConfig::new(
            "br0",
            Ipv4Addr::new(10, 0, 0, 1),
            24,
            Ipv4Addr::new(10, 0, 0, 100)..=Ipv4Addr::new(10, 0, 0, 200),
            "/tmp/x.leases",
        )
    }

    #[test]
    fn defaults_validate_and_derive_the_subnet() {
        let c = base();
        c.validate().unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.network(), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let mut c = base();
        c.interface = "a-very-long-interface-name".into();
        assert!(matches!(c.validate(), Err(ConfigError::InterfaceName(_))));
        let mut c = base();
        c.prefix_len = 31;
        assert_eq!(c.validate(), Err(ConfigError::PrefixLen(31)));
        let mut c = base();
        c.range = Ipv4Addr::new(10, 0, 0, 200)..=Ipv4Addr::new(10, 0, 0, 100);
        assert!(matches!(c.validate(), Err(ConfigError::EmptyRange { .. })));
        let mut c = base();
        c.range = Ipv4Addr::new(10, 0, 0, 100)..=Ipv4Addr::new(10, 0, 1, 5);
        assert!(matches!(c.validate(), Err(ConfigError::RangeOutsideSubnet { .. })));
        let mut c = base();
        c.range = Ipv4Addr::new(10, 0, 0, 1)..=Ipv4Addr::new(10, 0, 0, 5);
        assert!(matches!(c.validate(), Err(ConfigError::RangeHoldsServer { .. })));
        let mut c = base();
        c.lease_time = Duration::ZERO;
        assert!(matches!(c.validate(), Err(ConfigError::LeaseTime(_))));
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let mut c = base();
        c.reservations = vec![
            Reservation { mac, ip: Ipv4Addr::new(10, 0, 0, 5), hostname: None },
            Reservation { mac, ip: Ipv4Addr::new(10, 0, 0, 6), hostname: None },
        ];
        assert_eq!(c.validate(), Err(ConfigError::DuplicateMac(mac)));
        let mut c = base();
        c.reservations = vec![Reservation { mac, ip: Ipv4Addr::new(10, 0, 1, 5), hostname: None }];
        assert!(matches!(c.validate(), Err(ConfigError::ReservationAddress { .. })));
        let mut c = base();
        c.reservations =
            vec![Reservation { mac, ip: Ipv4Addr::new(10, 0, 0, 5), hostname: Some("a b".into()) }];
        assert!(matches!(c.validate(), Err(ConfigError::Hostname { .. })));
    }
}
