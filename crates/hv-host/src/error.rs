//! The host layer's errors.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::domain::{DomainName, TransitionError, XmlError};

/// Errors of the host layer; each says what failed and with which domain, file or value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No domain has this name or UUID.
    #[error("Domain not found: no domain with matching name or uuid '{0}'")]
    NoDomain(String),
    /// `define` with a name another UUID already has.
    #[error("domain '{name}' already exists with uuid {uuid}")]
    NameInUse {
        /// The name.
        name: DomainName,
        /// The UUID the existing domain has.
        uuid: Uuid,
    },
    /// `define` with a UUID another domain already has.
    #[error("domain '{name}' is already defined with uuid {uuid}")]
    UuidInUse {
        /// The UUID.
        uuid: Uuid,
        /// The domain that has it.
        name: DomainName,
    },
    /// Bad domain XML.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// A stored definition no longer parses.
    #[error("stored domain definition {path} is corrupt: {source}")]
    CorruptDefinition {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: XmlError,
    },
    /// The operation is not allowed in the domain's state.
    #[error("Requested operation is not valid: {0}")]
    State(#[from] TransitionError),
    /// The operation needs an active domain (virsh's words).
    #[error("Requested operation is not valid: domain is not running")]
    NotRunning(String),
    /// Another client holds the domain's console (virsh's words).
    #[error("operation failed: Active console session exists for this domain")]
    ConsoleBusy(String),
    /// Something hv cannot do (yet), named.
    #[error("Operation not supported: {0}")]
    Unsupported(String),
    /// The domain has no disk with that target.
    #[error("No disk found whose source path or target is {target} in domain {domain}")]
    NoDisk {
        /// The domain.
        domain: String,
        /// The target asked for.
        target: String,
    },
    /// The domain's VMM failed or refused.
    #[error("VMM: {0}")]
    Vmm(String),
    /// A pool or volume operation failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A logical volume's extents would be freed or rewritten under domains that use it.
    #[error(
        "Requested operation is not valid: cannot {op} volume '{volume}' of pool '{pool}': \
         in use by domain(s) {domains}"
    )]
    VolumeBusy {
        /// The refused operation (`delete`, `wipe`, `shrink`).
        op: &'static str,
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// The domains using it, comma-separated.
        domains: String,
    },
    /// A network operation failed.
    #[error("network: {0}")]
    Network(String),
    /// A pool or volume operation failed (hv-storage's error, naming the pool and volume).
    #[error(transparent)]
    Pool(hv_storage::pool::PoolError),
    /// A network operation failed (hv-net's error, naming the network).
    #[error(transparent)]
    Net(#[from] hv_net::network::NetworkError),
    /// A migration failed or was refused (shared storage missing, destination unreachable...).
    #[error("migration: {0}")]
    Migration(String),
    /// An internal inconsistency (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// A host file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The host layer's result type.
pub type Result<T> = std::result::Result<T, HostError>;

/// Maps an I/O error on `path` to [`HostError::Io`].
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostError {
    let path = path.to_path_buf();
    move |source| HostError::Io { op, path, source }
}
