//! hv-core
