//! TAP devices through `/dev/net/tun`: Ethernet frames with the virtio-net header in front
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), offloads set from what the guest negotiated, and
//! optional multiqueue (one file per queue).
//!
//! Opening a name that exists attaches to that TAP (as Firecracker takes a host TAP); a name
//! that does not exist is created. A persistent TAP outlives its files; a non-persistent one
//! disappears when its last file closes.
//!
//! ```no_run
//! use hv_net::tap::Tap;
//! let tap = Tap::builder("hvtap0").queues(2).persistent(false).open()?;
//! tap.set_offload(true, true, true, false)?;
//! tap.set_vnet_hdr_size(12)?;
//! # Ok::<(), hv_net::tap::TapError>(())
//! ```

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::netlink::check_ifname;

const TUN_PATH: &str = "/dev/net/tun";

/// Errors from TAP devices, naming the device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened (missing module or no permission).
    #[error("open {TUN_PATH} for TAP {name}: {source}")]
    OpenTun {
        /// The TAP's name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The name is not a valid interface name.
    #[error("invalid TAP name {0:?}: 1 to 15 bytes, no '/', ':' or whitespace")]
    InvalidName(String),
    /// A queue count of zero, or more than the kernel allows.
    #[error("TAP {name}: invalid queue count {queues} (1 to 256)")]
    InvalidQueues {
        /// The TAP's name.
        name: String,
        /// The count asked for.
        queues: usize,
    },
    /// An ioctl on the TAP failed.
    #[error("{op} on TAP {name}: {source}")]
    Ioctl {
        /// The ioctl (`TUNSETIFF`, `TUNSETOFFLOAD`...).
        op: &'static str,
        /// The TAP's name.
        name: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
}

/// Result of a TAP operation.
pub type Result<T> = std::result::Result<T, TapError>;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Options for opening or creating a TAP; see [`Tap::builder`].
#[derive(Debug, Clone)]
pub struct TapBuilder {
    name: String,
    queues: usize,
    multi_queue: Option<bool>,
    vnet_hdr: bool,
    persistent: Option<bool>,
}

impl TapBuilder {
    /// Sets or clears `IFF_MULTI_QUEUE` regardless of the queue count (default: set when more
    /// than one queue), e.g. to open a single queue of a multiqueue TAP.
    pub fn multi_queue(mut self, on: bool) -> Self {
        self.multi_queue = Some(on);
        self
    }

    /// Number of queues (files); more than one implies `IFF_MULTI_QUEUE`. Default 1.
    pub fn queues(mut self, n: usize) -> Self {
        self.queues = n;
        self
    }

    /// Prefix frames with the virtio-net header (`IFF_VNET_HDR`). Default on.
    pub fn vnet_hdr(mut self, on: bool) -> Self {
        self.vnet_hdr = on;
        self
    }

    /// Keep the device after the files close (`TUNSETPERSIST`). Default: leave an existing
    /// TAP's setting alone, make a new one non-persistent.
    pub fn persistent(mut self, on: bool) -> Self {
        self.persistent = Some(on);
        self
    }

    /// Attaches to the TAP of this name, creating it if there is none.
    pub fn open(self) -> Result<Tap> {
        check_ifname(&self.name).map_err(|_| TapError::InvalidName(self.name.clone()))?;
        if self.queues == 0 || self.queues > 256 {
            return Err(TapError::InvalidQueues { name: self.name.clone(), queues: self.queues });
        }
        let existed = if_index(&self.name).is_some();
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if self.multi_queue.unwrap_or(self.queues > 1) {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut files = Vec::with_capacity(self.queues);
        for _ in 0..self.queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(TUN_PATH)
                .map_err(|source| TapError::OpenTun { name: self.name.clone(), source })?;
            let mut req =
                IfReq { name: [0; libc::IFNAMSIZ], flags: flags as libc::c_short, _pad: [0; 22] };
            req.name[..self.name.len()].copy_from_slice(self.name.as_bytes());
            // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`; `req` is a live,
            // correctly sized and laid out `IfReq` for the duration of the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            if rc < 0 {
                return Err(ioctl_err("TUNSETIFF", &self.name));
            }
            files.push(file);
        }
        let tap = Tap { name: self.name, files, created: !existed };
        match self.persistent {
            Some(p) => tap.set_persistent(p)?,
            None if tap.created => tap.set_persistent(false)?,
            None => {}
        }
        Ok(tap)
    }
}

fn ioctl_err(op: &'static str, name: &str) -> TapError {
    TapError::Ioctl { op, name: name.to_string(), source: io::Error::last_os_error() }
}

/// The index of the interface `name` in the calling thread's namespace.
pub(crate) fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// An open TAP device: one file per queue.
#[derive(Debug)]
pub struct Tap {
    name: String,
    files: Vec<File>,
    created: bool,
}

impl Tap {
    /// Options for the TAP called `name` (vnet header on, one queue).
    pub fn builder(name: &str) -> TapBuilder {
        TapBuilder {
            name: name.to_string(),
            queues: 1,
            multi_queue: None,
            vnet_hdr: true,
            persistent: None,
        }
    }

    /// Attaches to or creates a single-queue TAP with the vnet header.
    pub fn open(name: &str) -> Result<Tap> {
        Tap::builder(name).open()
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when this call made the device (it did not exist before).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The queue files, in queue order (non-blocking, close-on-exec).
    pub fn queues(&self) -> &[File] {
        &self.files
    }

    /// Queue `i`'s file descriptor.
    pub fn queue_fd(&self, i: usize) -> Option<BorrowedFd<'_>> {
        self.files.get(i).map(|f| f.as_fd())
    }

    /// Takes the queue files, e.g. to hand them to a device.
    pub fn into_queues(self) -> Vec<File> {
        self.files
    }

    fn first(&self) -> i32 {
        self.files[0].as_raw_fd()
    }

    /// Sets the offloads the guest negotiated (`TUNSETOFFLOAD`): checksum, TSO over IPv4 and
    /// IPv6, UFO. Segmentation offloads need checksum offload, so they are dropped without it.
    pub fn set_offload(&self, csum: bool, tso4: bool, tso6: bool, ufo: bool) -> Result<()> {
        let flags = offload_flags(csum, tso4, tso6, ufo);
        for f in &self.files {
            // SAFETY: TUNSETOFFLOAD takes its flags by value; the fd is an open TAP queue.
            let rc =
                unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
            if rc < 0 {
                return Err(ioctl_err("TUNSETOFFLOAD", &self.name));
            }
        }
        Ok(())
    }

    /// Sets the virtio-net header size the queues carry (10, or 12 with mergeable buffers or
    /// VIRTIO 1.0).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<()> {
        for f in &self.files {
            // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which is valid.
            let rc =
                unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size as *const i32) };
            if rc < 0 {
                return Err(ioctl_err("TUNSETVNETHDRSZ", &self.name));
            }
        }
        Ok(())
    }

    /// Makes the device persistent (it stays after its files close) or not.
    pub fn set_persistent(&self, on: bool) -> Result<()> {
        // SAFETY: TUNSETPERSIST takes its flag by value; the fd is an open TAP queue.
        let rc = unsafe { libc::ioctl(self.first(), libc::TUNSETPERSIST, on as libc::c_ulong) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETPERSIST", &self.name));
        }
        Ok(())
    }
}

/// The `TUN_F_*` bits for a set of negotiated offloads.
pub fn offload_flags(csum: bool, tso4: bool, tso6: bool, ufo: bool) -> u32 {
    if !csum {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if tso4 {
        flags |= libc::TUN_F_TSO4;
    }
    if tso6 {
        flags |= libc::TUN_F_TSO6;
    }
    if ufo {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_need_checksum() {
        assert_eq!(offload_flags(false, true, true, true), 0);
        assert_eq!(offload_flags(true, false, false, false), libc::TUN_F_CSUM);
        assert_eq!(
            offload_flags(true, true, true, false),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }

    #[test]
    fn ifreq_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
