//! A DHCP client (RFC 2131, the INIT -> SELECTING -> REQUESTING -> BOUND path only): DISCOVER,
//! take the first OFFER for our transaction, REQUEST it from that server, wait for the ACK
//! (a NAK starts over). Everything is broadcast from 0.0.0.0 with the broadcast flag set, so
//! the server's answers need no ARP. No renewals: tests are short.

use super::{put_eth, put_ipv4, Ip, Stack, BROADCAST_MAC, ETH_IPV4, PROTO_UDP};
use crate::io::rdtsc;

/// The client's UDP port.
pub const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// The fixed BOOTP part before the cookie.
const BOOTP_LEN: usize = 236;
/// The smallest BOOTP message some servers accept.
const MIN_MESSAGE: usize = 300;

/// What a server's reply says.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// Transaction ID.
    pub xid: u32,
    /// Message type (option 53).
    pub kind: u8,
    /// `yiaddr`: the address offered or acknowledged.
    pub yiaddr: Ip,
    /// The server identifier (option 54).
    pub server: Ip,
    /// Prefix length from the subnet mask (option 1), 24 when absent.
    pub prefix: u8,
    /// The first router (option 3), 0.0.0.0 when absent.
    pub router: Ip,
}

/// A lease.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Our address.
    pub ip: Ip,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway (0.0.0.0 for none).
    pub router: Ip,
}

fn ip4(b: &[u8]) -> Ip {
    [b[0], b[1], b[2], b[3]]
}

/// Parses a BOOTP reply (UDP payload); `None` unless it is a well-formed DHCP reply.
pub fn parse(m: &[u8]) -> Option<Reply> {
    if m.len() < BOOTP_LEN + 4 || m[0] != 2 || m[BOOTP_LEN..BOOTP_LEN + 4] != COOKIE {
        return None;
    }
    let mut r = Reply {
        xid: u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
        kind: 0,
        yiaddr: ip4(&m[16..20]),
        server: [0; 4],
        prefix: 24,
        router: [0; 4],
    };
    let mut i = BOOTP_LEN + 4;
    while i < m.len() {
        let code = m[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 || i + 1 >= m.len() {
            break;
        }
        let len = usize::from(m[i + 1]);
        let v = m.get(i + 2..i + 2 + len)?;
        match (code, len) {
            (53, 1) => r.kind = v[0],
            (54, 4) => r.server = ip4(v),
            (1, 4) => r.prefix = u32::from_be_bytes([v[0], v[1], v[2], v[3]]).count_ones() as u8,
            (3, l) if l >= 4 => r.router = ip4(v),
            _ => {}
        }
        i += 2 + len;
    }
    (r.kind != 0).then_some(r)
}

/// Sends a DISCOVER (`requested`/`server` zero) or a REQUEST for `requested` from `server`.
fn send(stack: &mut Stack, xid: u32, kind: u8, requested: Ip, server: Ip) {
    let mac = stack.mac;
    let Some((slot, t)) = stack.nic.tx_frame() else { return };
    let udp_len = 8 + MIN_MESSAGE;
    put_eth(t, BROADCAST_MAC, mac, ETH_IPV4);
    put_ipv4(t, [0; 4], [255; 4], PROTO_UDP, udp_len);
    let u = &mut t[34..34 + udp_len];
    u[..8].fill(0);
    u[0..2].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    u[2..4].copy_from_slice(&SERVER_PORT.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4).
    let m = &mut u[8..];
    m.fill(0);
    m[0..4].copy_from_slice(&[1, 1, 6, 0]); // BOOTREQUEST, Ethernet, 6-byte addresses
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10] = 0x80; // broadcast flag: answer by broadcast, we have no address yet
    m[28..34].copy_from_slice(&mac);
    m[BOOTP_LEN..BOOTP_LEN + 4].copy_from_slice(&COOKIE);
    let mut o = BOOTP_LEN + 4;
    m[o..o + 3].copy_from_slice(&[53, 1, kind]);
    o += 3;
    if kind == REQUEST {
        m[o..o + 2].copy_from_slice(&[50, 4]);
        m[o + 2..o + 6].copy_from_slice(&requested);
        m[o + 6..o + 8].copy_from_slice(&[54, 4]);
        m[o + 8..o + 12].copy_from_slice(&server);
        o += 12;
    }
    m[o..o + 4].copy_from_slice(&[55, 2, 1, 3]); // ask for the subnet mask and router
    m[o + 4] = 255;
    stack.nic.send(slot, 34 + udp_len);
}

/// Waits up to `ms` for a reply of transaction `xid` whose type is in `kinds`.
fn wait(stack: &mut Stack, xid: u32, kinds: &[u8], ms: u64) -> Option<Reply> {
    let end = stack.deadline_ms(ms);
    stack.dhcp_in = None;
    while !Stack::passed(end) {
        stack.poll();
        if let Some(r) = stack.dhcp_in.take() {
            if r.xid == xid && kinds.contains(&r.kind) {
                return Some(r);
            }
        }
    }
    None
}

/// Gets a lease, trying up to `attempts` times (each DISCOVER waits 2 s for an offer).
pub fn acquire(stack: &mut Stack, attempts: u32) -> Option<Lease> {
    let m = stack.mac;
    let seed = u32::from_be_bytes([m[2], m[3], m[4], m[5]]);
    for attempt in 0..attempts {
        let xid = seed ^ (rdtsc() as u32) ^ attempt;
        send(stack, xid, DISCOVER, [0; 4], [0; 4]);
        let Some(offer) = wait(stack, xid, &[OFFER], 2000) else { continue };
        send(stack, xid, REQUEST, offer.yiaddr, offer.server);
        let Some(ack) = wait(stack, xid, &[ACK, NAK], 4000) else { continue };
        if ack.kind == ACK && ack.yiaddr != [0; 4] {
            return Some(Lease { ip: ack.yiaddr, prefix: ack.prefix, router: ack.router });
        }
    }
    None
}
