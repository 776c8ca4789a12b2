//! An in-process DHCPv4 server (RFC 2131/2132) for one network, the job dnsmasq does for each of
//! libvirt's NAT and isolated networks.
//!
//! The parts, from the wire inwards:
//! - [`server`]: the socket (UDP port 67 bound to the network's bridge with `SO_BINDTODEVICE`),
//!   the receive loop, and the thread an embedder runs it on ([`DhcpServer`], [`DhcpHandle`]).
//! - [`handler`]: the protocol. [`DhcpCore::handle`] takes one parsed client message and returns
//!   the reply, if any; no sockets, so tests drive it directly. Guest packets are untrusted: every
//!   malformed or unexpected message is dropped and counted, never a panic.
//! - [`pool`]: which address a client gets (reservation, previous lease, requested address, first
//!   free) and the bookkeeping of leases, pending offers and declined addresses.
//! - [`leases`]: the lease file, rewritten crash-safely (temporary file, fsync, rename) before any
//!   ACK that changed it leaves, and readable without a running server ([`read_leases`]).
//! - [`config`]: what a network's server is told ([`DhcpConfig`]), validated before use.
//!
//! ```no_run
//! use hv_net::dhcp::{DhcpConfig, DhcpServer};
//! use std::net::Ipv4Addr;
//!
//! # fn main() -> Result<(), hv_net::dhcp::DhcpError> {
//! let config = DhcpConfig::new(
//!     "hvbr0",
//!     Ipv4Addr::new(192, 168, 100, 1),
//!     24,
//!     Ipv4Addr::new(192, 168, 100, 10)..=Ipv4Addr::new(192, 168, 100, 200),
//!     "/var/lib/hv/networks/default.leases",
//! );
//! let handle = DhcpServer::spawn(config)?;
//! for lease in handle.leases() {
//!     println!("{} {} {:?}", lease.mac, lease.ip, lease.hostname);
//! }
//! handle.stop()?;
//! # Ok(())
//! # }
//! ```
//!
//! Deliberately left out: relayed requests (`giaddr` set; we serve only the attached subnet),
//! client identifiers (option 61; a guest NIC is known by its MAC), DHCPv6, and probing an
//! address with ARP/ICMP before offering it (a declined address is quarantined instead).

pub mod config;
pub mod error;
pub mod handler;
pub mod leases;
pub mod pool;
pub mod server;

pub use config::{ConfigError, DhcpConfig, Reservation};
pub use error::DhcpError;
pub use handler::{decode_request, reply_destination, DhcpCore, DhcpStats, DropReason};
pub use leases::{read_leases, write_leases, Lease, LeaseFileError};
pub use server::{DhcpHandle, DhcpServer};

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, as a DHCP client's `chaddr` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for a group (multicast or broadcast) address, which no NIC may use as its own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// The text given to [`MacAddr::from_str`] is not six `:`-separated hex octets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (want six hex octets like 52:54:00:12:34:56): {0:?}")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// Keeps a client-supplied host name only when it is a plausible DNS label: 1 to 63 characters
/// of ASCII letters, digits, `-`, `_` or `.`. Anything else (spaces, control bytes, newlines that
/// would break the lease file) is dropped.
pub(crate) fn sanitize_hostname(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    ok.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_junk() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in
            ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:00", "52:54:00:ab:cd:0g", "525:4:00:ab:cd:0f"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr([1, 0, 0, 0, 0, 0]).is_multicast());
    }

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(sanitize_hostname("guest-1.local"), Some("guest-1.local".into()));
        assert_eq!(sanitize_hostname("bad name"), None);
        assert_eq!(sanitize_hostname("bad\nname"), None);
        assert_eq!(sanitize_hostname(""), None);
        assert_eq!(sanitize_hostname(&"a".repeat(64)), None);
    }
}
