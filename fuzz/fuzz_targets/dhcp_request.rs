//! DHCP packets come from guests: decoding and answering a sequence of them must never panic,
//! and every lease handed out stays inside the network's range.
//!
//! Input: u16-length-prefixed packets, handled in order by one server (so a REQUEST can follow
//! the DISCOVER it answers).
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, UNIX_EPOCH};

use hv_fuzz::{scratch_dir, Reader};
use hv_net::dhcp::{DhcpConfig, DhcpCore, Reservation};
use hv_net::MacAddr;
use libfuzzer_sys::fuzz_target;

fn config() -> DhcpConfig {
    let lease_file = scratch_dir().join("dhcp-request.leases");
    let _ = std::fs::remove_file(&lease_file);
    let mut c = DhcpConfig::new(
        "hvfuzz0",
        Ipv4Addr::new(10, 0, 0, 1),
        24,
        Ipv4Addr::new(10, 0, 0, 10)..=Ipv4Addr::new(10, 0, 0, 13),
        lease_file,
    );
    c.dns_servers = vec![Ipv4Addr::new(10, 0, 0, 1)];
    c.domain_name = Some("fuzz.test".into());
    c.reservations = vec![Reservation {
        mac: MacAddr([0x52, 0x54, 0, 0, 0, 0x99]),
        ip: Ipv4Addr::new(10, 0, 0, 50),
        hostname: Some("reserved".into()),
    }];
    c
}

fuzz_target!(|data: &[u8]| {
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut core = DhcpCore::new(config(), start).expect("valid config");
    let mut input = Reader::new(data);
    let mut now = start;
    while !input.is_empty() {
        let packet = input.chunk();
        let _ = core.handle_packet(packet, now);
        now += Duration::from_secs(600);
        let _ = core.tick(now);
    }
    let s = core.stats();
    if s.offers + s.acks + s.naks > 0 {
        hv_fuzz::reached("answered");
    }
    let range = u32::from(Ipv4Addr::new(10, 0, 0, 10))..=u32::from(Ipv4Addr::new(10, 0, 0, 13));
    for lease in core.leases() {
        let ip = u32::from(lease.ip);
        assert!(range.contains(&ip) || lease.ip == Ipv4Addr::new(10, 0, 0, 50), "{lease:?}");
    }
});
