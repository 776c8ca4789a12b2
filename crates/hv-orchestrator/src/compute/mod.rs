//! Compute (Nova's API and scheduler side): flavors, compute hosts, server groups and the
//! scheduler that places a request on a host and claims it atomically in the store.
//! Instances ([`instance`]) run on this process's host through hv-host ([`crate::driver`]).

mod build;
pub mod flavor;
pub mod host;
pub mod instance;
pub mod scheduler;
pub mod server_group;

pub use flavor::{Flavor, NewFlavor};
pub use host::HostSpec;
pub use instance::{
    Fault, Instance, InstanceAction, InstanceNic, InstanceStatus, NetworkRequest, NewInstance,
    VolumeAttachment,
};
pub use scheduler::{Placement, Weigher};
pub use server_group::{GroupPolicy, ServerGroup};
