//! Sizes the way virsh takes and prints them.
//!
//! virsh's scaled integers: a plain number is bytes; `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`,
//! `P`/`PiB`, `E`/`EiB` are powers of 1024; `KB`, `MB`, `GB`, `TB`, `PB`, `EB` are powers of
//! 1000; `b`/`B`/`bytes` are bytes. Suffixes are case-insensitive, as in virsh.

use thiserror::Error;

/// A size that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// The text is not a number followed by an optional unit.
    #[error(
        "invalid size '{0}': expected a number with an optional unit (e.g. 10G, 512MiB, 1000000)"
    )]
    Invalid(String),
    /// The unit is not one virsh knows.
    #[error("invalid size '{input}': unknown unit '{unit}'")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit part.
        unit: String,
    },
    /// The value is not a whole number of bytes (virsh refuses `1.5` as well).
    #[error("invalid size '{0}': not a whole number of bytes")]
    Fraction(String),
    /// The value does not fit in 64 bits.
    #[error("size '{0}' is too large")]
    Overflow(String),
}

/// Parses a virsh-style size (`10G`, `512M`, `1GiB`, `1000000`, `1.5G`) into bytes. A value that
/// is not a whole number of bytes (`1.5`, `1.9`, `0.3K`) is refused, as virsh refuses it.
///
/// ```
/// use hv_storage::pool::size::parse_size;
/// assert_eq!(parse_size("10G").unwrap(), 10 << 30);
/// assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
/// assert_eq!(parse_size("1KB").unwrap(), 1000);
/// assert_eq!(parse_size("4096").unwrap(), 4096);
/// ```
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.matches('.').count() > 1 {
        return Err(SizeError::Invalid(text.to_string()));
    }
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "e" | "eib" => 1 << 60,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        "eb" => 1_000_000_000_000_000_000,
        _ => {
            return Err(SizeError::UnknownUnit { input: text.to_string(), unit: unit.to_string() })
        }
    };
    let overflow = || SizeError::Overflow(text.to_string());
    match num.split_once('.') {
        None => {
            let n: u64 = num.parse().map_err(|_| overflow())?;
            n.checked_mul(scale).ok_or_else(overflow)
        }
        Some((int, frac)) => {
            let n: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| overflow())? };
            let whole = n.checked_mul(scale).ok_or_else(overflow)?;
            // The fractional part must come to whole bytes.
            let digits = frac.trim_end_matches('0');
            if digits.len() > 18 {
                return Err(SizeError::Fraction(text.to_string()));
            }
            let f: u128 =
                if digits.is_empty() { 0 } else { digits.parse().map_err(|_| overflow())? };
            let num = f * scale as u128;
            let den = 10u128.pow(digits.len() as u32);
            if !num.is_multiple_of(den) {
                return Err(SizeError::Fraction(text.to_string()));
            }
            whole.checked_add((num / den) as u64).ok_or_else(overflow)
        }
    }
}

/// Formats bytes the way virsh prints them in `pool-info`/`vol-info`: `1.00 GiB`, `512.00 MiB`.
///
/// ```
/// use hv_storage::pool::size::format_size;
/// assert_eq!(format_size(1 << 30), "1.00 GiB");
/// assert_eq!(format_size(1536), "1.50 KiB");
/// assert_eq!(format_size(100), "100.00 B");
/// ```
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_virsh_units() {
        assert_eq!(parse_size("1").unwrap(), 1);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("3bytes").unwrap(), 3);
        assert_eq!(parse_size("8E").unwrap(), 8 << 60);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(parse_size(""), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1.2.3"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("10X"), Err(SizeError::UnknownUnit { .. })));
        assert!(matches!(parse_size("-1"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("16E"), Err(SizeError::Overflow(_))));
        assert!(matches!(parse_size("99999999999999999999"), Err(SizeError::Overflow(_))));
    }

    #[test]
    fn refuses_fractions_of_a_byte_as_virsh_does() {
        for s in ["1.5", "1.9", "0.3K", "1.0000000000000000001G"] {
            assert!(matches!(parse_size(s), Err(SizeError::Fraction(_))), "{s}");
        }
        assert_eq!(parse_size("1.0").unwrap(), 1);
        assert_eq!(parse_size("1.500").unwrap_err(), SizeError::Fraction("1.500".into()));
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert_eq!(parse_size("2.25KiB").unwrap(), 2304);
    }
}
