//! hv-host: one host in libvirt's role.
//!
//! A host owns persistent [`domain`]s (VM definitions, each run as one `hv-vmm` process when
//! active), and the host's storage pools and networks from `hv-storage` and `hv-net`. The `hvd`
//! daemon serves this library to `hvctl` and to the cloud's compute service; an embedder can use
//! it in-process without the daemon.

pub mod console;
pub mod daemon;
pub mod domain;
pub mod error;
pub mod host;
pub mod http;
pub mod network;
pub mod persist;
pub mod process;
pub mod protocol;
pub mod storage;
pub mod vmm;

pub use domain::{DomainDef, DomainName, DomainState};
pub use error::{HostError, Result};
pub use host::{Host, HostConfig};
