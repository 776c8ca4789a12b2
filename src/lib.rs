//! hv: an SDK for running and managing virtual machines on Linux/KVM.
//!
//! This facade re-exports the workspace crates so an embedding program can depend on one
//! package:
//!
//! | module | crate | role |
//! |---|---|---|
//! | [`mem`] | `hv-mem` | guest memory: layout, backing, dirty tracking, translation |
//! | [`core`] | `hv-core` | the VMM: VMs, vCPUs, exits, devices, boot, lifecycle |
//! | [`storage`] | `hv-storage` | storage pools, volumes, block backends, virtio-blk |
//! | [`net`] | `hv-net` | TAP, bridges, NAT/isolated networks, virtio-net |
//! | [`host`] | `hv-host` | one host: domains as `hv-vmm` processes, the `hvd` daemon |
//! | [`vmm`] | `hv-vmm` | one VM per process behind Cloud Hypervisor's REST API |
//! | [`orchestrator`] | `hv-orchestrator` | a multi-tenant control plane |

// The README's examples compile as doctests of this crate.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod logging;

pub use hv_core as core;
pub use hv_host as host;
pub use hv_mem as mem;
pub use hv_net as net;
pub use hv_orchestrator as orchestrator;
pub use hv_storage as storage;
pub use hv_vmm as vmm;
