//! The protocol: one client message in, at most one reply out (RFC 2131 section 4.3), with no
//! sockets involved.
//!
//! Every packet is untrusted guest input. [`decode_request`] and [`DhcpCore::handle`] drop (and
//! count) anything that is not a well-formed Ethernet BOOTREQUEST carrying a client message
//! type: never a panic, whatever the bytes.
//!
//! The server is authoritative for its subnet, as libvirt's dnsmasq is (`dhcp-authoritative`):
//! a client in INIT-REBOOT asking for an address it may hold gets it back even if the lease
//! file was lost, and one asking for an address it may not hold gets a NAK.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::Decodable;

use super::leases::LeaseFileError;
use super::pool::Pool;
use super::{read_leases, sanitize_hostname, write_leases, DhcpConfig, DhcpError, Lease, MacAddr};

/// The DHCP client port replies go to.
pub const CLIENT_PORT: u16 = 68;

/// The BOOTP fixed header's length; the options' magic cookie follows it.
const FIXED_HEADER_LEN: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Why a packet was dropped without a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a BOOTP header plus the magic cookie.
    TooShort,
    /// The DHCP magic cookie is missing (plain BOOTP or junk).
    NoMagicCookie,
    /// The bytes do not parse as a DHCP message.
    Undecodable,
    /// `op` is not BOOTREQUEST.
    NotBootRequest,
    /// The hardware type is not Ethernet.
    NotEthernet,
    /// The hardware address length is not 6.
    BadHardwareLength,
    /// `chaddr` is all zeroes or a group address.
    BadMac,
    /// `giaddr` is set: relayed requests are not served.
    Relayed,
    /// No DHCP message type option.
    NoMessageType,
    /// A message type a client does not send (OFFER, ACK...), or one lacking a field its type
    /// requires.
    Unexpected,
    /// Addressed to another server (its server identifier is not ours).
    OtherServer,
    /// A DECLINE of an address neither offered nor leased to the client.
    NotYours,
}

/// Counters of what the server did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhcpStats {
    /// Packets received (parsed or not).
    pub received: u64,
    /// Packets dropped without a reply (see [`DropReason`]).
    pub dropped: u64,
    /// DISCOVERs left unanswered because no address was free.
    pub exhausted: u64,
    /// OFFERs sent.
    pub offers: u64,
    /// ACKs sent (leases and INFORM answers).
    pub acks: u64,
    /// NAKs sent.
    pub naks: u64,
    /// RELEASEs that ended a lease.
    pub releases: u64,
    /// DECLINEs that quarantined an address.
    pub declines: u64,
    /// Failed lease-file writes (the ACK that needed it is withheld; the write is retried).
    pub persist_errors: u64,
    /// Replies the socket failed to send.
    pub send_errors: u64,
    /// Why the last dropped packet was dropped.
    pub last_drop: Option<DropReason>,
}

/// Parses a received datagram into a DHCP message.
///
/// `dhcproto` 0.15 is not safe on hostile input: some of its option decoders panic on bad
/// lengths (`debug_assert!`s, `len - 1` underflows, unchecked slicing in classless static
/// routes), and it does not check the magic cookie. So the datagram is checked and rebuilt
/// first: the cookie must be there, and only the options a server reads (see
/// [`ACCEPTED_OPTIONS`]) are kept, each with a length its type allows; everything else (unknown
/// options, option overload, a truncated tail) is left out before `dhcproto` sees the bytes.
pub fn decode_request(bytes: &[u8]) -> Result<Message, DropReason> {
    let options_at = FIXED_HEADER_LEN + MAGIC_COOKIE.len();
    let cookie = bytes.get(FIXED_HEADER_LEN..options_at).ok_or(DropReason::TooShort)?;
    if cookie != MAGIC_COOKIE {
        return Err(DropReason::NoMagicCookie);
    }
    let mut clean = Vec::with_capacity(bytes.len() + 1);
    clean.extend_from_slice(&bytes[..options_at]);
    let mut rest = &bytes[options_at..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let Some((&len, tail)) = tail.split_first() else { break };
                let Some(value) = tail.get(..usize::from(len)) else { break };
                if option_allowed(code, value.len()) {
                    clean.extend_from_slice(&[code, len]);
                    clean.extend_from_slice(value);
                }
                rest = &tail[usize::from(len)..];
            }
        }
    }
    clean.push(255);
    Message::from_bytes(&clean).map_err(|_| DropReason::Undecodable)
}

/// The client options a server reads, with the value lengths each may have: host name (12),
/// requested address (50), lease time (51), message type (53), server identifier (54),
/// parameter request list (55), maximum message size (57), vendor class (60), client
/// identifier (61).
pub const ACCEPTED_OPTIONS: [(u8, RangeInclusive<usize>); 9] = [
    (12, 1..=255),
    (50, 4..=4),
    (51, 4..=4),
    (53, 1..=1),
    (54, 4..=4),
    (55, 1..=255),
    (57, 2..=2),
    (60, 1..=255),
    (61, 1..=255),
];

fn option_allowed(code: u8, len: usize) -> bool {
    ACCEPTED_OPTIONS.iter().any(|(c, lens)| *c == code && lens.contains(&len))
}

/// Where a reply to `request` goes (RFC 2131 section 4.1, no relays): a NAK is broadcast; a
/// client that has an address (`ciaddr`: renewing, rebinding, INFORM) gets it unicast; any other
/// is broadcast, since a client without an address cannot answer the ARP a unicast would need.
pub fn reply_destination(request: &Message, reply: &Message) -> SocketAddrV4 {
    let nak = reply.opts().has_msg_type(MessageType::Nak);
    if !nak && !request.ciaddr().is_unspecified() && !request.ciaddr().is_broadcast() {
        SocketAddrV4::new(request.ciaddr(), CLIENT_PORT)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    }
}

/// The DHCP server of one network without its socket: configuration, pool, lease file, counters.
#[derive(Debug)]
pub struct DhcpCore {
    config: DhcpConfig,
    pool: Pool,
    stats: DhcpStats,
    /// The pool changed since the lease file was last written.
    dirty: bool,
    last_error: Option<DhcpError>,
}

impl DhcpCore {
    /// Validates `config`, creates the lease file's directory if needed, reloads the leases it
    /// records (dropping expired and no longer valid ones) and rewrites it, so a server that
    /// cannot write its lease file fails here rather than at its first client.
    pub fn new(config: DhcpConfig, now: SystemTime) -> Result<Self, DhcpError> {
        config
            .validate()
            .map_err(|source| DhcpError::Config { interface: config.interface.clone(), source })?;
        if let Some(dir) = config.lease_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| DhcpError::LeaseFile {
                path: config.lease_file.clone(),
                source: LeaseFileError::Io { op: "create its directory", source },
            })?;
        }
        let (pool, _) = Pool::from_leases(&config, read_leases(&config.lease_file)?, now);
        let mut core =
            DhcpCore { config, pool, stats: DhcpStats::default(), dirty: true, last_error: None };
        core.persist()?;
        Ok(core)
    }

    /// The configuration served.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// The current leases, ordered by address (expired ones go at the next message or tick).
    pub fn leases(&self) -> Vec<Lease> {
        self.pool.leases()
    }

    /// The counters so far.
    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    /// Takes the last lease-file error, if one happened since the last call.
    pub fn take_error(&mut self) -> Option<DhcpError> {
        self.last_error.take()
    }

    pub(crate) fn count_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    /// Reclaims leases expired at `now` and retries a failed lease-file write; the server loop
    /// calls it about once a second.
    pub fn tick(&mut self, now: SystemTime) -> Result<(), DhcpError> {
        if self.pool.expire(now) {
            self.dirty = true;
        }
        if self.dirty {
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&mut self) -> Result<(), DhcpError> {
        write_leases(&self.config.lease_file, &self.pool.leases())?;
        self.dirty = false;
        Ok(())
    }

    /// Parses and handles one received datagram (see [`DhcpCore::handle`]).
    pub fn handle_packet(&mut self, bytes: &[u8], now: SystemTime) -> Option<Message> {
        match decode_request(bytes) {
            Ok(msg) => self.handle(&msg, now),
            Err(reason) => {
                self.count_drop(reason);
                None
            }
        }
    }

    /// Counts a received datagram that did not even parse.
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.stats.received += 1;
        self.drop_packet(reason);
    }

    pub(crate) fn record_persist_error(&mut self, e: DhcpError) {
        self.stats.persist_errors += 1;
        self.last_error = Some(e);
    }

    /// Handles one client message at `now` and returns the reply to send, if any. Lease changes
    /// are written to the lease file before the reply is returned; if that write fails, an ACK
    /// is withheld (the client will retry) and the error is kept for [`DhcpCore::take_error`].
    pub fn handle(&mut self, request: &Message, now: SystemTime) -> Option<Message> {
        self.stats.received += 1;
        let (mac, kind) = match check_request(request) {
            Ok(v) => v,
            Err(reason) => return self.drop_packet(reason),
        };
        if self.pool.expire(now) {
            self.dirty = true;
        }
        let reply = match kind {
            MessageType::Discover => self.discover(request, mac, now),
            MessageType::Request => self.request(request, mac, now),
            MessageType::Decline => self.decline(request, mac, now),
            MessageType::Release => self.release(request, mac),
            MessageType::Inform => self.inform(request, mac),
            _ => Err(DropReason::Unexpected),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(reason) => return self.drop_packet(reason),
        };
        if self.dirty {
            if let Err(e) = self.persist() {
                self.record_persist_error(e);
                if reply.as_ref().is_some_and(|r| r.opts().has_msg_type(MessageType::Ack)) {
                    return None;
                }
            }
        }
        match reply.as_ref().and_then(|r| r.opts().msg_type()) {
            Some(MessageType::Offer) => self.stats.offers += 1,
            Some(MessageType::Ack) => self.stats.acks += 1,
            Some(MessageType::Nak) => self.stats.naks += 1,
            _ => {}
        }
        reply
    }

    fn drop_packet(&mut self, reason: DropReason) -> Option<Message> {
        self.stats.dropped += 1;
        self.stats.last_drop = Some(reason);
        None
    }

    /// Checks the server identifier, if present, names us.
    fn for_us(&self, request: &Message) -> bool {
        server_id(request).is_none_or(|id| id == self.config.server_ip)
    }

    fn discover(
        &mut self,
        req: &Message,
        mac: MacAddr,
        now: SystemTime,
    ) -> Result<Option<Message>, DropReason> {
        let Some(ip) = self.pool.choose(&self.config, mac, requested_ip(req), now) else {
            self.stats.exhausted += 1;
            return Ok(None);
        };
        self.pool.hold_offer(mac, ip, now);
        let hostname = self.hostname_for(req, mac);
        Ok(Some(self.reply(req, mac, MessageType::Offer, ip, hostname)))
    }

    fn request(
        &mut self,
        req: &Message,
        mac: MacAddr,
        now: SystemTime,
    ) -> Result<Option<Message>, DropReason> {
        let ciaddr = Some(req.ciaddr()).filter(|a| !a.is_unspecified());
        // SELECTING carries a server identifier: if it is not ours, the client took another
        // server's offer and ours is void.
        if server_id(req).is_some_and(|id| id != self.config.server_ip) {
            self.pool.forget_offer(mac);
            return Err(DropReason::OtherServer);
        }
        // SELECTING and INIT-REBOOT name the address in option 50, RENEWING and REBINDING in
        // ciaddr.
        let ip = requested_ip(req).or(ciaddr).ok_or(DropReason::Unexpected)?;
        if !self.pool.acceptable(&self.config, mac, ip, now) {
            return Ok(Some(self.nak(req, mac)));
        }
        let hostname = self.hostname_for(req, mac);
        let expires = lease_end(now, self.config.lease_time);
        self.pool.grant(mac, ip, hostname.clone(), expires);
        self.dirty = true;
        Ok(Some(self.reply(req, mac, MessageType::Ack, ip, hostname)))
    }

    fn decline(
        &mut self,
        req: &Message,
        mac: MacAddr,
        now: SystemTime,
    ) -> Result<Option<Message>, DropReason> {
        if !self.for_us(req) {
            return Err(DropReason::OtherServer);
        }
        let ip = requested_ip(req).ok_or(DropReason::Unexpected)?;
        match self.pool.decline(mac, ip, now) {
            None => return Err(DropReason::NotYours),
            Some(lease_ended) => {
                self.dirty |= lease_ended;
                self.stats.declines += 1;
            }
        }
        Ok(None)
    }

    fn release(&mut self, req: &Message, mac: MacAddr) -> Result<Option<Message>, DropReason> {
        if !self.for_us(req) {
            return Err(DropReason::OtherServer);
        }
        if self.pool.release(mac, req.ciaddr()) {
            self.dirty = true;
            self.stats.releases += 1;
        }
        Ok(None)
    }

    fn inform(&mut self, req: &Message, mac: MacAddr) -> Result<Option<Message>, DropReason> {
        let ciaddr = req.ciaddr();
        if ciaddr.is_unspecified() || !self.config.is_host_in_subnet(ciaddr) {
            return Err(DropReason::Unexpected);
        }
        let mut reply = self.reply(req, mac, MessageType::Ack, Ipv4Addr::UNSPECIFIED, None);
        reply.set_ciaddr(ciaddr);
        for code in [OptionCode::AddressLeaseTime, OptionCode::Renewal, OptionCode::Rebinding] {
            reply.opts_mut().remove(code);
        }
        Ok(Some(reply))
    }

    /// The host name to record and hand out: the reservation's, else the one the client sent
    /// (if it is a plain label), else the one its lease already has.
    fn hostname_for(&self, req: &Message, mac: MacAddr) -> Option<String> {
        if let Some(r) = self.config.reservation_for(mac) {
            if r.hostname.is_some() {
                return r.hostname.clone();
            }
        }
        let sent = match req.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(name)) => sanitize_hostname(name),
            _ => None,
        };
        sent.or_else(|| self.pool.lease_of(mac).and_then(|l| l.hostname.clone()))
    }

    fn header(&self, req: &Message, mac: MacAddr, kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_chaddr(&mac.0)
            .set_xid(req.xid())
            .set_flags(req.flags());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(self.config.server_ip));
        m
    }

    fn nak(&self, req: &Message, mac: MacAddr) -> Message {
        let mut m = self.header(req, mac, MessageType::Nak);
        m.opts_mut().insert(DhcpOption::Message("requested address not available".into()));
        m
    }

    fn reply(
        &self,
        req: &Message,
        mac: MacAddr,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        hostname: Option<String>,
    ) -> Message {
        let c = &self.config;
        let mut m = self.header(req, mac, kind);
        m.set_yiaddr(yiaddr);
        let secs = u32::try_from(c.lease_time.as_secs()).unwrap_or(u32::MAX);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32));
        opts.insert(DhcpOption::SubnetMask(c.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(c.broadcast()));
        if let Some(router) = c.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !c.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(c.dns_servers.clone()));
        }
        if let Some(domain) = &c.domain_name {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
        if let Some(name) = hostname {
            opts.insert(DhcpOption::Hostname(name));
        }
        m
    }
}

/// The client MAC and message type of an acceptable request, or why it is dropped.
fn check_request(req: &Message) -> Result<(MacAddr, MessageType), DropReason> {
    if req.opcode() != Opcode::BootRequest {
        return Err(DropReason::NotBootRequest);
    }
    if req.htype() != HType::Eth {
        return Err(DropReason::NotEthernet);
    }
    // Checked before chaddr() is called: dhcproto slices chaddr by the wire's hlen.
    if req.hlen() != 6 {
        return Err(DropReason::BadHardwareLength);
    }
    let mac = MacAddr(req.chaddr().try_into().map_err(|_| DropReason::BadHardwareLength)?);
    if mac.is_zero() || mac.is_multicast() {
        return Err(DropReason::BadMac);
    }
    if !req.giaddr().is_unspecified() {
        return Err(DropReason::Relayed);
    }
    let kind = req.opts().msg_type().ok_or(DropReason::NoMessageType)?;
    Ok((mac, kind))
}

fn requested_ip(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// `now + lease_time`, in whole seconds (what the lease file keeps).
fn lease_end(now: SystemTime, lease_time: Duration) -> SystemTime {
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(now_secs.saturating_add(lease_time.as_secs()))
}

#[cfg(test)]
mod tests;
