//! hv-vmm: one VM per process behind Cloud Hypervisor's REST API.
//!
//! The parts, from the wire inwards:
//!
//! - [`server`]: HTTP/1.1 on a Unix socket (axum on a current-thread tokio runtime, in its own
//!   thread), Cloud Hypervisor's endpoints under `/api/v1/` and its status codes.
//! - [`config`] and [`api`]: Cloud Hypervisor's API types (`VmConfig`, `VmInfo`, `VmCounters`,
//!   the state endpoints' bodies) as serde structs; a body is parsed and validated into them
//!   before anything acts on it.
//! - [`manager`]: at most one VM, its state table (`Created`, `Running`, `Paused`, `Shutdown`)
//!   and its lifecycle on hv-core's `VmBuilder`/`Vm`; [`machine`] opens its devices
//!   (hv-storage's virtio-blk, hv-net's virtio-net) from the configuration; [`console`] is
//!   the serial port's `Pty` and `Socket` modes (output never blocks a vCPU, input is fed to
//!   the UART by a thread of its own).
//!   Its state endpoints (`vm.snapshot`, `vm.restore`, `vm.send-migration`,
//!   `vm.receive-migration`) run on hv-core's snapshot and pre-copy migration; [`urls`] parses
//!   their `file:///DIR`, `unix:/PATH` and `tcp:HOST:PORT` URLs.
//! - [`process`]: the manager as the process shares it, the main thread that runs the long
//!   operations (so the API thread keeps answering), and how the process ends.
//! - [`client`]: a small blocking client, for the host daemon and for tests; [`cli`]: Cloud
//!   Hypervisor's command-line option strings parsed into the same configuration types.
//!
//! ```no_run
//! use std::sync::Arc;
//! use hv_vmm::{config::VmConfig, server, Vmm};
//! let vmm = Arc::new(Vmm::new());
//! vmm.manager().create(VmConfig::with_kernel("/boot/vmlinux"))?;
//! vmm.manager().boot()?;
//! let api = server::spawn("/tmp/hv.sock".as_ref(), vmm.clone(), None)?;
//! let exit = vmm.wait_exit();
//! api.stop(std::time::Duration::from_secs(1));
//! std::process::exit(exit.code().into());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod machine;
pub mod manager;
pub mod process;
pub mod server;
pub mod urls;

pub use process::{Vmm, VmmExit};
