//! The errors the control plane answers with. Each variant maps to one HTTP status the API
//! layer will send (noted on each), and says what failed with which input.

use thiserror::Error;

use crate::policy::Action;
use crate::store::StoreError;

/// What a control-plane call can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// Bad credentials, or a token that is unknown, expired or revoked (401).
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    /// The caller's roles do not allow the action (403).
    #[error("policy does not allow {action:?} for this caller")]
    Forbidden {
        /// The action refused.
        action: Action,
    },
    /// No such resource, or one the caller may not see: the two answer alike (404).
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// What was looked up.
        kind: &'static str,
        /// The id or name asked for.
        id: String,
    },
    /// Input that cannot be used (400).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The resource exists or is in a state that does not allow this (409).
    #[error("{kind} '{id}': {reason}")]
    Conflict {
        /// The kind.
        kind: &'static str,
        /// Its id or name.
        id: String,
        /// Why.
        reason: String,
    },
    /// A server was asked for without networks and more than one network could carry it:
    /// Nova's `NetworkAmbiguous`, in its words (409).
    #[error("Multiple possible networks found, use a Network ID to be more specific.")]
    NetworkAmbiguous,
    /// A quota would be exceeded (413/403, as Nova does).
    #[error("quota exceeded for {resource}: limit {limit}, in use {in_use}, reserved {reserved}, requested {requested}")]
    QuotaExceeded {
        /// The resource.
        resource: String,
        /// Its limit.
        limit: i64,
        /// Usage.
        in_use: i64,
        /// Reservations.
        reserved: i64,
        /// The amount asked for.
        requested: i64,
    },
    /// The scheduler found no host (Nova's NoValidHost).
    #[error("no valid host: {0}")]
    NoValidHost(String),
    /// An image upload was refused; the image is now `killed` with this reason (400).
    #[error("image '{id}' refused: {reason}")]
    ImageRefused {
        /// The image.
        id: String,
        /// Why.
        reason: String,
    },
    /// The operation is not supported by this cloud (501), with what is missing.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The compute host (hv-host: domains, VMM processes) failed (500).
    #[error("compute host: {0}")]
    Host(String),
    /// The host's networking (hv-net: bridges, DHCP, nftables) failed (500).
    #[error("host networking: {0}")]
    Network(String),
    /// The state store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image pool failed (500).
    #[error(transparent)]
    Pool(#[from] hv_storage::pool::PoolError),
    /// A file operation failed (500).
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored record could not be read back (500).
    #[error("stored {kind} '{id}' is unreadable: {source}")]
    Corrupt {
        /// The kind.
        kind: &'static str,
        /// The id.
        id: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The result of a control-plane call.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A not-found answer.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Error {
        Error::NotFound { kind, id: id.into() }
    }

    /// An invalid-input answer.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid { field, reason: reason.into() }
    }

    /// Turns a store's quota refusal into [`Error::QuotaExceeded`], other store errors as is.
    pub(crate) fn from_store(e: StoreError) -> Error {
        match e {
            StoreError::OverQuota { resource, limit, in_use, reserved, requested, .. } => {
                Error::QuotaExceeded { resource, limit, in_use, reserved, requested }
            }
            e => Error::Store(e),
        }
    }
}
