//! Tests of the protocol core: no sockets, a lease file in a temporary directory, a fake clock.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use proptest::prelude::*;

use super::*;
use crate::dhcp::{read_leases, DhcpConfig, MacAddr, Reservation};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 100);
const LAST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 103);
const LEASE: Duration = Duration::from_secs(600);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, n])
}

fn config(dir: &Path) -> DhcpConfig {
    let mut c = DhcpConfig::new("hvbr-test", SERVER, 24, FIRST..=LAST, dir.join("net.leases"));
    c.lease_time = LEASE;
    c.dns_servers = vec![SERVER];
    c
}

fn msg(kind: MessageType, client: MacAddr) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest).set_htype(HType::Eth).set_chaddr(&client.0).set_xid(0x1234);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn discover(client: MacAddr, requested: Option<Ipv4Addr>) -> Message {
    let mut m = msg(MessageType::Discover, client);
    if let Some(ip) = requested {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    }
    m
}

fn select(client: MacAddr, ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = msg(MessageType::Request, client);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

fn init_reboot(client: MacAddr, ip: Ipv4Addr) -> Message {
    let mut m = msg(MessageType::Request, client);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m
}

fn renew(client: MacAddr, ip: Ipv4Addr) -> Message {
    let mut m = msg(MessageType::Request, client);
    m.set_ciaddr(ip);
    m
}

fn release(client: MacAddr, ip: Ipv4Addr) -> Message {
    let mut m = msg(MessageType::Release, client);
    m.set_ciaddr(ip);
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m
}

fn kind(reply: &Option<Message>) -> Option<MessageType> {
    reply.as_ref().and_then(|r| r.opts().msg_type())
}

/// DISCOVER -> OFFER, REQUEST -> ACK; returns the address.
fn dora(core: &mut DhcpCore, client: MacAddr, now: SystemTime) -> Ipv4Addr {
    let offer = core.handle(&discover(client, None), now).expect("offer");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    let ip = offer.yiaddr();
    let ack = core.handle(&select(client, ip, SERVER), now).expect("ack");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    ip
}

#[test]
fn full_dora_hands_out_the_configured_options_and_persists_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let mut d = discover(mac(1), None);
    d.opts_mut().insert(DhcpOption::Hostname("guest-one".into()));
    d.set_flags(Flags::default().set_broadcast());
    let offer = core.handle(&d, t0()).unwrap();
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(offer.xid(), 0x1234);
    assert_eq!(offer.chaddr(), &mac(1).0);
    assert_eq!(offer.yiaddr(), FIRST);
    assert!(offer.flags().broadcast());
    let o = offer.opts();
    assert_eq!(o.get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SERVER)));
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
    );
    assert_eq!(o.get(OptionCode::Router), Some(&DhcpOption::Router(vec![SERVER])));
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![SERVER]))
    );
    assert_eq!(o.get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(600)));
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(300)));
    assert_eq!(o.get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(525)));
    // An offer is not a lease.
    assert!(core.leases().is_empty());
    let dest = reply_destination(&d, &offer);
    assert_eq!(dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));

    let mut r = select(mac(1), FIRST, SERVER);
    r.opts_mut().insert(DhcpOption::Hostname("guest-one".into()));
    let ack = core.handle(&r, t0()).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), FIRST);
    let want = vec![Lease {
        mac: mac(1),
        ip: FIRST,
        hostname: Some("guest-one".into()),
        expires: t0() + LEASE,
    }];
    assert_eq!(core.leases(), want);
    assert_eq!(read_leases(&core.config().lease_file).unwrap(), want);
    // Encodes and decodes back to itself.
    let bytes = ack.to_vec().unwrap();
    assert_eq!(Message::from_bytes(&bytes).unwrap(), ack);
    let s = core.stats();
    assert_eq!((s.received, s.offers, s.acks, s.dropped), (2, 1, 1, 0));
}

#[test]
fn renew_extends_the_lease_and_replies_unicast() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let ip = dora(&mut core, mac(1), t0());
    let later = t0() + LEASE / 2;
    let req = renew(mac(1), ip);
    let ack = core.handle(&req, later).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(reply_destination(&req, &ack), SocketAddrV4::new(ip, 68));
    assert_eq!(core.leases()[0].expires, later + LEASE);
    // Renewing an address it does not hold is refused.
    let nak = core.handle(&renew(mac(1), Ipv4Addr::new(10, 9, 0, 102)), later);
    let nak_ok = kind(&nak) == Some(MessageType::Ack);
    // 10.9.0.102 is free, so an authoritative server may move the client there; it must not
    // hand out someone else's address though.
    assert!(nak_ok || kind(&nak) == Some(MessageType::Nak));
    let other = dora(&mut core, mac(2), later);
    let stolen = core.handle(&renew(mac(1), other), later);
    assert_eq!(kind(&stolen), Some(MessageType::Nak));
    assert_eq!(
        reply_destination(&renew(mac(1), other), stolen.as_ref().unwrap()).ip(),
        &Ipv4Addr::BROADCAST
    );
}

#[test]
fn init_reboot_gets_its_address_back_or_a_nak() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let ip = dora(&mut core, mac(1), t0());
    assert_eq!(kind(&core.handle(&init_reboot(mac(1), ip), t0())), Some(MessageType::Ack));
    // Another client's address, an address of another subnet: NAK.
    assert_eq!(kind(&core.handle(&init_reboot(mac(2), ip), t0())), Some(MessageType::Nak));
    let foreign = Ipv4Addr::new(192, 168, 1, 5);
    assert_eq!(kind(&core.handle(&init_reboot(mac(2), foreign), t0())), Some(MessageType::Nak));
}

#[test]
fn request_for_another_server_voids_our_offer() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let offer = core.handle(&discover(mac(1), None), t0()).unwrap();
    assert_eq!(offer.yiaddr(), FIRST);
    // While held, the address is not offered to another client.
    assert_eq!(
        core.handle(&discover(mac(2), None), t0()).unwrap().yiaddr(),
        Ipv4Addr::new(10, 9, 0, 101)
    );
    let other_server = Ipv4Addr::new(10, 9, 0, 2);
    assert!(core.handle(&select(mac(1), FIRST, other_server), t0()).is_none());
    assert!(core.leases().is_empty());
    assert_eq!(core.handle(&discover(mac(3), None), t0()).unwrap().yiaddr(), FIRST);
}

#[test]
fn discover_prefers_previous_lease_then_requested_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let ip = dora(&mut core, mac(1), t0());
    // A client with a lease gets it again whatever it asks for.
    let again = core.handle(&discover(mac(1), Some(LAST)), t0()).unwrap();
    assert_eq!(again.yiaddr(), ip);
    // A free requested address in range is honoured; a taken or foreign one is not.
    assert_eq!(core.handle(&discover(mac(2), Some(LAST)), t0()).unwrap().yiaddr(), LAST);
    assert_eq!(
        core.handle(&discover(mac(3), Some(LAST)), t0()).unwrap().yiaddr(),
        Ipv4Addr::new(10, 9, 0, 101)
    );
    let outside = Ipv4Addr::new(10, 9, 0, 50);
    assert_eq!(
        core.handle(&discover(mac(4), Some(outside)), t0()).unwrap().yiaddr(),
        Ipv4Addr::new(10, 9, 0, 102)
    );
}

#[test]
fn reservation_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let reserved = Ipv4Addr::new(10, 9, 0, 50);
    c.reservations = vec![
        Reservation { mac: mac(7), ip: reserved, hostname: Some("db".into()) },
        Reservation { mac: mac(8), ip: FIRST, hostname: None },
    ];
    let mut core = DhcpCore::new(c, t0()).unwrap();
    // Reserved addresses inside the range are skipped for others.
    let offer = core.handle(&discover(mac(1), Some(FIRST)), t0()).unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 9, 0, 101));
    // The reserved client gets its address (outside the range) whatever it asks for, and the
    // reservation's host name.
    let mut d = discover(mac(7), Some(LAST));
    d.opts_mut().insert(DhcpOption::Hostname("sneaky".into()));
    let offer = core.handle(&d, t0()).unwrap();
    assert_eq!(offer.yiaddr(), reserved);
    assert_eq!(offer.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("db".into())));
    assert_eq!(kind(&core.handle(&select(mac(7), LAST, SERVER), t0())), Some(MessageType::Nak));
    assert_eq!(kind(&core.handle(&select(mac(7), reserved, SERVER), t0())), Some(MessageType::Ack));
    assert_eq!(kind(&core.handle(&init_reboot(mac(1), reserved), t0())), Some(MessageType::Nak));
    let lease = core.leases().into_iter().find(|l| l.mac == mac(7)).unwrap();
    assert_eq!((lease.ip, lease.hostname.as_deref()), (reserved, Some("db")));
}

#[test]
fn exhausted_range_offers_nothing_and_naks() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    for n in 1..=4 {
        dora(&mut core, mac(n), t0());
    }
    assert!(core.handle(&discover(mac(5), None), t0()).is_none());
    assert_eq!(core.stats().exhausted, 1);
    assert_eq!(kind(&core.handle(&init_reboot(mac(5), FIRST), t0())), Some(MessageType::Nak));
    assert_eq!(core.leases().len(), 4);
}

#[test]
fn a_flood_of_new_clients_cannot_hold_more_than_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let mut offered = Vec::new();
    for n in 0..2000u32 {
        let [_, a, b, c] = n.to_be_bytes();
        let client = MacAddr([0x52, 0x54, 0, a, b, c]);
        if let Some(offer) = core.handle(&discover(client, None), t0()) {
            offered.push(offer.yiaddr());
        }
    }
    offered.sort();
    offered.dedup();
    assert_eq!(offered.len(), 4);
    assert_eq!(core.stats().offers, 4);
    assert_eq!(core.stats().exhausted, 1996);
    // Once the offers lapse the addresses are free again.
    let later = t0() + crate::dhcp::pool::OFFER_HOLD + Duration::from_secs(1);
    assert_eq!(core.handle(&discover(mac(200), None), later).unwrap().yiaddr(), FIRST);
}

#[test]
fn release_frees_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    for n in 1..=4 {
        dora(&mut core, mac(n), t0());
    }
    // A release naming someone else's address does nothing.
    assert!(core.handle(&release(mac(1), Ipv4Addr::new(10, 9, 0, 102)), t0()).is_none());
    assert_eq!(core.leases().len(), 4);
    assert!(core.handle(&release(mac(3), Ipv4Addr::new(10, 9, 0, 102)), t0()).is_none());
    assert_eq!(core.leases().len(), 3);
    assert_eq!(read_leases(&core.config().lease_file).unwrap().len(), 3);
    assert_eq!(
        core.handle(&discover(mac(5), None), t0()).unwrap().yiaddr(),
        Ipv4Addr::new(10, 9, 0, 102)
    );
}

#[test]
fn decline_quarantines_only_the_clients_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let ip = dora(&mut core, mac(1), t0());
    // Declining an address that is not its own is ignored.
    let mut d = msg(MessageType::Decline, mac(2));
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(LAST));
    assert!(core.handle(&d, t0()).is_none());
    assert_eq!(core.stats().last_drop, Some(DropReason::NotYours));
    assert_eq!(core.stats().declines, 0);
    assert_eq!(core.handle(&discover(mac(3), Some(LAST)), t0()).unwrap().yiaddr(), LAST);
    let mut d = msg(MessageType::Decline, mac(1));
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    assert!(core.handle(&d, t0()).is_none());
    assert_eq!(core.stats().declines, 1);
    assert!(core.leases().is_empty());
    // The declined address is skipped for a while, then comes back.
    let next = core.handle(&discover(mac(1), None), t0()).unwrap().yiaddr();
    assert_ne!(next, ip);
    let much_later = t0() + crate::dhcp::pool::DECLINE_QUARANTINE + Duration::from_secs(1);
    assert_eq!(core.handle(&discover(mac(4), None), much_later).unwrap().yiaddr(), ip);
}

#[test]
fn inform_answers_without_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let mut m = msg(MessageType::Inform, mac(1));
    let static_ip = Ipv4Addr::new(10, 9, 0, 7);
    m.set_ciaddr(static_ip);
    let ack = core.handle(&m, t0()).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr(), static_ip);
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::Router).is_some());
    assert_eq!(reply_destination(&m, &ack), SocketAddrV4::new(static_ip, 68));
    assert!(core.leases().is_empty());
}

#[test]
fn leases_survive_a_restart_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let a = dora(&mut core, mac(1), t0());
    let b = dora(&mut core, mac(2), t0() + LEASE / 2);
    let before = core.leases();
    drop(core);

    // "Restart": a new core reads the same file and serves the same clients the same addresses.
    let mut core = DhcpCore::new(config(dir.path()), t0() + Duration::from_secs(1)).unwrap();
    assert_eq!(core.leases(), before);
    assert_eq!(core.handle(&discover(mac(1), None), t0()).unwrap().yiaddr(), a);
    assert_eq!(
        core.handle(&discover(mac(3), Some(b)), t0()).unwrap().yiaddr(),
        Ipv4Addr::new(10, 9, 0, 102)
    );

    // After the first lease ends, a tick reclaims it and the file follows.
    let after_a = t0() + LEASE + Duration::from_secs(1);
    core.tick(after_a).unwrap();
    let left = core.leases();
    assert_eq!(left.iter().map(|l| l.ip).collect::<Vec<_>>(), vec![b]);
    assert_eq!(read_leases(&core.config().lease_file).unwrap(), left);
    assert_eq!(core.handle(&discover(mac(4), Some(a)), after_a).unwrap().yiaddr(), a);
    drop(core);

    // A restart after everything expired starts empty.
    let core = DhcpCore::new(config(dir.path()), t0() + LEASE * 3).unwrap();
    assert!(core.leases().is_empty());
    assert!(read_leases(&core.config().lease_file).unwrap().is_empty());
}

#[test]
fn reload_drops_leases_the_new_config_forbids() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let a = dora(&mut core, mac(1), t0());
    let b = dora(&mut core, mac(2), t0());
    drop(core);
    // mac(1)'s address is now reserved for another client; mac(2)'s is outside the new range.
    let mut c = config(dir.path());
    c.reservations = vec![Reservation { mac: mac(9), ip: a, hostname: None }];
    c.range = Ipv4Addr::new(10, 9, 0, 102)..=LAST;
    assert_ne!(b, Ipv4Addr::new(10, 9, 0, 102));
    let core = DhcpCore::new(c, t0()).unwrap();
    assert!(core.leases().is_empty());
}

#[test]
fn an_unwritable_lease_file_withholds_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    // Put a directory where the temporary file goes: every write fails from now on.
    std::fs::create_dir(dir.path().join("net.leases.tmp")).unwrap();
    let offer = core.handle(&discover(mac(1), None), t0()).unwrap();
    assert!(core.handle(&select(mac(1), offer.yiaddr(), SERVER), t0()).is_none());
    assert_eq!(core.stats().persist_errors, 1);
    let err = core.take_error().unwrap();
    assert!(err.to_string().contains("net.leases"), "{err}");
    // Once the file can be written again the client's retry succeeds.
    std::fs::remove_dir(dir.path().join("net.leases.tmp")).unwrap();
    assert_eq!(
        kind(&core.handle(&select(mac(1), offer.yiaddr(), SERVER), t0())),
        Some(MessageType::Ack)
    );
    assert_eq!(read_leases(&core.config().lease_file).unwrap().len(), 1);
}

#[test]
fn malformed_requests_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
    let mut reply = discover(mac(1), None);
    reply.set_opcode(Opcode::BootReply);
    let mut no_type = discover(mac(1), None);
    no_type.opts_mut().remove(OptionCode::MessageType);
    let mut long_hw = discover(mac(1), None);
    long_hw.set_chaddr(&[1; 16]);
    let mut relayed = discover(mac(1), None);
    relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    let mut token_ring = discover(mac(1), None);
    token_ring.set_htype(HType::from(6u8));
    let cases = [
        reply,
        no_type,
        long_hw,
        relayed,
        token_ring,
        discover(MacAddr([0; 6]), None),
        discover(MacAddr([0xff; 6]), None),
        msg(MessageType::Offer, mac(1)),
        msg(MessageType::Request, mac(1)),
        msg(MessageType::Inform, mac(1)),
    ];
    let reasons = [
        DropReason::NotBootRequest,
        DropReason::NoMessageType,
        DropReason::BadHardwareLength,
        DropReason::Relayed,
        DropReason::NotEthernet,
        DropReason::BadMac,
        DropReason::BadMac,
        DropReason::Unexpected,
        DropReason::Unexpected,
        DropReason::Unexpected,
    ];
    for (i, (m, reason)) in cases.iter().zip(reasons).enumerate() {
        assert!(core.handle(m, t0()).is_none(), "case {i}");
        assert_eq!(core.stats().last_drop, Some(reason), "case {i}");
    }
    assert_eq!(core.stats().dropped, cases.len() as u64);
    // Raw bytes: too short, no cookie, hlen past chaddr's 16 bytes.
    let mut bytes = discover(mac(1), None).to_vec().unwrap();
    assert!(core.handle_packet(&bytes[..100], t0()).is_none());
    bytes[2] = 200;
    assert!(core.handle_packet(&bytes, t0()).is_none());
    bytes[236] = 0;
    assert_eq!(decode_request(&bytes).unwrap_err(), DropReason::NoMagicCookie);
    // Options whose dhcproto decoders panic on bad lengths are filtered out first: a classless
    // static route with a /40 prefix, a bulk-lease-query base time of 1 byte, a status code of
    // length 0, a client FQDN of 1 byte; a truncated option at the end.
    let mut bytes = discover(mac(1), None).to_vec().unwrap();
    bytes.truncate(240);
    bytes.extend_from_slice(&[
        53, 1, 1, 121, 6, 40, 1, 2, 3, 4, 5, 152, 1, 0, 151, 0, 81, 1, 0, 12, 9,
    ]);
    let m = decode_request(&bytes).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
    assert_eq!(m.opts().len(), 1);
    assert!(core.handle_packet(&bytes, t0()).is_some());
    assert!(core.leases().is_empty());
}

fn arb_message() -> impl Strategy<Value = Message> {
    let kinds = prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 9, 200]);
    let ip = prop_oneof![
        Just(Ipv4Addr::UNSPECIFIED),
        (100u8..=104).prop_map(|n| Ipv4Addr::new(10, 9, 0, n)),
        any::<u32>().prop_map(Ipv4Addr::from),
    ];
    let server = prop_oneof![
        Just(None),
        Just(Some(SERVER)),
        any::<u32>().prop_map(|a| Some(Ipv4Addr::from(a)))
    ];
    (
        (
            any::<bool>(),
            prop::sample::select(vec![1u8, 6]),
            prop::collection::vec(any::<u8>(), 0..=17),
        ),
        (0u8..6, kinds, ip.clone(), ip.clone(), ip),
        (server, proptest::option::of(".{0,70}"), any::<u32>()),
    )
        .prop_map(
            |((reply, htype, chaddr), (client, kind, ciaddr, giaddr, req), (server, host, xid))| {
                let mut m = Message::default();
                m.set_opcode(if reply { Opcode::BootReply } else { Opcode::BootRequest });
                m.set_htype(HType::from(htype)).set_xid(xid).set_ciaddr(ciaddr).set_giaddr(giaddr);
                // Mostly well-formed clients from a small set, so leases pile up and collide.
                if chaddr.len() == 6 || chaddr.len() > 12 {
                    m.set_chaddr(&mac(client).0);
                } else {
                    m.set_chaddr(&chaddr);
                }
                m.opts_mut().insert(DhcpOption::MessageType(MessageType::from(kind)));
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(req));
                if let Some(s) = server {
                    m.opts_mut().insert(DhcpOption::ServerIdentifier(s));
                }
                if let Some(h) = host {
                    m.opts_mut().insert(DhcpOption::Hostname(h));
                }
                m
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes, and random bytes behind a valid header, never panic and never lease.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700), cut in 0usize..700) {
        let dir = tempfile::tempdir().unwrap();
        let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
        let _ = core.handle_packet(&bytes, t0());
        let mut framed = discover(mac(1), None).to_vec().unwrap();
        framed.truncate(240);
        framed.extend_from_slice(&bytes);
        framed.truncate(cut.max(1));
        if let Some(reply) = core.handle_packet(&framed, t0()) {
            prop_assert!(reply.to_vec().is_ok());
        }
        prop_assert!(core.leases().is_empty());
    }

    /// Any sequence of parseable messages keeps the pool consistent: leases are unique per
    /// client and per address, inside the range, and every reply encodes.
    #[test]
    fn random_messages_keep_leases_consistent(msgs in prop::collection::vec((arb_message(), 0u64..2000), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut core = DhcpCore::new(config(dir.path()), t0()).unwrap();
        let mut now = t0();
        for (m, step) in &msgs {
            now += Duration::from_secs(*step);
            // Through the wire format too, as the socket loop sees it.
            if let Ok(bytes) = m.to_vec() {
                if let Some(reply) = core.handle_packet(&bytes, now) {
                    prop_assert!(reply.to_vec().is_ok());
                }
            }
            if let Some(reply) = core.handle(m, now) {
                prop_assert!(reply.to_vec().is_ok());
                let _ = reply_destination(m, &reply);
            }
            core.tick(now).unwrap();
            let leases = core.leases();
            let mut ips: Vec<_> = leases.iter().map(|l| l.ip).collect();
            ips.dedup();
            prop_assert_eq!(ips.len(), leases.len());
            for l in &leases {
                prop_assert!(core.config().in_range(l.ip));
                prop_assert!(l.expires > now);
            }
        }
        prop_assert_eq!(read_leases(&core.config().lease_file).unwrap(), core.leases());
    }
}
