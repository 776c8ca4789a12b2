//! Password hashing: argon2id with the argon2 crate's default parameters (OWASP's
//! recommendation: 19 MiB, 2 passes, 1 lane), stored as a PHC string so the parameters
//! travel with the hash. Never weaker: [`hash`] always uses the defaults.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::error::{Error, Result};
use crate::ids::random_bytes;

/// The longest password accepted (argon2 takes any length; this bounds the work a request
/// can ask for).
pub const MAX_PASSWORD: usize = 4096;

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(Error::invalid("password", format!("must be 1..={MAX_PASSWORD} bytes")));
    }
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| Error::invalid("password", e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::invalid("password", e.to_string()))
}

/// True when `password` matches the stored `phc` hash (false for a malformed hash).
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so a wrong name costs the same
/// time as a wrong password and names cannot be probed by timing.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_use_default_argon2id() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret ", &h));
        assert!(!verify("s3cret", "not a hash"));
        assert_ne!(h, hash("s3cret").unwrap(), "salts differ");
        assert!(hash("").is_err());
    }
}
