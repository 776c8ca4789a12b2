//! Test guests on real networks: the test guest (`guests/test-guest`, `test=net`) brings up
//! our virtio-net with its own polling driver and a tiny stack of its own (ARP, IPv4, ICMP echo,
//! a DHCP client), on TAPs that join bridges, networks and VXLAN links inside namespaces the
//! tests create and remove:
//!
//! - two guests on one network get their reserved leases from our DHCP server and ping each
//!   other;
//! - a guest on a NAT network pings an upstream peer that has no route back and opens a TCP
//!   connection to a listener there (SYN, SYN-ACK), and the peer's own nftables counters see
//!   the echo requests and the SYN come from the gateway's upstream address;
//! - a guest on one isolated network reaches its gateway but not a guest on another isolated
//!   network (with forwarding on, so only the networks' own rules stop it);
//! - a guest whose port is pinned to its MAC and IP loses its pings once it forges either,
//!   while its real traffic flows (and without port security the same forged pings pass);
//! - two "hosts" joined by a VXLAN link over a veth underlay carry a guest-to-guest ping;
//! - the benchmark mode (`test=net-bench`, which `benches/peers/net.sh` times) moves exactly
//!   the frames it says, counted on the TAP, both ways;
//! - a transmit-only driver (`test=net-txonly`, the receive queue never made ready) gets the
//!   device live (no DEVICE_NEEDS_RESET) and every frame onto the TAP.
//!
//! Every guest prints what it did (`hvtest: net ...`, protocol in `guests/README.md`); the
//! tests read those lines. The guest's code runs at CPL0, emulated on PVM hosts, so the packet
//! counts stay small. Needs root, KVM, iproute2 and the `nft` binary.

use std::time::{Duration, Instant};

use hv_core::console::Capture;
use hv_core::{Vm, VmBuilder};
use hv_net::netlink::{Netlink, VxlanConfig};
use hv_net::network::{NetworkDef, NetworkManager, NetworkMode};
use hv_net::nft::port::{PortSecurity, PortSpec, Protocol, SecurityRule};
use hv_net::nft::Nft;
use hv_net::tap::Tap;
use hv_net::virtio_net::{NetConfig, NetHandle, TapBackend, VirtioNet};
use hv_net::MacAddr;
use hv_test_support::netns::NetNs;
use hv_test_support::{have_kvm, hvtest_lines, test_guest};

mod common;

/// How long a guest may take for one expected line (its code is emulated on PVM hosts, and a
/// peer guest may still be booting).
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

/// Returns from the test unless root, KVM, iproute2 and nft are all there.
macro_rules! need_all {
    () => {
        need_root!();
        hv_test_support::require!(have_kvm(), "/dev/kvm is not usable");
        hv_test_support::require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    };
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x6e, 0x67, last])
}

/// A running test guest with one NIC on `tap`.
struct Guest {
    name: &'static str,
    vm: Vm,
    console: Capture,
    net: NetHandle,
}

impl Guest {
    /// Boots `test=net ARGS`.
    fn boot(name: &'static str, tap: Tap, mac: MacAddr, args: &str) -> Guest {
        Self::boot_raw(name, tap, mac, &format!("test=net {args}"))
    }

    /// Boots the test guest with command line `cmdline`.
    fn boot_raw(name: &'static str, tap: Tap, mac: MacAddr, cmdline: &str) -> Guest {
        let backend = TapBackend::new(tap).expect("TAP backend");
        let (dev, net) = VirtioNet::new(NetConfig::new(mac), Box::new(backend));
        let console = Capture::new();
        let vm = VmBuilder::new()
            .kernel(test_guest())
            .memory_mib(64)
            .cmdline(cmdline.to_string())
            .serial_output(console.clone())
            .virtio_device(Box::new(dev))
            .build()
            .expect("build the VM");
        vm.start().expect("start the VM");
        Guest { name, vm, console, net }
    }

    /// Waits for the guest's line starting `hvtest: <prefix>` and returns it (without the
    /// `hvtest: ` prefix); panics with the transcript if it does not come.
    fn line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let text = self.console.text();
            let complete = hv_test_support::whole_lines(&text);
            if let Some(l) = hvtest_lines(complete).into_iter().find(|l| l.starts_with(prefix)) {
                return l.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "guest {} did not print {prefix:?} in {LINE_TIMEOUT:?}; device {:?}:\n{text}",
                    self.name,
                    self.net.stats(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `net <what> <ip>` ping line and returns its outcome (`ok 3/3`, `lost 0/2`).
    fn ping_result(&self, what: &str, ip: &str) -> String {
        let prefix = format!("net {what} {ip} ");
        let line = self.line(&prefix);
        line[prefix.len()..].to_string()
    }

    /// All the guest's `hvtest:` lines so far.
    fn lines(&self) -> Vec<String> {
        hvtest_lines(&self.console.text()).into_iter().map(str::to_string).collect()
    }

    /// Stops the guest and checks its device saw no malformed chains.
    fn stop(self) {
        let _ = self.vm.kill();
        let _ = self.vm.wait();
        let st = self.net.stats();
        assert_eq!(st.tx_malformed + st.rx_malformed, 0, "guest {}: {st:?}", self.name);
    }
}

/// Opens TAP `name` (in the calling thread's namespace) with IPv6 off, so the host sends the
/// guest nothing but what the test causes.
fn tap(name: &str) -> Tap {
    let tap = Tap::builder(name).open().expect("open the TAP");
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    tap
}

fn network(name: &str, mode: NetworkMode, cidr: &str) -> hv_net::network::NetworkBuilder {
    let c: hv_net::Ipv4Cidr = cidr.parse().unwrap();
    let base = u32::from(c.network().addr);
    NetworkDef::builder(name, mode).ip(c).dhcp_range((base + 100).into(), (base + 150).into())
}

#[test]
fn two_guests_on_one_network_get_leases_and_ping_each_other() {
    need_all!();
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("hvt-ng2");
    ns.run(|| {
        let mgr = NetworkManager::open(dir.path()).unwrap();
        let def = network("lan", NetworkMode::Isolated, "10.81.0.1/24")
            .dhcp_host(mac(0xa1), [10, 81, 0, 10].into())
            .dhcp_host(mac(0xb1), [10, 81, 0, 11].into())
            .build()
            .unwrap();
        mgr.define(def).unwrap();
        mgr.start("lan").unwrap();
        let dhcp = mgr.serve_dhcp("lan").unwrap();
        let (ta, tb) = (tap("hvnga"), tap("hvngb"));
        mgr.attach_port("lan", ta.name()).unwrap();
        mgr.attach_port("lan", tb.name()).unwrap();

        // Each pings the other (waiting for it to come up), then keeps answering.
        let args = |peer: &str| format!("ip=dhcp ping={peer} count=3 wait=60 serve=0");
        let a = Guest::boot("a", ta, mac(0xa1), &args("10.81.0.11"));
        let b = Guest::boot("b", tb, mac(0xb1), &args("10.81.0.10"));
        assert_eq!(a.line("net mac="), "net mac=52:54:00:6e:67:a1");
        assert_eq!(a.line("net lease "), "net lease 10.81.0.10/24");
        assert_eq!(b.line("net lease "), "net lease 10.81.0.11/24");
        assert_eq!(a.ping_result("ping", "10.81.0.11"), "ok 3/3", "{:#?}", a.lines());
        assert_eq!(b.ping_result("ping", "10.81.0.10"), "ok 3/3", "{:#?}", b.lines());
        // The host reaches both too (they answer while serving).
        b.line("net serving");
        assert!(ns.ping("10.81.0.10", 2), "host -> guest a");
        a.stop();
        b.stop();

        // An isolated network names no router.
        // Our server's own view agrees with the guests'.
        let leases = dhcp.leases();
        let ip_of = |m: MacAddr| leases.iter().find(|l| l.mac == m).map(|l| l.ip.to_string());
        assert_eq!(ip_of(mac(0xa1)).as_deref(), Some("10.81.0.10"), "{leases:?}");
        assert_eq!(ip_of(mac(0xb1)).as_deref(), Some("10.81.0.11"), "{leases:?}");
        dhcp.stop().unwrap();
        mgr.destroy("lan").unwrap();
    });
}

/// A `busybox nc -l` on a port inside a namespace, killed on drop; `None` without busybox.
struct Listener(std::process::Child);

impl Listener {
    fn start(ns: &NetNs, port: u16) -> Option<Listener> {
        // Spawned from a thread inside the namespace (`ip netns exec` would put a process of
        // its own between us and nc, which a kill would miss).
        let child = ns.run(|| {
            std::process::Command::new("busybox")
                .args(["nc", "-l", "-p", &port.to_string()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        })?;
        let listener = Listener(child);
        // Wait until it listens: LISTEN (state 0A) on the port in /proc/net/tcp or tcp6.
        let needle = format!(":{port:04X}");
        let listening = || {
            ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
                let out = ns.exec(&["cat", f]);
                String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && cols[1].ends_with(&needle) && cols[3] == "0A"
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening() {
            assert!(Instant::now() < deadline, "busybox nc did not start listening on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `counter packets N` of the rule commented `comment` in table `ip seen` of `ns`.
fn peer_counter(ns: &NetNs, comment: &str) -> u64 {
    let listing = ns.exec_ok(&["nft", "list", "table", "ip", "seen"]);
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment}:\n{listing}"));
    let after = line.split("counter packets ").nth(1).expect("a counter");
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn nat_guest_reaches_an_upstream_peer_that_sees_the_gateway() {
    need_all!();
    let dir = tempfile::tempdir().unwrap();
    let upstream = NetNs::new("hvt-ngu");
    // The peer's own view of who talks to it: counters in its input hook, one for echo
    // requests from the host's upstream address (what masquerade makes of the guest), one for
    // anything from the guest subnet itself.
    upstream.exec_ok(&["nft", "add", "table", "ip", "seen"]);
    upstream.exec_ok(&["nft", "add chain ip seen input { type filter hook input priority 0 ; }"]);
    upstream.exec_ok(&[
        "nft",
        "add rule ip seen input ip saddr 10.83.0.1 icmp type echo-request counter comment \"gw\"",
    ]);
    upstream.exec_ok(&[
        "nft",
        "add rule ip seen input ip saddr 10.82.0.0/24 counter comment \"guests\"",
    ]);
    upstream.exec_ok(&[
        "nft",
        "add rule ip seen input ip saddr 10.83.0.1 tcp dport 8080 counter comment \"tcp\"",
    ]);
    // A TCP listener on the peer (busybox nc), answering the guest's SYN with a SYN-ACK.
    let listener = Listener::start(&upstream, 8080);
    NetNs::new("hvt-ngn").run(|| {
        let mut nl = Netlink::new().unwrap();
        let mgr = NetworkManager::open(dir.path()).unwrap();
        mgr.define(network("nat", NetworkMode::Nat, "10.82.0.1/24").build().unwrap()).unwrap();
        mgr.start("nat").unwrap();
        let dhcp = mgr.serve_dhcp("nat").unwrap();
        // The peer has no route back to 10.82.0.0/24: its replies can only reach the guest
        // if the guest's packets arrive with the gateway's upstream address as source.
        common::attach_upstream(&mut nl, "hvngup", "10.83.0.1/24", &upstream, "10.83.0.2/24");
        let t = tap("hvngn");
        mgr.attach_port("nat", t.name()).unwrap();

        let g = Guest::boot(
            "g",
            t,
            mac(0x01),
            "ip=dhcp ping=10.82.0.1,10.83.0.2 count=3 wait=20 tcp=10.83.0.2:8080",
        );
        // An address from the range, the gateway as router, and our server's lease agrees.
        let lease = g.line("net lease ");
        let ip = lease["net lease ".len()..].split('/').next().unwrap().to_string();
        assert_eq!(lease, format!("net lease {ip}/24 gw 10.82.0.1"));
        let last: u8 = ip.strip_prefix("10.82.0.").and_then(|n| n.parse().ok()).unwrap();
        assert!((100..=150).contains(&last), "{lease}");
        let leases = dhcp.leases();
        assert!(leases.iter().any(|l| l.mac == mac(0x01) && l.ip.to_string() == ip), "{leases:?}");
        assert_eq!(g.ping_result("ping", "10.82.0.1"), "ok 3/3", "{:#?}", g.lines());
        assert_eq!(g.ping_result("ping", "10.83.0.2"), "ok 3/3", "{:#?}", g.lines());
        // TCP too: a SYN-ACK from the listener, or a RST from the peer's stack if busybox is
        // missing; either way the peer's TCP answered through the NAT.
        let tcp = g.line("net tcp ");
        let want = if listener.is_some() { "open" } else { "closed" };
        assert_eq!(tcp, format!("net tcp 10.83.0.2:8080 {want}"), "{:#?}", g.lines());
        g.line("done");
        g.stop();
        dhcp.stop().unwrap();
        mgr.destroy("nat").unwrap();
    });
    drop(listener);
    assert!(peer_counter(&upstream, "gw") >= 3, "the peer saw the echoes from the gateway");
    assert!(peer_counter(&upstream, "tcp") >= 1, "and the SYN from the gateway");
    assert_eq!(peer_counter(&upstream, "guests"), 0, "the peer never saw a guest address");
}

#[test]
fn guests_on_two_isolated_networks_cannot_reach_each_other() {
    need_all!();
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("hvt-ngi");
    ns.run(|| {
        // Forwarding on (as another network or the host might have it), so only the isolated
        // networks' own rules can stop guest-to-guest traffic between the two bridges.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").unwrap();
        let mgr = NetworkManager::open(dir.path()).unwrap();
        for (name, cidr) in [("iso1", "10.84.0.1/24"), ("iso2", "10.85.0.1/24")] {
            mgr.define(network(name, NetworkMode::Isolated, cidr).build().unwrap()).unwrap();
            mgr.start(name).unwrap();
        }
        let (ta, tb) = (tap("hvngia"), tap("hvngib"));
        mgr.attach_port("iso1", ta.name()).unwrap();
        mgr.attach_port("iso2", tb.name()).unwrap();

        let b = Guest::boot(
            "b",
            tb,
            mac(0x0b),
            "ip=10.85.0.10/24 gw=10.85.0.1 ping=10.85.0.1 count=1 serve=0",
        );
        assert_eq!(b.ping_result("ping", "10.85.0.1"), "ok 1/1", "{:#?}", b.lines());
        b.line("net serving");
        assert!(ns.ping("10.85.0.10", 2), "guest b answers its own host");
        let a = Guest::boot(
            "a",
            ta,
            mac(0x0a),
            "ip=10.84.0.10/24 gw=10.84.0.1 ping=10.84.0.1,10.85.0.10 count=2 wait=3",
        );
        assert_eq!(a.ping_result("ping", "10.84.0.1"), "ok 2/2", "{:#?}", a.lines());
        assert_eq!(a.ping_result("ping", "10.85.0.10"), "lost 0/2", "{:#?}", a.lines());
        a.line("done");
        a.stop();
        b.stop();
        mgr.destroy("iso1").unwrap();
        mgr.destroy("iso2").unwrap();
    });
}

#[test]
fn forged_source_mac_or_ip_is_dropped_while_real_traffic_flows() {
    need_all!();
    let nft = Nft::locate().unwrap();
    NetNs::new("hvt-ngp").run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvngp").unwrap();
        nl.set_up("hvngp").unwrap();
        nl.add_address("hvngp", "10.86.0.1".parse().unwrap(), 24).unwrap();
        let args = "ip=10.86.0.10/24 ping=10.86.0.1 count=2 wait=2 spoof_ip=10.86.0.99 \
                    spoof_mac=52:54:00:6e:66:66";
        let port = || {
            let t = tap("hvngp0");
            nl_port(t.name(), "hvngp");
            t
        };

        // Without port security the forged packets pass: the host answers them.
        let g = Guest::boot("g", port(), mac(0x10), args);
        g.line("done");
        let real = g.lines().into_iter().filter(|l| l == "net ping 10.86.0.1 ok 2/2").count();
        assert_eq!(real, 2, "{:#?}", g.lines());
        assert_eq!(g.ping_result("spoof-ip ping", "10.86.0.1"), "ok 2/2", "{:#?}", g.lines());
        assert_eq!(g.ping_result("spoof-mac ping", "10.86.0.1"), "ok 2/2", "{:#?}", g.lines());
        g.stop();

        // The port pinned to the guest's MAC and IP: forged frames are dropped, real ones
        // (before and after) flow.
        let ps = PortSecurity::new(nft.clone());
        let t = port();
        ps.apply(&PortSpec {
            port: "hvngp0".parse().unwrap(),
            mac: mac(0x10),
            ips: vec!["10.86.0.10".parse().unwrap()],
            rules: vec![
                SecurityRule::egress(Protocol::Icmp),
                SecurityRule::ingress(Protocol::Icmp),
            ],
            bridge: Some("hvngp".parse().unwrap()),
        })
        .unwrap();
        let g = Guest::boot("g", t, mac(0x10), args);
        g.line("done");
        let lines = g.lines();
        let real: Vec<_> = lines.iter().filter(|l| l.starts_with("net ping 10.86.0.1 ")).collect();
        assert_eq!(real, ["net ping 10.86.0.1 ok 2/2"; 2], "{lines:#?}");
        assert_eq!(g.ping_result("spoof-ip ping", "10.86.0.1"), "lost 0/2", "{lines:#?}");
        assert_eq!(g.ping_result("spoof-mac ping", "10.86.0.1"), "lost 0/2", "{lines:#?}");
        g.stop();
        ps.remove(&"hvngp0".parse().unwrap()).unwrap();
        drop(nl.delete_link("hvngp"));
    });
}

/// Puts `port` on `bridge` and sets it up.
fn nl_port(port: &str, bridge: &str) {
    let mut nl = Netlink::new().unwrap();
    nl.set_master(port, bridge).unwrap();
    nl.set_up(port).unwrap();
}

/// One "host" of the VXLAN test: an underlay address, a bridge with a VXLAN link to the other
/// host, and a TAP on it for the guest.
fn vxlan_host(underlay: &str, local: [u8; 4], remote: [u8; 4], tap_name: &str) -> Tap {
    let mut nl = Netlink::new().unwrap();
    nl.add_address(underlay, std::net::Ipv4Addr::from(local).into(), 24).unwrap();
    nl.set_up(underlay).unwrap();
    nl.create_bridge("hvbr").unwrap();
    nl.set_up("hvbr").unwrap();
    let mut cfg = VxlanConfig::new(4343);
    cfg.local = Some(local.into());
    cfg.remote = Some(remote.into());
    cfg.underlay = Some(underlay.to_string());
    nl.create_vxlan("hvvx", &cfg).unwrap();
    nl_port("hvvx", "hvbr");
    let t = tap(tap_name);
    nl_port(t.name(), "hvbr");
    t
}

#[test]
fn guests_on_two_hosts_ping_over_vxlan() {
    need_all!();
    let (ha, hb) = (NetNs::new("hvt-ngxa"), NetNs::new("hvt-ngxb"));
    let ta = ha.run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_veth("hvul", "hvulb").unwrap();
        nl.move_to_netns("hvulb", &hb.open()).unwrap();
        vxlan_host("hvul", [10, 92, 0, 1], [10, 92, 0, 2], "hvngxa")
    });
    let tb = hb.run(|| vxlan_host("hvulb", [10, 92, 0, 2], [10, 92, 0, 1], "hvngxb"));
    // The TAPs stay in their hosts' namespaces; the VMs using them can run anywhere.
    let args = |me: &str, peer: &str| format!("ip={me}/24 ping={peer} count=3 wait=60 serve=0");
    let a = Guest::boot("a", ta, mac(0xa2), &args("10.93.0.1", "10.93.0.2"));
    let b = Guest::boot("b", tb, mac(0xb2), &args("10.93.0.2", "10.93.0.1"));
    assert_eq!(a.ping_result("ping", "10.93.0.2"), "ok 3/3", "{:#?}", a.lines());
    assert_eq!(b.ping_result("ping", "10.93.0.1"), "ok 3/3", "{:#?}", b.lines());
    // The guests' frames really crossed the underlay as VXLAN.
    let vx = ha.exec_ok(&["ip", "-s", "link", "show", "hvvx"]);
    a.stop();
    b.stop();
    let tx_packets: u64 = vx
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("TX:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(tx_packets >= 3, "VXLAN link carried the pings:\n{vx}");
}

/// A TAP counter from sysfs as namespace `ns` sees it (`ip netns exec` mounts its own /sys;
/// the test process's /sys shows its original namespace).
fn tap_stat(ns: &NetNs, tap: &str, counter: &str) -> u64 {
    let path = format!("/sys/class/net/{tap}/statistics/{counter}");
    ns.exec_ok(&["cat", &path]).trim().parse().unwrap()
}

#[test]
fn bench_mode_frames_are_counted_on_the_tap_both_ways() {
    need_all!();
    let ns = NetNs::new("hvt-ngb");
    ns.run(|| {
        // Guest -> host: every frame the guest's TX loop sends shows up on the TAP.
        let t = tap("hvngb0");
        nl_port_up(t.name());
        let before = tap_stat(&ns, "hvngb0", "rx_packets");
        let g = Guest::boot_raw("tx", t, mac(0x20), "test=net-bench mode=tx size=100 count=5000");
        assert_eq!(g.line("net-bench done"), "net-bench done 5000", "{:#?}", g.lines());
        let sent = tap_stat(&ns, "hvngb0", "rx_packets") - before;
        assert_eq!(g.net.stats().tx_frames, 5000);
        g.stop();
        assert_eq!(sent, 5000, "frames seen on the TAP");

        // Host -> guest: pings to a static neighbour entry for the guest's MAC reach its RX
        // loop (which only counts them).
        let t = tap("hvngb1");
        nl_port_up(t.name());
        let mut nl = Netlink::new().unwrap();
        nl.add_address("hvngb1", "10.87.0.1".parse().unwrap(), 24).unwrap();
        let g = Guest::boot_raw("rx", t, mac(0x21), "test=net-bench mode=rx count=20 idle=5");
        g.line("net-bench start mode=rx");
        ns.exec_ok(&[
            "ip",
            "neigh",
            "replace",
            "10.87.0.2",
            "lladdr",
            "52:54:00:6e:67:21",
            "dev",
            "hvngb1",
        ]);
        // No replies come (the guest only counts), so ping's own status is failure.
        let _ = ns.exec(&["ping", "-n", "-q", "-c", "20", "-i", "0.01", "-W", "1", "10.87.0.2"]);
        assert_eq!(g.line("net-bench done"), "net-bench done 20", "{:#?}", g.lines());
        g.stop();
    });
}

#[test]
fn a_transmit_only_driver_gets_every_frame_onto_the_tap() {
    need_all!();
    let ns = NetNs::new("hvt-ngtx");
    ns.run(|| {
        // The guest's driver makes only the TX queue ready (legal, and QEMU runs it): the
        // device activates with that queue, and every frame reaches the TAP.
        let t = tap("hvngtx0");
        nl_port_up(t.name());
        let before = tap_stat(&ns, "hvngtx0", "rx_packets");
        let g = Guest::boot_raw("txonly", t, mac(0x30), "test=net-txonly count=300 size=80");
        let status = g.line("net-txonly status");
        assert_eq!(status, "net-txonly status 0x0f", "DRIVER_OK without NEEDS_RESET");
        assert_eq!(g.line("net-txonly sent"), "net-txonly sent 300", "{:#?}", g.lines());
        let st = g.net.stats();
        assert_eq!((st.tx_frames, st.rx_frames), (300, 0));
        assert_eq!(st.tx_bytes, 300 * 80);
        let seen = tap_stat(&ns, "hvngtx0", "rx_packets") - before;
        let bytes = tap_stat(&ns, "hvngtx0", "rx_bytes");
        g.stop();
        assert_eq!(seen, 300, "frames seen on the TAP");
        assert!(bytes >= 300 * 80, "{bytes} bytes on the TAP");
    });
}

/// Sets `port` up (no bridge).
fn nl_port_up(port: &str) {
    Netlink::new().unwrap().set_up(port).unwrap();
}
