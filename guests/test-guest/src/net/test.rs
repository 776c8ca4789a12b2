//! `test=net`: bring the NIC up, take an address, ping, optionally forge our source addresses,
//! and serve.
//!
//! ```text
//! test=net ip=dhcp|A.B.C.D/NN [gw=G] [ping=X[,Y...]] [count=N] [wait=S]
//!          [tcp=X:PORT] [spoof_ip=A.B.C.D] [spoof_mac=aa:bb:cc:dd:ee:ff] [serve=S]
//! ```
//!
//! Prints `net mac=<mac>`, then `net lease <ip>/<prefix>[ gw <router>]` (DHCP) or
//! `net ip <ip>/<prefix>`; for each ping target `net ping <X> ok <replies>/<N>` or
//! `net ping <X> lost 0/<N>` (each echo waits up to `wait` seconds, default 10). `tcp=X:PORT`
//! sends a SYN and prints `net tcp <X>:<PORT> open` (SYN-ACK), `closed` (RST) or `timeout`. With
//! `spoof_ip=` the targets are pinged again from that source address (`net spoof-ip ping ...`),
//! with `spoof_mac=` from that source MAC (`net spoof-mac ping ...`), then once more with the
//! real ones. `serve=S` then answers ARP and pings for S seconds (0: until the VM is stopped),
//! after printing `net serving`; at its end `net served <answers>`.

use super::{dhcp, ip_str, mac_str, Ip, Mac, Stack};
use crate::serial::{say, Line};
use crate::virtio::net::Net;
use crate::virtio::{arg, arg_u64};

/// `A.B.C.D`.
pub fn parse_ip(s: &[u8]) -> Option<Ip> {
    let mut ip = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for b in ip.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        *b = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &[u8]) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(|&b| b == b':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        *b = (hex(p[0])? * 16 + hex(p[1])?) as u8;
    }
    parts.next().is_none().then_some(mac)
}

/// Pings every target of the comma-separated list and prints a line each.
fn ping_all(s: &mut Stack, targets: &[u8], what: &str, count: u16, wait_ms: u64) {
    for t in targets.split(|&b| b == b',').filter(|t| !t.is_empty()) {
        let Some(ip) = parse_ip(t) else {
            Line::new().s("net: bad ping target ").bytes(t).print();
            continue;
        };
        let got = s.ping(ip, count, wait_ms);
        let mut line = Line::new();
        line.s("net ").s(what).s(" ");
        ip_str(&mut line, ip);
        line.s(if got > 0 { " ok " } else { " lost " });
        line.dec(got.into()).s("/").dec(count.into()).print();
    }
}

/// `test=net`.
pub fn run(cmdline: &[u8]) {
    let Some(nic) = Net::open(cmdline, 32, 0) else { return };
    let mut s = Stack::new(nic);
    mac_str(Line::new().s("net mac="), s.mac).print();
    match arg(cmdline, b"ip") {
        Some(b"dhcp") => match dhcp::acquire(&mut s, arg_u64(cmdline, b"dhcp_tries", 10) as u32) {
            Some(lease) => {
                s.ip = lease.ip;
                s.prefix = lease.prefix;
                s.gw = lease.router;
                let mut line = Line::new();
                ip_str(line.s("net lease "), lease.ip).s("/").dec(lease.prefix.into());
                if lease.router != [0; 4] {
                    ip_str(line.s(" gw "), lease.router);
                }
                line.print();
            }
            None => return say("net: no DHCP lease"),
        },
        Some(spec) => {
            let (addr, prefix) = match spec.iter().position(|&b| b == b'/') {
                Some(i) => (&spec[..i], crate::virtio::parse_number(&spec[i + 1..])),
                None => (spec, Some(24)),
            };
            let (Some(ip), Some(prefix)) = (parse_ip(addr), prefix.filter(|p| *p <= 32)) else {
                return Line::new().s("net: bad ip=").bytes(spec).print();
            };
            s.ip = ip;
            s.prefix = prefix as u8;
            ip_str(Line::new().s("net ip "), ip).s("/").dec(prefix).print();
        }
        None => return say("net: ip=dhcp or ip=A.B.C.D/NN is needed"),
    }
    if let Some(gw) = arg(cmdline, b"gw").and_then(parse_ip) {
        s.gw = gw;
    }
    let count = arg_u64(cmdline, b"count", 3).clamp(1, 1000) as u16;
    let wait_ms = arg_u64(cmdline, b"wait", 10).max(1) * 1000;
    let targets = arg(cmdline, b"ping").unwrap_or(b"");
    ping_all(&mut s, targets, "ping", count, wait_ms);
    if let Some(spec) = arg(cmdline, b"tcp") {
        let colon = spec.iter().position(|&b| b == b':').unwrap_or(spec.len());
        let ip = parse_ip(&spec[..colon]);
        let port = spec.get(colon + 1..).and_then(crate::virtio::parse_number);
        match (ip, port.filter(|p| (1..=65535).contains(p))) {
            (Some(ip), Some(port)) => {
                let answer = match s.tcp_probe(ip, port as u16, wait_ms) {
                    Some(true) => " open",
                    Some(false) => " closed",
                    None => " timeout",
                };
                ip_str(Line::new().s("net tcp "), ip).s(":").dec(port).s(answer).print();
            }
            _ => Line::new().s("net: bad tcp=").bytes(spec).print(),
        }
    }

    let mut forged = false;
    if let Some(ip) = arg(cmdline, b"spoof_ip").and_then(parse_ip) {
        let real = s.ip;
        s.ip = ip;
        ping_all(&mut s, targets, "spoof-ip ping", count, wait_ms);
        s.ip = real;
        forged = true;
    }
    if let Some(mac) = arg(cmdline, b"spoof_mac").and_then(parse_mac) {
        s.mac = mac;
        ping_all(&mut s, targets, "spoof-mac ping", count, wait_ms);
        s.mac = s.real_mac;
        forged = true;
    }
    if forged {
        ping_all(&mut s, targets, "ping", count, wait_ms);
    }

    if let Some(secs) = arg(cmdline, b"serve").and_then(crate::virtio::parse_number) {
        say("net serving");
        s.serve(secs * 1000);
        Line::new().s("net served ").dec(s.answered).print();
    }
}
