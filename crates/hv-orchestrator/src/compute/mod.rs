//! Compute (Nova's API and scheduler side): flavors, compute hosts, server groups and the
//! scheduler that places a request on a host and claims it atomically in the store.
//! Instances themselves come with the host layer (hv-host) in a later step.

pub mod flavor;
pub mod host;
pub mod scheduler;
pub mod server_group;

pub use flavor::{Flavor, NewFlavor};
pub use host::HostSpec;
pub use scheduler::{Placement, Weigher};
pub use server_group::{GroupPolicy, ServerGroup};
