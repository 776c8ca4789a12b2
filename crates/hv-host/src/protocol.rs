//! The host daemon's protocol: typed calls and replies, as JSON over HTTP/1.1.
//!
//! A client `POST`s one [`Call`] to `/v1/call` on `hvd.sock` (or the daemon's TCP listener) and
//! gets a [`Reply`] back with status 200, or an [`ErrorReply`] with a status that says what kind
//! of failure it was (404 no such object, 409 wrong state, 400 bad input, 500 host failure).
//! Byte streams (a serial console) have paths of their own (see the daemon module).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::{DomainState, StateReason};
use crate::network::{LeaseRow, NetInfo, NetRow};
use crate::storage::{PoolAction, PoolDefineAs, PoolRow, VolCreateAs, VolResize, VolRow};

/// The protocol version a client and daemon must share (the `/v1/` in every path).
pub const PROTOCOL_VERSION: u32 = 1;

/// One request to the host daemon, named after the virsh verb it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Call {
    /// Is the daemon there (and which version)?
    Ping,
    /// `define FILE`: store a domain from its XML.
    Define {
        /// libvirt domain XML.
        xml: String,
    },
    /// `undefine DOM`.
    Undefine {
        /// Name or UUID.
        domain: String,
    },
    /// `start DOM`.
    Start {
        /// Name or UUID.
        domain: String,
    },
    /// `shutdown DOM`: the ACPI power button; after `timeout_secs` (if given) it is forced.
    Shutdown {
        /// Name or UUID.
        domain: String,
        /// Seconds to wait for the guest before forcing it off; `None` returns at once.
        timeout_secs: Option<u64>,
    },
    /// `destroy DOM`: stop at once.
    Destroy {
        /// Name or UUID.
        domain: String,
    },
    /// `reboot DOM`.
    Reboot {
        /// Name or UUID.
        domain: String,
    },
    /// `suspend DOM`.
    Suspend {
        /// Name or UUID.
        domain: String,
    },
    /// `resume DOM`.
    Resume {
        /// Name or UUID.
        domain: String,
    },
    /// `list [--all]`.
    List {
        /// Include inactive domains.
        all: bool,
    },
    /// `dominfo DOM`.
    DomInfo {
        /// Name or UUID.
        domain: String,
    },
    /// `domstate DOM`.
    DomState {
        /// Name or UUID.
        domain: String,
    },
    /// `dumpxml DOM`.
    DumpXml {
        /// Name or UUID.
        domain: String,
    },
    /// `autostart [--disable] DOM`.
    Autostart {
        /// Name or UUID.
        domain: String,
        /// Mark (true) or unmark.
        enable: bool,
    },
    /// `domblklist DOM`.
    DomBlkList {
        /// Name or UUID.
        domain: String,
    },
    /// `domiflist DOM`.
    DomIfList {
        /// Name or UUID.
        domain: String,
    },
    /// `attach-disk DOM SOURCE TARGET --config` on a shut-off domain.
    AttachDisk {
        /// Name or UUID.
        domain: String,
        /// The file (absolute path) or `POOL/VOLUME`.
        source: String,
        /// The guest name, `vdX`.
        target: String,
        /// `raw` or `qcow2` (virsh's `--subdriver`); raw when not given.
        format: Option<String>,
        /// `--mode readonly`.
        read_only: bool,
    },
    /// `detach-disk DOM TARGET --config` on a shut-off domain.
    DetachDisk {
        /// Name or UUID.
        domain: String,
        /// The guest name, `vdX`.
        target: String,
    },
    /// `save DOM FILE`: pause, write the state, stop.
    Save {
        /// Name or UUID.
        domain: String,
        /// Where the saved state goes (a directory hvd creates), an absolute path.
        file: PathBuf,
    },
    /// `restore FILE`: bring a saved domain back running.
    Restore {
        /// What `save` wrote, an absolute path.
        file: PathBuf,
    },
    /// `migrate [--live] [--undefinesource] DOM DESTURI`.
    Migrate {
        /// Name or UUID.
        domain: String,
        /// The destination daemon: `hv+unix:///ABS/PATH/hvd.sock` or `hv+tcp://HOST:PORT`.
        dest_uri: String,
        /// The destination's shared key (TCP destinations).
        dest_key: Option<String>,
        /// libvirt's flags.
        flags: crate::host::MigrateFlags,
    },
    /// A migration's first step on the destination (host to host).
    MigratePrepare {
        /// The domain's XML.
        xml: String,
        /// Its TAPs, in NIC order.
        taps: Vec<String>,
        /// Its disks as the source sees them (shared storage).
        disks: Vec<crate::host::SharedDisk>,
        /// Listen on TCP (else a Unix socket).
        tcp: bool,
    },
    /// A migration's last step on the destination (host to host).
    MigrateFinish {
        /// The domain's name.
        domain: String,
        /// Whether the source sent it.
        sent: bool,
    },
    /// `pool-define-as`.
    PoolDefineAs(PoolDefineAs),
    /// `pool-build`, `pool-start`, `pool-destroy`, `pool-delete`, `pool-refresh`.
    Pool {
        /// The pool.
        pool: String,
        /// What to do.
        action: PoolAction,
    },
    /// `pool-undefine`.
    PoolUndefine {
        /// The pool.
        pool: String,
    },
    /// `pool-list`.
    PoolList,
    /// `pool-info`.
    PoolInfo {
        /// The pool.
        pool: String,
    },
    /// `vol-create-as`.
    VolCreateAs(VolCreateAs),
    /// `vol-list`.
    VolList {
        /// The pool.
        pool: String,
    },
    /// `vol-info`.
    VolInfo {
        /// The pool.
        pool: String,
        /// The volume.
        vol: String,
    },
    /// `vol-path`.
    VolPath {
        /// The pool.
        pool: String,
        /// The volume.
        vol: String,
    },
    /// `vol-delete`.
    VolDelete {
        /// The pool.
        pool: String,
        /// The volume.
        vol: String,
    },
    /// `vol-wipe`.
    VolWipe {
        /// The pool.
        pool: String,
        /// The volume.
        vol: String,
    },
    /// `vol-resize`.
    VolResize(VolResize),
    /// `vol-clone`.
    VolClone {
        /// The pool.
        pool: String,
        /// The volume copied.
        vol: String,
        /// The copy's name.
        new_name: String,
    },
    /// `net-define`: a network definition (validated again by the daemon).
    NetDefine {
        /// The definition.
        def: hv_net::network::NetworkDef,
    },
    /// `net-start`.
    NetStart {
        /// The network.
        network: String,
    },
    /// `net-destroy`.
    NetDestroy {
        /// The network.
        network: String,
    },
    /// `net-undefine`.
    NetUndefine {
        /// The network.
        network: String,
    },
    /// `net-list`.
    NetList,
    /// `net-info`.
    NetInfo {
        /// The network.
        network: String,
    },
    /// `net-dhcp-leases [--mac MAC]`.
    NetDhcpLeases {
        /// The network.
        network: String,
        /// Only this client's leases.
        mac: Option<String>,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Reply {
    /// The daemon is there.
    Pong {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// hvd's process id.
        pid: u32,
    },
    /// Done; `domain` is the name of the domain acted on, when there is one.
    Done {
        /// The domain's name.
        domain: Option<String>,
    },
    /// `define`'s answer.
    Defined {
        /// The domain's name.
        domain: String,
        /// False when an existing definition was replaced.
        new: bool,
    },
    /// `list`'s rows.
    Domains {
        /// One row per domain, by name.
        domains: Vec<DomainRow>,
    },
    /// `dominfo`.
    Info(DomInfo),
    /// `domstate`.
    State {
        /// The state.
        state: DomainState,
        /// Why.
        reason: StateReason,
    },
    /// `dumpxml`.
    Xml {
        /// libvirt domain XML.
        xml: String,
    },
    /// `domblklist`.
    Disks {
        /// (target, source) pairs.
        disks: Vec<(String, String)>,
    },
    /// `domiflist`.
    Interfaces {
        /// One row per NIC.
        interfaces: Vec<IfRow>,
    },
    /// A destination is ready for a migration.
    MigrateReady {
        /// A Unix socket path, or a TCP port.
        receiver: String,
    },
    /// `pool-list`.
    Pools {
        /// One row per pool, by name.
        pools: Vec<PoolRow>,
    },
    /// `pool-info`.
    PoolInfo(PoolRow),
    /// `vol-list`.
    Volumes {
        /// One row per volume, by name.
        volumes: Vec<VolRow>,
    },
    /// `vol-info`.
    VolInfo(VolRow),
    /// `vol-path`.
    Path {
        /// The host path.
        path: PathBuf,
    },
    /// `vol-resize`: the new capacity.
    Resized {
        /// Bytes.
        capacity: u64,
    },
    /// `net-list`.
    Networks {
        /// One row per network, by name.
        networks: Vec<NetRow>,
    },
    /// `net-info`.
    NetInfo(NetInfo),
    /// `net-dhcp-leases`.
    Leases {
        /// The active leases.
        leases: Vec<LeaseRow>,
    },
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRow {
    /// The running domain's id, `None` (printed `-`) when inactive.
    pub id: Option<u32>,
    /// The name.
    pub name: String,
    /// The state.
    pub state: DomainState,
}

/// `dominfo`'s fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomInfo {
    /// Id when active.
    pub id: Option<u32>,
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// State.
    pub state: DomainState,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in KiB.
    pub max_memory_kib: u64,
    /// Memory in use in KiB (the whole of it while active: no balloon).
    pub used_memory_kib: u64,
    /// Whether it starts with the daemon.
    pub autostart: bool,
    /// Whether a managed saved state exists (`restore` without a file is not supported).
    pub managed_save: bool,
    /// The VMM process id while active.
    pub pid: Option<u32>,
}

/// One row of `domiflist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfRow {
    /// The host-side TAP name while active, `-` otherwise.
    pub interface: String,
    /// `network` or `bridge`.
    pub kind: String,
    /// The network's or bridge's name.
    pub source: String,
    /// Always `virtio`.
    pub model: String,
    /// The MAC address.
    pub mac: String,
}

/// What failed, as the daemon reports it; `kind` picks the client's exit code and wording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A one-line, human-readable message (virsh's wording where virsh has one).
    pub message: String,
}

/// Classes of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such domain, pool, volume or network.
    NotFound,
    /// Not allowed in the object's current state.
    InvalidState,
    /// Bad input: malformed XML, unknown element, bad value.
    InvalidArgument,
    /// Already exists with another identity.
    Conflict,
    /// The host failed (I/O, a VMM that would not start...).
    Internal,
    /// Missing or wrong credentials on a TCP connection.
    Unauthorized,
}

impl ErrorKind {
    /// The HTTP status the daemon answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::InvalidState | ErrorKind::Conflict => 409,
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Internal => 500,
            ErrorKind::Unauthorized => 401,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_tagged_json_and_refuse_unknown_fields() {
        let c = Call::Shutdown { domain: "a".into(), timeout_secs: Some(5) };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, r#"{"call":"shutdown","domain":"a","timeout_secs":5}"#);
        assert_eq!(serde_json::from_str::<Call>(&j).unwrap(), c);
        assert!(serde_json::from_str::<Call>(r#"{"call":"start","domain":"a","x":1}"#).is_err());
        assert!(serde_json::from_str::<Call>(r#"{"call":"format-host"}"#).is_err());
        assert!(serde_json::from_str::<Call>(r#"{"call":"start","domain":7}"#).is_err());
    }
}
