//! Interface names as a type: [`IfName`] holds only names that both Linux and nftables take
//! as they are, so a name from a user, a tenant or a state file is checked once, where it
//! enters, and nothing downstream quotes or escapes it.
//!
//! Linux allows 1 to 15 bytes (`IFNAMSIZ` less the terminator) of anything but `/`, `:`,
//! whitespace and NUL, and not `.` or `..`. hv narrows that to ASCII letters, digits, `_`, `-`
//! and `.`: nothing an nft script or a shell would read as syntax (`;`, `{`, `"`, `#`, `*`...).
//!
//! nftables object names are made from interface names with [`IfName::escaped`], which is
//! injective: `tap-1` and `tap_1` get different tables.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest interface name Linux takes (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// A name that is not a valid [`IfName`], with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {why}")]
pub struct InvalidIfName {
    /// The refused name.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// A Linux interface name that is also safe in nftables: 1 to 15 of `A-Z a-z 0-9 _ - .`,
/// not `.` or `..`.
///
/// ```
/// use hv_net::IfName;
/// let tap: IfName = "tap-1".parse()?;
/// assert_eq!(tap.as_str(), "tap-1");
/// assert!("tap;1".parse::<IfName>().is_err());
/// assert!("a-name-too-long-0".parse::<IfName>().is_err());
/// assert_ne!(tap.escaped(), "tap_1".parse::<IfName>()?.escaped());
/// # Ok::<(), hv_net::InvalidIfName>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<IfName, InvalidIfName> {
        let bad = |why| Err(InvalidIfName { name: name.to_string(), why });
        if name.is_empty() {
            return bad("empty");
        }
        if name.len() > IFNAME_MAX {
            return bad("longer than 15 bytes (IFNAMSIZ)");
        }
        if name == "." || name == ".." {
            return bad("'.' and '..' are not interface names");
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
            return bad("only A-Z a-z 0-9 _ - . are allowed");
        }
        Ok(IfName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with every byte that is not an ASCII letter or digit written as `_` and two
    /// hex digits (`tap-1` -> `tap_2d1`, `tap_1` -> `tap_5f1`): an identifier nft takes
    /// unquoted, and injective, since every `_` in the result starts an escape
    /// ([`IfName::unescape`] inverts it).
    pub fn escaped(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 3);
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("_{b:02x}"));
            }
        }
        out
    }

    /// The name [`IfName::escaped`] made `escaped` from, if any.
    pub fn unescape(escaped: &str) -> Option<IfName> {
        let bytes = escaped.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'_' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                // Only the lowercase form `escaped` writes: one spelling per name.
                if hex.bytes().any(|b| b.is_ascii_uppercase()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        let name = IfName::new(std::str::from_utf8(&out).ok()?).ok()?;
        (name.escaped() == escaped).then_some(name)
    }
}

impl Deref for IfName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for IfName {
    type Err = InvalidIfName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl TryFrom<&str> for IfName {
    type Error = InvalidIfName;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        IfName::new(s)
    }
}

impl TryFrom<String> for IfName {
    type Error = InvalidIfName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        IfName::new(&s)
    }
}

impl PartialEq<str> for IfName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for IfName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for IfName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IfName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_linux_and_nft_take() {
        for ok in ["hvtap0", "tap-1", "tap_1", "br0.5", "a", "exactly15bytes_"] {
            assert_eq!(IfName::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-bytes-xx",
            "a b",
            "a/b",
            "a:b",
            "x;y",
            "x{",
            "x}",
            "x\"",
            "x#",
            "x*",
            "x\\",
            "x'",
            "x@y",
            "x\0",
            "ä",
            "x\n",
        ] {
            assert!(IfName::new(bad).is_err(), "{bad:?} must be refused");
        }
        let e = IfName::new("x;flush ruleset").unwrap_err();
        assert!(e.to_string().contains("x;flush ruleset"), "{e}");
    }

    #[test]
    fn escaping_keeps_distinct_names_distinct() {
        let a = IfName::new("tap-1").unwrap();
        let b = IfName::new("tap_1").unwrap();
        let c = IfName::new("tap.1").unwrap();
        assert_eq!(a.escaped(), "tap_2d1");
        assert_eq!(b.escaped(), "tap_5f1");
        assert_eq!(c.escaped(), "tap_2e1");
        assert_eq!(IfName::unescape("tap_2d1"), Some(a));
        assert_eq!(IfName::unescape("tap_1"), None, "not an escape");
        assert_eq!(IfName::unescape("tap_2D1"), None, "not the form escaped writes");
    }

    #[test]
    fn serde_validates() {
        let n: IfName = serde_json::from_str("\"hvbr0\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"hvbr0\"");
        assert!(serde_json::from_str::<IfName>("\"br;0\"").is_err());
    }

    proptest! {
        /// `escaped` is injective: it is inverted by `unescape`, and its output is an nft
        /// identifier.
        #[test]
        fn escaped_is_injective(s in "[A-Za-z0-9_.-]{1,15}") {
            if let Ok(n) = IfName::new(&s) {
                let e = n.escaped();
                prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                prop_assert_eq!(IfName::unescape(&e), Some(n));
            }
        }

        /// Two distinct names never share an escaped form.
        #[test]
        fn distinct_names_distinct_tables(a in "[a-z0-9_.-]{1,4}", b in "[a-z0-9_.-]{1,4}") {
            if let (Ok(x), Ok(y)) = (IfName::new(&a), IfName::new(&b)) {
                prop_assert_eq!(x == y, x.escaped() == y.escaped());
            }
        }
    }
}
