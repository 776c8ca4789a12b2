//! hv-core

pub mod rate_limiter;
