//! The rest of Cloud Hypervisor's API types: answers (`VmInfo`, `VmCounters`, the ping) and
//! the bodies of the state endpoints (snapshot, restore, migration).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// `VmState`: where the VM is, as Cloud Hypervisor names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Configured (`vm.create`), not booted yet.
    Created,
    /// vCPUs running.
    Running,
    /// Stopped by `vm.shutdown`; `vm.boot` starts it again from its configuration.
    Shutdown,
    /// vCPUs parked (`vm.pause`).
    Paused,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `VmInfo`: what `vm.info` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The configuration the VM was created with, defaults filled in.
    pub config: VmConfig,
    /// Its state.
    pub state: VmState,
    /// Guest RAM in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_actual_size: Option<u64>,
    /// hv's addition: the snapshot memory file guest RAM is mapped from (private, pages read
    /// on first touch) when the VM was restored; absent for RAM allocated at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<std::path::PathBuf>,
}

/// `VmCounters`: counters per device (`_net0`, or the device's `id`), each a name -> value map.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// `VmmPingResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// The build (crate) version.
    #[serde(default)]
    pub build_version: String,
    /// The API version this VMM speaks.
    pub version: String,
    /// The VMM's process id.
    #[serde(default)]
    pub pid: i64,
    /// Optional features compiled in.
    #[serde(default)]
    pub features: Vec<String>,
}

/// `VmSnapshotConfig`: the body of `vm.snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshotConfig {
    /// `file:///DIR`.
    pub destination_url: String,
}

/// `RestoreConfig`: the body of `vm.restore`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// `file:///DIR`.
    pub source_url: String,
    /// Fault all of memory in before resuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefault: Option<bool>,
    /// Resume once restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
    /// `Copy` or `OnDemand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_restore_mode: Option<String>,
}

/// `ReceiveMigrationData`: the body of `vm.receive-migration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigrationData {
    /// `unix:/PATH` or `tcp:HOST:PORT`.
    pub receiver_url: String,
}

/// `SendMigrationData`: the body of `vm.send-migration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigrationData {
    /// `unix:/PATH` or `tcp:HOST:PORT`.
    pub destination_url: String,
    /// A migration within one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// The downtime to aim for, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The longest the copy may take, in seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// What to do when the copy outlasts `timeout_s`: `Cancel` (the default: the VM goes
    /// on here) or `Ignore` (finish anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_strategy: Option<TimeoutStrategy>,
    /// Connections to migrate over; hv uses one (more is a 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

/// `TimeoutStrategy` of `SendMigrationData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeoutStrategy {
    /// Give up and keep the VM running on the source.
    Cancel,
    /// Finish the migration anyway.
    Ignore,
}
