//! The host side of a virtio-net device: where transmitted frames go and received frames come
//! from.
//!
//! [`TapBackend`] is the real one: a TAP queue, normally with `IFF_VNET_HDR`, so each frame
//! carries the 12-byte virtio-net header and the host kernel does the checksum and segmentation
//! work the guest offloaded. [`DatagramBackend`] is a connected Unix datagram socket, one frame per
//! datagram; with `vnet_hdr` off it carries bare Ethernet frames (what a peer process or a
//! test sees on a wire), with it on it carries the header too, like a TAP. It lets the queue
//! handler be tested and benchmarked without root.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use crate::tap::{Tap, TapError};

/// Offloads the guest negotiated, as a TAP takes them (`TUNSETOFFLOAD`): which partial
/// checksums and segmented frames the backend may hand to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// The guest takes frames with a partial checksum (VIRTIO_NET_F_GUEST_CSUM).
    pub csum: bool,
    /// The guest takes TCP/IPv4 frames larger than the MTU (VIRTIO_NET_F_GUEST_TSO4).
    pub tso4: bool,
    /// The guest takes TCP/IPv6 frames larger than the MTU (VIRTIO_NET_F_GUEST_TSO6).
    pub tso6: bool,
}

/// A frame transport on the host side of the device.
pub trait NetBackend: Send + std::fmt::Debug {
    /// The descriptor that is readable when a frame can be received.
    fn raw_fd(&self) -> RawFd;
    /// Whether each frame carries the 12-byte virtio-net header in front.
    fn has_vnet_hdr(&self) -> bool;
    /// Receives one frame into `buf` (header first when [`has_vnet_hdr`]); an error of kind
    /// `WouldBlock` when there is none.
    ///
    /// [`has_vnet_hdr`]: NetBackend::has_vnet_hdr
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame (header first when [`has_vnet_hdr`](NetBackend::has_vnet_hdr)).
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Applies the offloads the guest negotiated (a backend without the header ignores them).
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;
    /// Takes part in receiving or not: the queue pair behind it was switched on or off by the
    /// driver (multiqueue). A multiqueue TAP stops steering frames to a disabled queue.
    fn set_enabled(&mut self, _on: bool) -> io::Result<()> {
        Ok(())
    }
}

/// One queue of a TAP device: with the vnet header (the [`Tap::builder`] default) the device
/// offers offloads; without it frames are bare and the device offers none.
#[derive(Debug)]
pub struct TapBackend {
    tap: Arc<Tap>,
    index: usize,
    vnet_hdr: bool,
}

/// `struct ifreq` as TUNGETIFF fills it: the name, then the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TapBackend {
    /// Uses the first queue of `tap`; when it carries the vnet header, sets the header size to
    /// the 12 bytes of a VERSION_1 device.
    pub fn new(tap: Tap) -> Result<Self, TapError> {
        Self::queue(Arc::new(tap), 0)
    }

    /// One backend per queue of a multiqueue `tap` (opened with [`TapBuilder::queues`]), for a
    /// device with as many queue pairs.
    ///
    /// [`TapBuilder::queues`]: crate::tap::TapBuilder::queues
    pub fn per_queue(tap: Tap) -> Result<Vec<Self>, TapError> {
        let tap = Arc::new(tap);
        (0..tap.queues().len()).map(|i| Self::queue(tap.clone(), i)).collect()
    }

    fn queue(tap: Arc<Tap>, index: usize) -> Result<Self, TapError> {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        let fd = tap.queues()[index].as_raw_fd();
        // SAFETY: TUNGETIFF writes a `struct ifreq` through the pointer; `req` is a live,
        // correctly sized and laid out `IfReq` for the duration of the call.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::Ioctl { op: "TUNGETIFF", name: tap.name().to_string(), source });
        }
        let vnet_hdr = i32::from(req.flags) & libc::IFF_VNET_HDR != 0;
        if vnet_hdr {
            tap.set_vnet_hdr_size(super::NET_HDR_LEN as i32)?;
        }
        Ok(Self { tap, index, vnet_hdr })
    }

    /// The TAP.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Which queue of the TAP this is.
    pub fn index(&self) -> usize {
        self.index
    }

    fn file(&self) -> &File {
        &self.tap.queues()[self.index]
    }
}

impl NetBackend for TapBackend {
    fn raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }

    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file().read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file().write(frame)
    }

    fn set_offloads(&mut self, o: Offloads) -> io::Result<()> {
        if !self.vnet_hdr {
            return Ok(());
        }
        self.tap.set_offload(o.csum, o.tso4, o.tso6, false).map_err(|e| match e {
            TapError::Ioctl { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }

    fn set_enabled(&mut self, on: bool) -> io::Result<()> {
        if self.tap.queues().len() < 2 {
            return Ok(());
        }
        let flags = if on { libc::IFF_ATTACH_QUEUE } else { libc::IFF_DETACH_QUEUE };
        let mut req =
            IfReq { name: [0; libc::IFNAMSIZ], flags: flags as libc::c_short, _pad: [0; 22] };
        // SAFETY: TUNSETQUEUE reads a `struct ifreq` through the pointer; `req` is a live,
        // correctly sized and laid out `IfReq` for the duration of the call.
        let rc = unsafe { libc::ioctl(self.file().as_raw_fd(), libc::TUNSETQUEUE, &mut req) };
        // Attaching an attached queue or detaching a detached one fails with EINVAL: fine.
        let err = io::Error::last_os_error();
        if rc < 0 && err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
        Ok(())
    }
}

/// A connected Unix datagram socket carrying one frame per datagram.
#[derive(Debug)]
pub struct DatagramBackend {
    socket: UnixDatagram,
    vnet_hdr: bool,
    offloads: Offloads,
}

impl DatagramBackend {
    /// Uses `socket` (made non-blocking here); with `vnet_hdr` each datagram starts with the
    /// virtio-net header.
    pub fn new(socket: UnixDatagram, vnet_hdr: bool) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self { socket, vnet_hdr, offloads: Offloads::default() })
    }

    /// A backend and the peer socket at the other end of the wire (left blocking).
    pub fn pair(vnet_hdr: bool) -> io::Result<(Self, UnixDatagram)> {
        let (ours, peer) = UnixDatagram::pair()?;
        Ok((Self::new(ours, vnet_hdr)?, peer))
    }

    /// The offloads last set.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }
}

impl NetBackend for DatagramBackend {
    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.socket.send(frame)
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.offloads = offloads;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_keep_frame_boundaries() {
        let (mut b, peer) = DatagramBackend::pair(false).unwrap();
        peer.send(&[1; 60]).unwrap();
        peer.send(&[2; 1514]).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(b.recv(&mut buf).unwrap(), 60);
        assert_eq!(b.recv(&mut buf).unwrap(), 1514);
        assert_eq!(b.recv(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        b.send(&[3; 64]).unwrap();
        assert_eq!(peer.recv(&mut buf).unwrap(), 64);
    }
}
