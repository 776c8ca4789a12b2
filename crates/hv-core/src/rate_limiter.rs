//! A token-bucket rate limiter for device I/O, shared by virtio-blk and virtio-net.
//!
//! A [`RateLimiter`] holds up to two [`TokenBucket`]s: one counting bytes, one counting
//! operations. Each bucket has a size (the steady burst), a one-time initial burst that is never
//! refilled, and a refill time: the bucket refills from empty to `size` in `refill_time`, so
//! its steady rate is `size / refill_time`.
//!
//! A device asks [`RateLimiter::consume`] before doing work; on `false` it leaves the request
//! where it is (on the virtqueue) and retries after [`RateLimiter::retry_after`], e.g. by arming
//! a timerfd. The limiter does no I/O and owns no file descriptor, so it works (and is tested)
//! without KVM.
//!
//! A request larger than a whole bucket is let through when the bucket is full, leaving the
//! bucket in debt: later requests wait until refills have paid the debt back. Without that such a
//! request could never pass.
//!
//! ```
//! use hv_core::rate_limiter::{BucketConfig, RateLimiter, TokenType};
//! use std::time::Duration;
//!
//! // 1 MiB/s with a 1 MiB bucket; no limit on operations.
//! let mut rl = RateLimiter::new(
//!     Some(BucketConfig::new(1 << 20, Duration::from_secs(1))),
//!     None,
//! )
//! .unwrap();
//! assert!(rl.consume(4096, TokenType::Bytes));
//! assert!(rl.consume(1, TokenType::Ops)); // unlimited
//! ```

use std::time::{Duration, Instant};

/// Errors from configuring a rate limiter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimiterError {
    /// A bucket was configured with a size of zero tokens.
    #[error("{which} bucket: size must be greater than zero")]
    ZeroSize {
        /// Which bucket ("bytes" or "ops").
        which: &'static str,
    },
    /// A bucket was configured with a refill time of zero.
    #[error("{which} bucket: refill time must be greater than zero")]
    ZeroRefillTime {
        /// Which bucket ("bytes" or "ops").
        which: &'static str,
    },
}

/// What a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// One byte of data.
    Bytes,
    /// One I/O operation (request or packet).
    Ops,
}

/// The configuration of one token bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens available once, at the start, and never refilled.
    pub one_time_burst: u64,
    /// Time to refill the bucket from empty to full.
    pub refill_time: Duration,
}

impl BucketConfig {
    /// A bucket of `size` tokens refilled in `refill_time`, with no one-time burst.
    pub fn new(size: u64, refill_time: Duration) -> Self {
        Self { size, one_time_burst: 0, refill_time }
    }

    /// Sets the one-time burst.
    pub fn one_time_burst(mut self, tokens: u64) -> Self {
        self.one_time_burst = tokens;
        self
    }
}

/// A token bucket: `size` tokens, refilled continuously at `size / refill_time`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    config: BucketConfig,
    /// Tokens available now; negative while a request larger than the bucket is paid back.
    budget: i128,
    /// What is left of the one-time burst.
    burst_left: u64,
    /// When `budget` was last brought up to date.
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket as `config` says, starting at `now`.
    pub fn new(
        config: BucketConfig,
        now: Instant,
        which: &'static str,
    ) -> Result<Self, RateLimiterError> {
        if config.size == 0 {
            return Err(RateLimiterError::ZeroSize { which });
        }
        if config.refill_time.is_zero() {
            return Err(RateLimiterError::ZeroRefillTime { which });
        }
        Ok(Self {
            config,
            budget: i128::from(config.size),
            burst_left: config.one_time_burst,
            last_update: now,
        })
    }

    /// The configuration this bucket was built from.
    pub fn config(&self) -> BucketConfig {
        self.config
    }

    /// Tokens available now in the refilled part (negative while in debt), not counting the
    /// one-time burst.
    pub fn budget(&self) -> i128 {
        self.budget
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst_left(&self) -> u64 {
        self.burst_left
    }

    fn refill_ns(&self) -> u128 {
        self.config.refill_time.as_nanos()
    }

    /// Adds the tokens earned since the last update. Fractions of a token are kept by moving
    /// `last_update` forward only by the time the whole tokens took.
    fn refill(&mut self, now: Instant) {
        let size = i128::from(self.config.size);
        if self.budget >= size {
            self.last_update = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        let earned = elapsed.saturating_mul(u128::from(self.config.size)) / self.refill_ns();
        if earned == 0 {
            return;
        }
        let earned = i128::try_from(earned).unwrap_or(i128::MAX);
        let new_budget = self.budget.saturating_add(earned);
        if new_budget >= size {
            self.budget = size;
            self.last_update = now;
        } else {
            self.budget = new_budget;
            // Time the earned whole tokens took (rounded down, so no fraction is lost).
            let used_ns = earned as u128 * self.refill_ns() / u128::from(self.config.size);
            self.last_update += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
            if self.last_update > now {
                self.last_update = now;
            }
        }
    }

    /// Takes `tokens` from the bucket as of `now`; `false` (and nothing taken) when there are not
    /// enough.
    pub fn consume_at(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        let mut need = tokens;
        let from_burst = need.min(self.burst_left);
        need -= from_burst;
        let need_i = i128::from(need);
        let size = i128::from(self.config.size);
        if need_i <= self.budget || (need > self.config.size && self.budget == size) {
            self.burst_left -= from_burst;
            self.budget -= need_i;
            true
        } else {
            false
        }
    }

    /// Puts `tokens` back (e.g. the ops token of a request whose bytes were refused); the bucket
    /// never grows past its size.
    pub fn replenish(&mut self, tokens: u64) {
        let size = i128::from(self.config.size);
        self.budget = self.budget.saturating_add(i128::from(tokens)).min(size);
    }

    /// How long until `tokens` can be taken, as of `now` (zero if they can be taken now).
    pub fn time_until_at(&self, tokens: u64, now: Instant) -> Duration {
        let mut probe = self.clone();
        probe.refill(now);
        let need = tokens.saturating_sub(probe.burst_left);
        let size = i128::from(self.config.size);
        // A request larger than the bucket waits for a full bucket.
        let target = i128::from(need).min(size);
        if probe.budget >= target {
            return Duration::ZERO;
        }
        let missing = (target - probe.budget) as u128;
        let since_update = now.saturating_duration_since(probe.last_update).as_nanos();
        let ns = (missing * self.refill_ns())
            .div_ceil(u128::from(self.config.size))
            .saturating_sub(since_update);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// A bytes bucket and an ops bucket; a missing bucket means no limit of that kind.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter with the given buckets (`None`: unlimited), full at creation.
    pub fn new(
        bytes: Option<BucketConfig>,
        ops: Option<BucketConfig>,
    ) -> Result<Self, RateLimiterError> {
        let now = Instant::now();
        Ok(Self {
            bytes: bytes.map(|c| TokenBucket::new(c, now, "bytes")).transpose()?,
            ops: ops.map(|c| TokenBucket::new(c, now, "ops")).transpose()?,
        })
    }

    /// A limiter that lets everything through.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// True when neither bucket is configured.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.ops.is_none()
    }

    /// The bucket for `ty`, if configured.
    pub fn bucket(&self, ty: TokenType) -> Option<&TokenBucket> {
        match ty {
            TokenType::Bytes => self.bytes.as_ref(),
            TokenType::Ops => self.ops.as_ref(),
        }
    }

    fn bucket_mut(&mut self, ty: TokenType) -> Option<&mut TokenBucket> {
        match ty {
            TokenType::Bytes => self.bytes.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Takes `tokens` of kind `ty`; `false` when the caller must wait (nothing is taken then).
    pub fn consume(&mut self, tokens: u64, ty: TokenType) -> bool {
        self.consume_at(tokens, ty, Instant::now())
    }

    /// [`consume`](Self::consume) as of the instant `now` (for deterministic tests).
    pub fn consume_at(&mut self, tokens: u64, ty: TokenType, now: Instant) -> bool {
        match self.bucket_mut(ty) {
            None => true,
            Some(b) => b.consume_at(tokens, now),
        }
    }

    /// Takes one operation and `bytes` bytes together, or nothing: the usual check for one
    /// device request.
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        self.consume_request_at(bytes, Instant::now())
    }

    /// [`consume_request`](Self::consume_request) as of the instant `now`.
    pub fn consume_request_at(&mut self, bytes: u64, now: Instant) -> bool {
        if !self.consume_at(1, TokenType::Ops, now) {
            return false;
        }
        if !self.consume_at(bytes, TokenType::Bytes, now) {
            self.manual_replenish(1, TokenType::Ops);
            return false;
        }
        true
    }

    /// Gives back `tokens` of kind `ty`, e.g. for work that was refused after it was counted.
    pub fn manual_replenish(&mut self, tokens: u64, ty: TokenType) {
        if let Some(b) = self.bucket_mut(ty) {
            b.replenish(tokens);
        }
    }

    /// How long until a request of one operation and `bytes` bytes could pass (zero if now).
    /// Arm a timer for this long and retry.
    pub fn retry_after(&self, bytes: u64) -> Duration {
        self.retry_after_at(bytes, Instant::now())
    }

    /// [`retry_after`](Self::retry_after) as of the instant `now`.
    pub fn retry_after_at(&self, bytes: u64, now: Instant) -> Duration {
        let ops = self.ops.as_ref().map_or(Duration::ZERO, |b| b.time_until_at(1, now));
        let by = self.bytes.as_ref().map_or(Duration::ZERO, |b| b.time_until_at(bytes, now));
        ops.max(by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, refill: Duration) -> TokenBucket {
        TokenBucket::new(BucketConfig::new(size, refill), Instant::now(), "bytes").unwrap()
    }

    #[test]
    fn rejects_zero_size_and_zero_refill() {
        assert_eq!(
            RateLimiter::new(Some(BucketConfig::new(0, MS)), None).unwrap_err(),
            RateLimiterError::ZeroSize { which: "bytes" }
        );
        assert_eq!(
            RateLimiter::new(None, Some(BucketConfig::new(1, Duration::ZERO))).unwrap_err(),
            RateLimiterError::ZeroRefillTime { which: "ops" }
        );
    }

    #[test]
    fn unlimited_lets_everything_through() {
        let mut rl = RateLimiter::unlimited();
        assert!(rl.is_unlimited());
        assert!(rl.consume(u64::MAX, TokenType::Bytes));
        assert!(rl.consume_request(u64::MAX));
        assert_eq!(rl.retry_after(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn full_bucket_then_empty_then_refilled() {
        let t0 = Instant::now();
        let mut b =
            TokenBucket::new(BucketConfig::new(1000, Duration::from_secs(1)), t0, "bytes").unwrap();
        assert!(b.consume_at(600, t0));
        assert!(b.consume_at(400, t0));
        assert!(!b.consume_at(1, t0));
        // 1000 tokens per second: 100 ms earn 100 tokens.
        let t1 = t0 + 100 * MS;
        assert!(!b.consume_at(101, t1));
        assert!(b.consume_at(100, t1));
        assert!(!b.consume_at(1, t1));
        // Refill never exceeds the size.
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.consume_at(1000, t2));
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn fractional_refill_is_not_lost() {
        let t0 = Instant::now();
        // 3 tokens per second: one every 333.3 ms.
        let mut b =
            TokenBucket::new(BucketConfig::new(3, Duration::from_secs(1)), t0, "ops").unwrap();
        assert!(b.consume_at(3, t0));
        let mut got = 0;
        for i in 1..=100u32 {
            if b.consume_at(1, t0 + 10 * MS * i) {
                got += 1;
            }
        }
        // 1 s elapsed in 10 ms steps: exactly 3 tokens were earned.
        assert_eq!(got, 3);
    }

    #[test]
    fn one_time_burst_is_used_first_and_not_refilled() {
        let t0 = Instant::now();
        let cfg = BucketConfig::new(100, Duration::from_secs(1)).one_time_burst(50);
        let mut b = TokenBucket::new(cfg, t0, "bytes").unwrap();
        assert!(b.consume_at(150, t0));
        assert_eq!(b.one_time_burst_left(), 0);
        assert!(!b.consume_at(1, t0));
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.consume_at(100, t1));
        assert!(!b.consume_at(1, t1));
    }

    #[test]
    fn oversized_request_passes_on_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b =
            TokenBucket::new(BucketConfig::new(100, Duration::from_secs(1)), t0, "bytes").unwrap();
        assert!(b.consume_at(250, t0));
        assert_eq!(b.budget(), -150);
        // The debt (150) plus one full bucket (100) takes 2.5 s to refill.
        assert_eq!(b.time_until_at(250, t0), Duration::from_millis(2500));
        assert!(!b.consume_at(1, t0 + Duration::from_millis(1500)));
        assert!(b.consume_at(1, t0 + Duration::from_millis(1510)));
        // Not full, so another oversized request waits.
        assert!(!b.consume_at(250, t0 + Duration::from_millis(1600)));
        assert!(b.consume_at(250, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn replenish_caps_at_size() {
        let mut b = bucket(10, Duration::from_secs(1000));
        let now = Instant::now();
        assert!(b.consume_at(10, now));
        b.replenish(4);
        assert_eq!(b.budget(), 4);
        b.replenish(100);
        assert_eq!(b.budget(), 10);
    }

    #[test]
    fn retry_after_tells_when_tokens_are_there() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            Some(BucketConfig::new(1000, Duration::from_secs(1))),
            Some(BucketConfig::new(10, Duration::from_secs(1))),
        )
        .unwrap();
        assert_eq!(rl.retry_after_at(1000, t0), Duration::ZERO);
        assert!(rl.consume_request_at(1000, t0));
        // 500 bytes need 500 ms; ops are left (9 of 10): the bytes bucket decides.
        let wait = rl.retry_after_at(500, t0);
        assert_eq!(wait, Duration::from_millis(500));
        assert!(!rl.consume_request_at(500, t0 + wait - MS));
        assert!(rl.consume_request_at(500, t0 + wait));
    }

    #[test]
    fn refused_request_takes_nothing() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            Some(BucketConfig::new(100, Duration::from_secs(1))),
            Some(BucketConfig::new(5, Duration::from_secs(1))),
        )
        .unwrap();
        assert!(rl.consume_request_at(100, t0));
        let ops_before = rl.bucket(TokenType::Ops).unwrap().budget();
        assert!(!rl.consume_request_at(1, t0));
        assert_eq!(rl.bucket(TokenType::Ops).unwrap().budget(), ops_before);
        rl.manual_replenish(100, TokenType::Bytes);
        assert!(rl.consume_request_at(100, t0));
    }

    #[test]
    fn real_clock_refills() {
        let mut rl =
            RateLimiter::new(None, Some(BucketConfig::new(1, Duration::from_millis(2)))).unwrap();
        assert!(rl.consume(1, TokenType::Ops));
        assert!(!rl.consume(1, TokenType::Ops));
        std::thread::sleep(rl.retry_after(0) + MS);
        assert!(rl.consume(1, TokenType::Ops));
    }
}
