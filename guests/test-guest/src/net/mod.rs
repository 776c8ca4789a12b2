//! A tiny IPv4 stack on the virtio-net driver, enough for the network tests: Ethernet, ARP
//! (answers requests for our address, resolves next hops into a small cache), IPv4, ICMP echo
//! (answers requests, sends its own and matches the replies) and UDP for a DHCP client
//! ([`dhcp`]). Everything is polled; frames are handled in place in their RX slot and answers
//! are built straight in a TX slot.
//!
//! - `test=net` ([`test::run`]): address by DHCP or static, pings, spoofing, serving.
//! - `test=net-bench` ([`bench::run`]): guest-to-host frames as fast as the device takes them.
//! - `test=net-txonly` ([`txonly::run`]): a driver that makes only the transmit queue ready.
//!
//! Time is the TSC, at a rate from CPUID when it says (else an assumed 2.5 GHz): timeouts are
//! generous seconds, and guest code here is slow anyway (CPL0 is emulated on PVM hosts).

pub mod bench;
pub mod dhcp;
pub mod test;
pub mod txonly;

use crate::io::rdtsc;
use crate::serial::Line;
use crate::virtio::net::Net;

/// An IPv4 address.
pub type Ip = [u8; 4];
/// A MAC address.
pub type Mac = [u8; 6];

/// The broadcast MAC.
pub const BROADCAST_MAC: Mac = [0xff; 6];
const ETH_ARP: u16 = 0x0806;
pub(crate) const ETH_IPV4: u16 = 0x0800;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
/// TCP flags.
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// The source port of our TCP probes.
const TCP_PORT: u16 = 40000;
pub(crate) const PROTO_UDP: u8 = 17;
/// The ICMP echo identifier of our own pings.
const ECHO_ID: u16 = 0x4876;
/// Bytes of ICMP echo payload in our pings.
const ECHO_PAYLOAD: usize = 32;
const ARP_CACHE: usize = 8;

/// TSC ticks per second: CPUID leaf 0x15 (crystal ratio) or 0x16 (base MHz) when the CPU
/// reports them, else 2.5 GHz. Only timeouts depend on it.
pub fn tsc_hz() -> u64 {
    // cpuid has no side effects; leaf 0 gives the highest standard leaf.
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0x15 {
        let r = core::arch::x86_64::__cpuid(0x15);
        if r.eax != 0 && r.ebx != 0 && r.ecx != 0 {
            return u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax);
        }
    }
    if max >= 0x16 {
        let mhz = core::arch::x86_64::__cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return u64::from(mhz) * 1_000_000;
        }
    }
    2_500_000_000
}

/// Big-endian 16 bits at `off`.
pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes an Ethernet header.
pub fn put_eth(f: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    put16(f, 12, ethertype);
}

/// Writes a 20-byte IPv4 header at 14 for `payload` bytes of `proto`, with its checksum.
pub fn put_ipv4(f: &mut [u8], src: Ip, dst: Ip, proto: u8, payload: usize) {
    let h = &mut f[14..34];
    h[0] = 0x45;
    h[1] = 0;
    put16(h, 2, (20 + payload) as u16);
    put16(h, 4, 0);
    put16(h, 6, 0x4000); // don't fragment
    h[8] = 64;
    h[9] = proto;
    put16(h, 10, 0);
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = checksum(h);
    put16(h, 10, c);
}

/// `a` and `b` are in the same subnet of `prefix` bits.
fn same_subnet(a: Ip, b: Ip, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    (u32::from_be_bytes(a) & mask) == (u32::from_be_bytes(b) & mask)
}

/// Appends `a.b.c.d` to a line.
pub fn ip_str(line: &mut Line, ip: Ip) -> &mut Line {
    line.dec(ip[0].into())
        .s(".")
        .dec(ip[1].into())
        .s(".")
        .dec(ip[2].into())
        .s(".")
        .dec(ip[3].into())
}

/// Appends `aa:bb:cc:dd:ee:ff` to a line.
pub fn mac_str(line: &mut Line, mac: Mac) -> &mut Line {
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            line.s(":");
        }
        let digits =
            [b"0123456789abcdef"[usize::from(b >> 4)], b"0123456789abcdef"[usize::from(b & 15)]];
        line.bytes(&digits);
    }
    line
}

/// The stack: the NIC, our addresses (the source ones may be forged by a test), the ARP cache
/// and what the last frames told us.
pub struct Stack {
    /// The device.
    pub nic: Net,
    /// The device's own MAC.
    pub real_mac: Mac,
    /// The MAC our frames carry (a test may forge it).
    pub mac: Mac,
    /// The address our packets carry and we answer for (0.0.0.0 before DHCP).
    pub ip: Ip,
    /// Prefix length of our subnet.
    pub prefix: u8,
    /// The default gateway (0.0.0.0 for none).
    pub gw: Ip,
    arp: [(Ip, Mac); ARP_CACHE],
    arp_next: usize,
    /// The last echo reply to one of our pings: (from, sequence).
    pub echo_reply: Option<(Ip, u16)>,
    /// The last DHCP reply seen.
    pub dhcp_in: Option<dhcp::Reply>,
    /// The answer to our last TCP SYN: (from, port, flags).
    pub tcp_answer: Option<(Ip, u16, u8)>,
    /// Echo requests and ARP requests we answered.
    pub answered: u64,
    /// TSC ticks per second.
    pub hz: u64,
    /// The sequence number of our last echo request.
    seq: u16,
}

impl Stack {
    /// A stack on `nic` with no address yet.
    pub fn new(nic: Net) -> Stack {
        let mac = nic.mac;
        Stack {
            nic,
            real_mac: mac,
            mac,
            ip: [0; 4],
            prefix: 24,
            gw: [0; 4],
            arp: [([0; 4], [0; 6]); ARP_CACHE],
            arp_next: 0,
            echo_reply: None,
            dhcp_in: None,
            tcp_answer: None,
            answered: 0,
            hz: tsc_hz(),
            seq: 0,
        }
    }

    /// The TSC value `millis` milliseconds from now.
    pub fn deadline_ms(&self, millis: u64) -> u64 {
        rdtsc().wrapping_add(self.hz / 1000 * millis)
    }

    /// Whether the TSC has passed `deadline`.
    pub fn passed(deadline: u64) -> bool {
        (rdtsc().wrapping_sub(deadline) as i64) >= 0
    }

    /// Handles every frame that has arrived; returns how many.
    pub fn poll(&mut self) -> u32 {
        let mut n = 0;
        while let Some((slot, frame)) = self.nic.recv() {
            // Copy out what `handle` needs: the frame borrows the NIC.
            let len = frame.len();
            let addr = frame.as_mut_ptr();
            // SAFETY: the slot stays ours until `release` below; `handle` uses the NIC only
            // for TX slots, which are other memory.
            let frame = unsafe { core::slice::from_raw_parts_mut(addr, len) };
            self.handle(frame);
            self.nic.release(slot);
            n += 1;
        }
        if n > 0 {
            self.nic.flush_rx();
        }
        self.nic.reap_tx();
        n
    }

    fn handle(&mut self, f: &[u8]) {
        if f.len() < 14 {
            return;
        }
        let dst = &f[0..6];
        if dst != self.mac && dst != self.real_mac && dst != BROADCAST_MAC {
            return;
        }
        match be16(f, 12) {
            ETH_ARP => self.arp_in(f),
            ETH_IPV4 => self.ipv4_in(f),
            _ => {}
        }
    }

    fn learn(&mut self, ip: Ip, mac: Mac) {
        if ip == [0; 4] {
            return;
        }
        if let Some(e) = self.arp.iter_mut().find(|e| e.0 == ip) {
            e.1 = mac;
            return;
        }
        self.arp[self.arp_next] = (ip, mac);
        self.arp_next = (self.arp_next + 1) % ARP_CACHE;
    }

    fn arp_in(&mut self, f: &[u8]) {
        if f.len() < 42 || be16(f, 14) != 1 || be16(f, 16) != ETH_IPV4 || f[18] != 6 || f[19] != 4 {
            return;
        }
        let op = be16(f, 20);
        let mut sha = [0u8; 6];
        sha.copy_from_slice(&f[22..28]);
        let mut spa = [0u8; 4];
        spa.copy_from_slice(&f[28..32]);
        let for_us = self.ip != [0; 4] && f[38..42] == self.ip;
        if op == 2 || for_us {
            self.learn(spa, sha);
        }
        if op == 1 && for_us {
            self.send_arp(2, sha, spa);
            self.answered += 1;
        }
    }

    /// Sends an ARP request (`op` 1, to broadcast) or reply (`op` 2) about our address.
    fn send_arp(&mut self, op: u16, target_mac: Mac, target_ip: Ip) {
        let (mac, ip) = (self.mac, self.ip);
        let Some((slot, t)) = self.nic.tx_frame() else { return };
        let dst = if op == 1 { BROADCAST_MAC } else { target_mac };
        put_eth(t, dst, mac, ETH_ARP);
        t[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        t[22..28].copy_from_slice(&mac);
        t[28..32].copy_from_slice(&ip);
        t[32..38].copy_from_slice(if op == 1 { &[0; 6] } else { &target_mac });
        t[38..42].copy_from_slice(&target_ip);
        // Pad to the 60-byte minimum (the TAP side does not pad for us).
        t[42..60].fill(0);
        self.nic.send(slot, 60);
    }

    fn ipv4_in(&mut self, f: &[u8]) {
        if f.len() < 34 || f[14] >> 4 != 4 {
            return;
        }
        let ihl = usize::from(f[14] & 15) * 4;
        let total = usize::from(be16(f, 16));
        if ihl < 20 || total < ihl || 14 + total > f.len() {
            return;
        }
        let dst = &f[30..34];
        let to_us = dst == self.ip;
        let broadcast = dst == [255; 4];
        let l4 = 14 + ihl;
        let end = 14 + total;
        match f[23] {
            PROTO_ICMP if to_us && end >= l4 + 8 => match f[l4] {
                8 => self.echo_answer(f, l4, end),
                0 if be16(f, l4 + 4) == ECHO_ID => {
                    let mut src = [0u8; 4];
                    src.copy_from_slice(&f[26..30]);
                    self.echo_reply = Some((src, be16(f, l4 + 6)));
                }
                _ => {}
            },
            PROTO_TCP if to_us && end >= l4 + 20 && be16(f, l4 + 2) == TCP_PORT => {
                let mut src = [0u8; 4];
                src.copy_from_slice(&f[26..30]);
                self.tcp_answer = Some((src, be16(f, l4), f[l4 + 13]));
            }
            PROTO_UDP if (to_us || broadcast || self.ip == [0; 4]) && end >= l4 + 8 => {
                if be16(f, l4 + 2) == dhcp::CLIENT_PORT {
                    if let Some(r) = dhcp::parse(&f[l4 + 8..end]) {
                        self.dhcp_in = Some(r);
                    }
                }
            }
            _ => {}
        }
    }

    /// Answers an echo request: the same frame with addresses swapped, type 0, the checksum
    /// adjusted (RFC 1624: type 8 -> 0 takes 0x0800 off the sum).
    fn echo_answer(&mut self, f: &[u8], l4: usize, end: usize) {
        let mac = self.mac;
        let Some((slot, t)) = self.nic.tx_frame() else { return };
        t[..end].copy_from_slice(&f[..end]);
        t[0..6].copy_from_slice(&f[6..12]);
        t[6..12].copy_from_slice(&mac);
        t[26..30].copy_from_slice(&f[30..34]);
        t[30..34].copy_from_slice(&f[26..30]);
        t[l4] = 0;
        let mut sum = u32::from(be16(f, l4 + 2)) + 0x0800;
        sum = (sum & 0xffff) + (sum >> 16);
        put16(t, l4 + 2, sum as u16);
        self.nic.send(slot, end.max(60));
        self.answered += 1;
    }

    /// The MAC of the next hop to `ip`, if known; otherwise sends an ARP request for it.
    pub fn resolve(&mut self, ip: Ip) -> Option<Mac> {
        let hop =
            if same_subnet(ip, self.ip, self.prefix) || self.gw == [0; 4] { ip } else { self.gw };
        if let Some(e) = self.arp.iter().find(|e| e.0 == hop) {
            return Some(e.1);
        }
        self.send_arp(1, [0; 6], hop);
        None
    }

    /// Sends echo request `seq` to `ip` through `next_hop`.
    fn send_echo(&mut self, next_hop: Mac, ip: Ip, seq: u16) {
        let (mac, src) = (self.mac, self.ip);
        let Some((slot, t)) = self.nic.tx_frame() else { return };
        let len = 8 + ECHO_PAYLOAD;
        put_eth(t, next_hop, mac, ETH_IPV4);
        put_ipv4(t, src, ip, PROTO_ICMP, len);
        let icmp = &mut t[34..34 + len];
        icmp[..8].copy_from_slice(&[8, 0, 0, 0, (ECHO_ID >> 8) as u8, ECHO_ID as u8, 0, 0]);
        put16(icmp, 6, seq);
        for (i, b) in icmp[8..].iter_mut().enumerate() {
            *b = b'a' + (i % 26) as u8;
        }
        let c = checksum(icmp);
        put16(icmp, 2, c);
        self.nic.send(slot, 34 + len);
    }

    /// Sends a TCP SYN to `ip`:`port` (no options, checksum over the pseudo-header).
    fn send_syn(&mut self, next_hop: Mac, ip: Ip, port: u16) {
        let (mac, src) = (self.mac, self.ip);
        let Some((slot, t)) = self.nic.tx_frame() else { return };
        put_eth(t, next_hop, mac, ETH_IPV4);
        put_ipv4(t, src, ip, PROTO_TCP, 20);
        // The pseudo-header (addresses, protocol, length) in front of the segment, for the
        // checksum; the Ethernet header's tail is free to hold it.
        let mut pseudo = [0u8; 32];
        pseudo[0..4].copy_from_slice(&src);
        pseudo[4..8].copy_from_slice(&ip);
        pseudo[9] = PROTO_TCP;
        pseudo[11] = 20;
        let tcp = &mut pseudo[12..32];
        put16(tcp, 0, TCP_PORT);
        put16(tcp, 2, port);
        tcp[4..8].copy_from_slice(&0x4876_0000u32.to_be_bytes()); // sequence number
        tcp[12] = 5 << 4; // 20-byte header
        tcp[13] = TCP_SYN;
        put16(tcp, 14, 64240); // window
        let c = checksum(&pseudo);
        put16(&mut pseudo[12..32], 16, c);
        t[34..54].copy_from_slice(&pseudo[12..32]);
        self.nic.send(slot, 60);
    }

    /// Opens (half of) a TCP connection to `ip`:`port`: a SYN, resent every second, until a
    /// SYN-ACK (`Some(true)`: a listener answered) or a RST (`Some(false)`: the host answered,
    /// nothing listens) comes back, or `wait_ms` pass (`None`). No connection is completed.
    pub fn tcp_probe(&mut self, ip: Ip, port: u16, wait_ms: u64) -> Option<bool> {
        let give_up = self.deadline_ms(wait_ms);
        let mut resend = 0u64;
        self.tcp_answer = None;
        loop {
            self.poll();
            if let Some((from, from_port, flags)) = self.tcp_answer.take() {
                if from == ip && from_port == port {
                    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                        return Some(true);
                    }
                    if flags & TCP_RST != 0 {
                        return Some(false);
                    }
                }
            }
            if Self::passed(give_up) {
                return None;
            }
            if Self::passed(resend) {
                resend = self.deadline_ms(1000);
                match self.resolve(ip) {
                    Some(mac) => self.send_syn(mac, ip, port),
                    None => resend = self.deadline_ms(200),
                }
            }
        }
    }

    /// Pings `ip` `count` times, each echo waiting up to `wait_ms` for its reply (resending
    /// the ARP request or the echo every second meanwhile); answers others all the while.
    /// Returns the replies received.
    pub fn ping(&mut self, ip: Ip, count: u16, wait_ms: u64) -> u16 {
        let mut ok = 0;
        for _ in 0..count {
            // Sequence numbers run on across calls, so a late reply to an earlier ping is
            // never taken for this one.
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let give_up = self.deadline_ms(wait_ms);
            let mut resend = 0u64;
            loop {
                self.poll();
                if self.echo_reply == Some((ip, seq)) {
                    ok += 1;
                    break;
                }
                if Self::passed(give_up) {
                    break;
                }
                if Self::passed(resend) {
                    resend = self.deadline_ms(1000);
                    if let Some(mac) = self.resolve(ip) {
                        self.send_echo(mac, ip, seq);
                    } else {
                        // Try again soon after the ARP reply comes.
                        resend = self.deadline_ms(200);
                    }
                }
            }
        }
        ok
    }

    /// Answers ARP and pings for `ms` milliseconds (0: forever).
    pub fn serve(&mut self, ms: u64) {
        let end = self.deadline_ms(ms);
        let mut spins = 0u32;
        while ms == 0 || !Self::passed(end) {
            if self.poll() == 0 {
                spins += 1;
                if spins & 0xfff == 0 {
                    // A lost notification must not stop the RX queue for good.
                    self.nic.renotify();
                }
            }
        }
    }
}
