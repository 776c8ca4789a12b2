//! Identifiers and time: random ids in OpenStack's shapes, and timestamps in microseconds.

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// This many seconds later.
    pub fn plus_secs(self, secs: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1_000_000)))
    }
}

/// The current time.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `n` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The kernel's getrandom does not fail once the pool is initialised; if it ever did,
    // carrying on with predictable ids or tokens would be worse than stopping.
    getrandom::fill(&mut b).expect("the OS random source failed");
    b
}

/// A random version-4 UUID in its hyphenated form (Nova, Glance, Neutron and Cinder ids).
pub fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A random 32-hex-digit id (Keystone's shape for projects, users and roles).
pub fn hex_id() -> String {
    hex::encode(random_bytes::<16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let a = uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a, uuid());
        assert_eq!(hex_id().len(), 32);
    }

    #[test]
    fn time_moves_forward() {
        let t = now();
        assert!(t.plus_secs(1) > t);
        assert!(t.0 > 1_700_000_000_000_000);
    }
}
