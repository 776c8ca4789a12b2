//! hv-orchestrator: an OpenStack-like multi-tenant control plane as a library (identity,
//! quotas, images, flavors, scheduler, instances, networks, volumes).
//!
//! Skeleton: the control plane lands in a later issue.
