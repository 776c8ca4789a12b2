//! The errors of the DHCP server, each naming the interface or file it is about.

use std::io;
use std::path::PathBuf;

use super::config::ConfigError;
use super::leases::LeaseFileError;

/// What went wrong starting, running or stopping a network's DHCP server.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The configuration is inconsistent.
    #[error("DHCP server on {interface}: invalid configuration: {source}")]
    Config {
        /// The interface the configuration is for.
        interface: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// A socket operation failed (`op` says which: socket, SO_BINDTODEVICE, bind...).
    #[error("DHCP server on {interface}: {op} failed: {source}")]
    Socket {
        /// The interface served.
        interface: String,
        /// The failed operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The lease file could not be read, parsed or written.
    #[error("DHCP lease file {path}: {source}")]
    LeaseFile {
        /// The lease file.
        path: PathBuf,
        /// What went wrong with it.
        #[source]
        source: LeaseFileError,
    },
    /// The server thread could not be started.
    #[error("DHCP server on {interface}: cannot start its thread: {source}")]
    Thread {
        /// The interface served.
        interface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server thread panicked (a bug: guest input must never cause one).
    #[error("DHCP server on {interface}: its thread panicked")]
    Panicked {
        /// The interface served.
        interface: String,
    },
}
