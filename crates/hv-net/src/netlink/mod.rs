//! A small synchronous rtnetlink client: links (bridges, veth pairs, VXLAN, VLAN), addresses
//! and routes, spoken over one `NETLINK_ROUTE` socket.
//!
//! Messages are built and parsed with `netlink-packet-route` and sent on a plain blocking
//! `netlink-sys` socket: one request, then read until the kernel's ACK (or the end of a dump).
//! That keeps the API synchronous without an async runtime in the build.
//!
//! The socket belongs to the network namespace of the thread that opened it: open a
//! [`Netlink`] on a thread that joined a namespace to work inside that namespace.

mod addr;
pub mod conntrack;
mod link;

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use addr::{Address, Route};
pub use conntrack::{Connection, Conntrack};
pub use link::{Link, VxlanConfig};

/// Errors from netlink requests; each names the object it was about.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{op} {object}: {source}")]
    Request {
        /// What was asked (`create bridge`, `add address`...).
        op: &'static str,
        /// The object it was asked for (a link name, an address).
        object: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel lacks the feature (no driver for this link kind, or the option is compiled out).
    #[error("{what} is not supported by this kernel (for {object}: {source})")]
    Unsupported {
        /// The missing feature (`802.1Q VLAN devices`, `bridge VLAN filtering`).
        what: &'static str,
        /// The object that needed it.
        object: String,
        /// The errno the kernel gave.
        #[source]
        source: io::Error,
    },
    /// No link has this name.
    #[error("link {0} not found")]
    LinkNotFound(String),
    /// A link with the name exists but is of another kind, so it is not ours to reuse.
    #[error("link {name} exists as a {found} device, not a {wanted}")]
    KindMismatch {
        /// The link's name.
        name: String,
        /// Its kind as the kernel reports it.
        found: String,
        /// The kind that was asked for.
        wanted: &'static str,
    },
    /// A link name that is not an [`IfName`](crate::IfName) (1 to 15 of `A-Z a-z 0-9 _ - .`).
    #[error("invalid link name: {0}")]
    InvalidName(#[from] crate::InvalidIfName),
    /// A kernel reply that could not be parsed.
    #[error("unparsable netlink reply: {0}")]
    Decode(String),
}

/// Result of a netlink operation.
pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Checks an interface name given as text: it must be an [`IfName`](crate::IfName). Every
/// request that names a link checks it here first, so no name reaches the kernel (or an nft
/// rule made from a link) unchecked.
pub fn check_ifname(name: &str) -> Result<crate::IfName> {
    Ok(crate::IfName::new(name)?)
}

/// A synchronous rtnetlink handle bound to the calling thread's network namespace.
///
/// ```no_run
/// let mut nl = hv_net::netlink::Netlink::new()?;
/// nl.create_bridge("hvdemo")?;
/// nl.set_up("hvdemo")?;
/// nl.delete_link("hvdemo")?;
/// # Ok::<(), hv_net::netlink::NetlinkError>(())
/// ```
#[derive(Debug)]
pub struct Netlink {
    chan: Channel,
}

/// What the kernel answered to one request: the messages, or its errno.
type Answer<T> = std::result::Result<Vec<T>, io::Error>;

/// What the kernel answered to one rtnetlink request.
type Reply = Answer<RouteNetlinkMessage>;

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink> {
        Ok(Netlink { chan: Channel::open(NETLINK_ROUTE)? })
    }

    /// Sends one request with `NLM_F_ACK` and the extra `flags`; returns the kernel's errno as
    /// the inner error.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Reply> {
        self.chan.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags, false)
    }

    /// Sends a dump request and collects every message of the answer.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Reply> {
        self.chan.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP, true)
    }
}

/// One netlink socket of some protocol, in the network namespace of the thread that opened
/// it, and the sequence numbers of its requests.
struct Channel {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("seq", &self.seq).finish()
    }
}

impl Channel {
    /// Opens and connects a socket of netlink `protocol`.
    fn open(protocol: isize) -> Result<Channel> {
        let mut socket = Socket::new(protocol).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        Ok(Channel { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` and reads the answer: until the ACK (or the end of a `dump`),
    /// or the kernel's errno as the inner error.
    fn exchange<T>(&mut self, msg: T, flags: u16, dump: bool) -> Result<Answer<T>>
    where
        T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(NetlinkError::Socket)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(NetlinkError::Socket)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply: NetlinkMessage<T> = NetlinkMessage::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            Some(_) => return Ok(Err(e.to_io())),
                            None if !dump => return Ok(Ok(out)),
                            None => {}
                        },
                        NetlinkPayload::Done(_) => return Ok(Ok(out)),
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
    }
}

/// Turns a kernel errno into the error for `op` on `object`.
fn fail(op: &'static str, object: &str, source: io::Error) -> NetlinkError {
    NetlinkError::Request { op, object: object.to_string(), source }
}

/// True for the errno values a kernel gives when a driver or option is missing.
fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOENT) | Some(libc::EPROTONOSUPPORT)
    )
}
