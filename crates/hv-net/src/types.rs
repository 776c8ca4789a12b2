//! Small value types shared by the host-side modules: MAC addresses and IPv4 CIDRs, both
//! parsed from and printed as the usual text forms and stored as strings in JSON.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors parsing a CIDR, naming the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not `a.b.c.d/len` with `len` at most 32.
    #[error("invalid IPv4 CIDR {0:?} (want a.b.c.d/len)")]
    Cidr(String),
}

/// An Ethernet MAC address (the DHCP server's type, shared so a reservation and a port agree).
pub use crate::dhcp::MacAddr;

/// An IPv4 address with a prefix length: a host address in its subnet (`10.0.0.1/24`) or a
/// network (`10.0.0.0/24`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address as written.
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// A CIDR, or an error if `prefix` is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, ParseError> {
        if prefix > 32 {
            return Err(ParseError::Cidr(format!("{addr}/{prefix}")));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    /// The subnet mask.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// The network this address is in (host bits cleared).
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr { addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()), prefix: self.prefix }
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// True when `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::Cidr(s.to_string());
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let prefix: u8 = p.parse().map_err(|_| err())?;
        Ipv4Cidr::new(addr, prefix).map_err(|_| err())
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(MacAddr);
serde_as_string!(Ipv4Cidr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"52:54:00:ab:cd:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
    }

    #[test]
    fn cidr_math() {
        let c: Ipv4Cidr = "192.168.122.1/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "192.168.122.0/24");
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 122, 255));
        assert!(c.contains(Ipv4Addr::new(192, 168, 122, 77)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 123, 1)));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().mask(), 0);
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, "\"192.168.122.1/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&j).unwrap(), c);
    }
}
