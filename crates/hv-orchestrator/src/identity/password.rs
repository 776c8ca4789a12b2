//! Password hashing: argon2id with the argon2 crate's default parameters (OWASP's
//! recommendation: 19 MiB, 2 passes, 1 lane), stored as a PHC string so the parameters
//! travel with the hash. Never weaker: [`hash`] always uses the defaults.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

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

/// Passwords verified lately, as Apache's `mod_authn_socache` keeps credentials to spare its
/// backend: the `openstack` client logs in with the password on every run, so one user's
/// scripts ask for the same argon2 work again and again. An entry is a keyed SHA-256 of the
/// stored hash (salt and parameters included) and the password, under a random key made per
/// process and never stored; it proves only that this very password matched this very hash
/// within the TTL. A changed password changes the stored hash, so no old entry matches; a
/// wrong password never matches an entry and pays the full argon2 verification. Memory only,
/// bounded ([`CACHE_ENTRIES`]). Left out of it: the database (a stolen database still
/// costs argon2 per guess); what it gives up is that someone who can read this process's
/// memory could test guesses for the cached users at SHA-256 speed (such a reader could also
/// read the passwords of requests as they arrive).
#[derive(Debug)]
pub struct VerifiedPasswords {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

/// The most entries kept (expired ones go first when it is full, else everything).
pub const CACHE_ENTRIES: usize = 10_000;

impl VerifiedPasswords {
    /// A cache whose entries last `ttl` (zero: nothing is kept, every login hashes).
    pub fn new(ttl: Duration) -> VerifiedPasswords {
        VerifiedPasswords { key: random_bytes::<32>(), ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn entry(&self, password: &str, phc: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((phc.len() as u64).to_le_bytes());
        h.update(phc.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// [`verify`], skipping argon2 when this password matched this hash within the TTL.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        if self.ttl.is_zero() {
            return verify(password, phc);
        }
        let e = self.entry(password, phc);
        let now = Instant::now();
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if entries.get(&e).is_some_and(|until| *until > now) {
                return true;
            }
        }
        if !verify(password, phc) {
            return false;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, until| *until > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(e, now + self.ttl);
        true
    }
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

    #[test]
    fn the_cache_remembers_only_a_match_of_this_password_with_this_hash() {
        let cache = VerifiedPasswords::new(Duration::from_secs(60));
        let h = hash("s3cret").unwrap();
        assert!(!cache.verify("wrong", &h));
        assert!(cache.verify("s3cret", &h));
        // Now from the cache: fast, and still only for the right password.
        let t = Instant::now();
        assert!(cache.verify("s3cret", &h));
        assert!(t.elapsed() < Duration::from_millis(5), "{:?}", t.elapsed());
        assert!(!cache.verify("s3cret ", &h));
        assert!(!cache.verify("wrong", &h));
        // A new hash (the password changed, even to the same word: a new salt) is verified
        // afresh; the old password no longer matches a changed one.
        let h2 = hash("other").unwrap();
        assert!(!cache.verify("s3cret", &h2));
        assert!(cache.verify("other", &h2));
        // Expired entries do not count; a zero TTL keeps nothing.
        let brief = VerifiedPasswords::new(Duration::from_millis(1));
        assert!(brief.verify("s3cret", &h));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!brief.verify("wrong", &h));
        assert!(brief.verify("s3cret", &h));
        let none = VerifiedPasswords::new(Duration::ZERO);
        assert!(none.verify("s3cret", &h) && !none.verify("x", &h));
        assert!(none.entries.lock().unwrap().is_empty());
    }
}
