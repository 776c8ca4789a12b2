//! Instances (Nova servers): the records, the lifecycle table, and the calls a tenant makes.
//! What each call does on the host is in [`super::build`].
//!
//! ```text
//!            create                  stop                  pause
//!   (none) --------> BUILD -> ACTIVE ------> SHUTOFF   ACTIVE ----> PAUSED
//!                      |        ^   <------           ^  <------
//!                      |        |    start            |  unpause
//!                      v        +-- reboot (soft/hard)
//!                    ERROR (fault)      any -- delete --> DELETED (record removed)
//!
//!            suspend                     resume
//!   ACTIVE ----------> SUSPENDED ---------------> ACTIVE
//! ```
//!
//! Suspend is the host's managed save: the VM's whole state goes to a directory of the host
//! and its VMM stops (Nova shows power state SHUTDOWN); resume restores it in a new VMM on the
//! same TAPs, running on from where it was. Only an ACTIVE instance suspends, as in Nova.
//!
//! A VM that stops on its own becomes SHUTOFF (the guest powered off) or ERROR (its VMM died,
//! with the host's reason as the fault); [`Cloud::sync_instances`] and every get/list see it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::Timestamp;
use crate::policy::{authorize, Action, Context};
use crate::records::impl_resource;
use crate::store::Kind;
use crate::Cloud;

/// Nova's server states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InstanceStatus {
    /// Being placed, its disk made, its VM started.
    Build,
    /// Running.
    Active,
    /// Stopped.
    Shutoff,
    /// Paused (in memory).
    Paused,
    /// Suspended (saved to disk).
    Suspended,
    /// Failed: see the fault.
    Error,
    /// Gone (only seen in events; the record is removed).
    Deleted,
}

impl InstanceStatus {
    /// Nova's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Build => "BUILD",
            InstanceStatus::Active => "ACTIVE",
            InstanceStatus::Shutoff => "SHUTOFF",
            InstanceStatus::Paused => "PAUSED",
            InstanceStatus::Suspended => "SUSPENDED",
            InstanceStatus::Error => "ERROR",
            InstanceStatus::Deleted => "DELETED",
        }
    }

    /// The state `action` leads to from this one, or a conflict saying why not. The one place
    /// that says which action is allowed when.
    pub fn apply(self, action: InstanceAction) -> Result<InstanceStatus> {
        use InstanceAction as A;
        use InstanceStatus as S;
        let next = match (self, action) {
            (S::Shutoff, A::Start) => S::Active,
            (S::Active | S::Paused | S::Error, A::Stop) => S::Shutoff,
            (S::Active, A::Reboot { .. }) => S::Active,
            (S::Shutoff | S::Error | S::Paused, A::Reboot { hard: true }) => S::Active,
            (S::Active, A::Pause) => S::Paused,
            (S::Paused, A::Unpause) => S::Active,
            (S::Active, A::Suspend) => S::Suspended,
            (S::Suspended, A::Resume) => S::Active,
            _ => {
                return Err(Error::Conflict {
                    kind: "instance",
                    id: String::new(),
                    reason: format!(
                        "cannot {} an instance in state {}",
                        action.as_str(),
                        self.as_str()
                    ),
                })
            }
        };
        Ok(next)
    }
}

/// What a tenant can do to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceAction {
    /// `os-start`.
    Start,
    /// `os-stop`: the ACPI power button, then forced off after the image's
    /// `os_shutdown_timeout` (or the host's default).
    Stop,
    /// `reboot`: soft (the VMM resets the guest) or hard (VM stopped and started again).
    Reboot {
        /// Hard reboot.
        hard: bool,
    },
    /// `pause`.
    Pause,
    /// `unpause`.
    Unpause,
    /// `suspend`: the host saves the VM's state to disk and stops its VMM.
    Suspend,
    /// `resume`: the host restores the saved state; the VM runs on where it was.
    Resume,
}

impl InstanceAction {
    /// Nova's name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceAction::Start => "start",
            InstanceAction::Stop => "stop",
            InstanceAction::Reboot { .. } => "reboot",
            InstanceAction::Pause => "pause",
            InstanceAction::Unpause => "unpause",
            InstanceAction::Suspend => "suspend",
            InstanceAction::Resume => "resume",
        }
    }
}

/// Why an instance is in ERROR, as the tenant reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What happened.
    pub message: String,
    /// An HTTP-like code (500 for a host failure).
    pub code: u16,
    /// When.
    pub created: Timestamp,
}

/// One NIC of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceNic {
    /// Its port.
    pub port_id: String,
    /// The network.
    pub network_id: String,
    /// MAC.
    pub mac_address: String,
    /// Addresses.
    pub fixed_ips: Vec<Ipv4Addr>,
    /// True when the instance made the port (it is deleted with the instance).
    pub owned_port: bool,
}

/// A volume attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// The volume.
    pub volume_id: String,
    /// The instance.
    pub server_id: String,
    /// The guest device (`/dev/vdb`, ...).
    pub device: String,
}

/// An instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The owning project.
    pub project_id: String,
    /// Who made it.
    pub user_id: String,
    /// State.
    pub status: InstanceStatus,
    /// Its flavor.
    pub flavor_id: String,
    /// vCPUs (from the flavor).
    pub vcpus: u32,
    /// RAM, MiB.
    pub ram_mb: u64,
    /// Root disk, GiB.
    pub disk_gb: u64,
    /// Its image.
    pub image_id: String,
    /// The compute host it is placed on.
    pub host_id: Option<String>,
    /// The host's domain name (`i-<id>`).
    pub domain: String,
    /// Its NICs.
    pub nics: Vec<InstanceNic>,
    /// Attached volumes.
    pub volumes: Vec<VolumeAttachment>,
    /// Its server group.
    pub server_group_id: Option<String>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Why it is in ERROR.
    pub fault: Option<Fault>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it first became ACTIVE.
    pub launched_at: Option<Timestamp>,
}

impl_resource!(Instance, Kind::Instance, "instance", |s| Some(&s.project_id));

/// A NIC to give a new instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkRequest {
    /// A new port on a network (optionally with a fixed address).
    Network {
        /// The network.
        network_id: String,
        /// An address to ask for.
        fixed_ip: Option<Ipv4Addr>,
    },
    /// An existing, unbound port of the caller's project.
    Port(String),
}

/// What a new instance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    /// Name.
    pub name: String,
    /// The image to boot.
    pub image_id: String,
    /// The flavor.
    pub flavor_id: String,
    /// Its NICs, in order.
    pub networks: Vec<NetworkRequest>,
    /// Volumes to attach at boot (available volumes of the caller's project), in order.
    pub volumes: Vec<String>,
    /// A server group to place it in.
    pub server_group_id: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Security groups (ids or names of the caller's project) of the ports made for its
    /// networks; `None`: the project's `default` group. Ports passed in keep their own.
    pub security_groups: Option<Vec<String>>,
}

impl NewInstance {
    /// An instance of `image_id` and `flavor_id` without NICs or volumes.
    pub fn new(name: &str, image_id: &str, flavor_id: &str) -> NewInstance {
        NewInstance {
            name: name.into(),
            image_id: image_id.into(),
            flavor_id: flavor_id.into(),
            networks: vec![],
            volumes: vec![],
            server_group_id: None,
            metadata: BTreeMap::new(),
            security_groups: None,
        }
    }

    /// Adds a NIC on a network.
    pub fn network(mut self, network_id: &str) -> NewInstance {
        self.networks
            .push(NetworkRequest::Network { network_id: network_id.into(), fixed_ip: None });
        self
    }

    /// Adds a NIC on an existing port.
    pub fn port(mut self, port_id: &str) -> NewInstance {
        self.networks.push(NetworkRequest::Port(port_id.into()));
        self
    }

    /// Attaches a volume at boot.
    pub fn volume(mut self, volume_id: &str) -> NewInstance {
        self.volumes.push(volume_id.into());
        self
    }
}

impl Cloud {
    /// The NICs Nova gives a server created without a `networks` list (compute API 2.1): the
    /// networks the project can use are its own unshared ones and the shared ones; with
    /// exactly one, a port on it; with none, no NIC; with several,
    /// [`Error::NetworkAmbiguous`] (409), as Nova's `validate_networks`.
    pub fn default_networks(&self, ctx: &Context) -> Result<Vec<NetworkRequest>> {
        authorize(ctx, Action::NetworkList)?;
        let usable: Vec<_> = self
            .list_networks(ctx)?
            .into_iter()
            .filter(|n| n.shared || (n.project_id == ctx.project_id()))
            .collect();
        match usable.as_slice() {
            [] => Ok(vec![]),
            [one] => {
                Ok(vec![NetworkRequest::Network { network_id: one.id.clone(), fixed_ip: None }])
            }
            _ => Err(Error::NetworkAmbiguous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{InstanceAction as A, InstanceStatus as S};

    #[test]
    fn lifecycle_table() {
        assert_eq!(S::Shutoff.apply(A::Start).unwrap(), S::Active);
        assert_eq!(S::Active.apply(A::Stop).unwrap(), S::Shutoff);
        assert_eq!(S::Active.apply(A::Pause).unwrap(), S::Paused);
        assert_eq!(S::Paused.apply(A::Unpause).unwrap(), S::Active);
        assert_eq!(S::Error.apply(A::Reboot { hard: true }).unwrap(), S::Active);
        assert!(S::Active.apply(A::Start).is_err());
        assert!(S::Shutoff.apply(A::Pause).is_err());
        assert!(S::Build.apply(A::Stop).is_err());
        assert!(S::Shutoff.apply(A::Reboot { hard: false }).is_err());
    }

    #[test]
    fn suspend_and_resume() {
        assert_eq!(S::Active.apply(A::Suspend).unwrap(), S::Suspended);
        assert_eq!(S::Suspended.apply(A::Resume).unwrap(), S::Active);
        // Only a running instance suspends (Nova: vm_state ACTIVE), and a suspended one only
        // resumes: start, stop, pause, reboot and a second suspend are state conflicts.
        for from in [S::Paused, S::Shutoff, S::Build, S::Error, S::Suspended] {
            assert!(from.apply(A::Suspend).is_err(), "suspend from {from:?}");
        }
        for a in [
            A::Start,
            A::Stop,
            A::Pause,
            A::Unpause,
            A::Reboot { hard: false },
            A::Reboot { hard: true },
        ] {
            let e = S::Suspended.apply(a).unwrap_err();
            assert!(e.to_string().contains("SUSPENDED"), "{e}");
        }
        for from in [S::Active, S::Paused, S::Shutoff, S::Build, S::Error] {
            assert!(from.apply(A::Resume).is_err(), "resume from {from:?}");
        }
    }
}
