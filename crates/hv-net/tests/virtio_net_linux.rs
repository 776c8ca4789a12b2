//! Linux drives our virtio-net: the minimal kernel on two vCPUs, booted with a two-pair
//! virtio-net NIC on a multiqueue TAP that joins a NAT network (bridge, gateway, masquerade,
//! our DHCP server) inside a test namespace, finds the NIC with our MAC, switches both queue
//! pairs on through the control queue, and gets a lease with `ip=dhcp`; the lease file agrees.
//! Without an initramfs and with `rootwait` for a disk that never comes, the kernel then waits
//! with its network up (no user space is needed, which this host cannot run), and the host
//! pings it: the guest kernel's ICMP echo replies come back through our device.
//!
//! Slow on hosts where the guest kernel is emulated (tens of seconds to a few minutes); one
//! boot only. Needs root, KVM, the `nft` binary and the guest kit (`guests/kit.sh`).

use std::time::{Duration, Instant};

use hv_core::console::Capture;
use hv_core::VmBuilder;
use hv_net::network::{NetworkDef, NetworkManager, NetworkMode};
use hv_net::nft::Nft;
use hv_net::tap::Tap;
use hv_net::virtio_net::{NetBackend, NetConfig, TapBackend, VirtioNet};
use hv_net::MacAddr;
use hv_test_support::netns::NetNs;
use hv_test_support::{have_kvm, is_root, require};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x4e, 0x45, 0x54]);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn linux_gets_a_dhcp_lease_through_virtio_net() {
    require!(is_root(), "network namespaces need root");
    require!(have_kvm(), "/dev/kvm is not usable");
    require!(hv_test_support::netns::have_netns_tools(), "iproute2 is not installed");
    require!(Nft::locate().is_ok(), "nft binary (apt-get install nftables)");
    let Some(kernel) = hv_test_support::mini_kernel() else {
        require!(false, hv_test_support::KIT_MISSING);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("hvt-vnl");
    ns.run(|| {
        let mgr = NetworkManager::open(dir.path()).unwrap();
        let def = NetworkDef::builder("vnl", NetworkMode::Nat)
            .ip("10.77.0.1/24".parse().unwrap())
            .dhcp_range([10, 77, 0, 100].into(), [10, 77, 0, 150].into())
            .build()
            .unwrap();
        mgr.define(def).unwrap();
        mgr.start("vnl").unwrap();
        let _dhcp = mgr.serve_dhcp("vnl").unwrap();

        let tap = Tap::builder("hvvnl0").queues(2).open().unwrap();
        mgr.attach_port("vnl", "hvvnl0").unwrap();
        let backends: Vec<Box<dyn NetBackend>> = TapBackend::per_queue(tap)
            .unwrap()
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn NetBackend>)
            .collect();
        let (dev, handle) = VirtioNet::multi_queue(NetConfig::new(MAC), backends).unwrap();

        let console = Capture::new();
        let vm = VmBuilder::new()
            .kernel(&kernel)
            .memory_mib(128)
            .vcpus(2)
            .cmdline("console=ttyS0 reboot=k panic=-1 ip=dhcp root=/dev/vda rootwait")
            .serial_output(console.clone())
            .virtio_device(Box::new(dev))
            .build()
            .unwrap();
        let start = Instant::now();
        vm.start().unwrap();
        let leased = console.wait_for("my address is", BOOT_TIMEOUT)
            && console.wait_for("ipaddr=", Duration::from_secs(60))
            && console.wait_for("host=", Duration::from_secs(60));
        let elapsed = start.elapsed();
        let text = console.text();
        if !leased {
            let _ = vm.kill();
            let _ = vm.wait();
            panic!("no DHCP lease after {elapsed:?}: {:?}\n{text}", handle.stats());
        }
        eprintln!("lease after {elapsed:?}");

        // The kernel names our MAC on its NIC and an address from the range.
        let line = text.lines().find(|l| l.contains("my address is")).unwrap();
        let ip = line.rsplit(' ').next().unwrap().trim();
        assert!(ip.starts_with("10.77.0."), "{line}");
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!((100..=150).contains(&last), "{line}");
        assert!(text.contains("hwaddr=52:54:00:4e:45:54"), "{text}");
        assert!(text.contains("device=eth0"), "{text}");

        // The host reaches the guest's kernel (slow to answer while its kernel is emulated).
        let pinged = ns.ping_within(ip, Duration::from_secs(30));
        let _ = vm.kill();
        let _ = vm.wait();
        assert!(pinged, "the guest at {ip} does not answer pings: {:?}", handle.stats());

        // Our DHCP server's lease file agrees.
        let leases = std::fs::read_to_string(mgr.lease_file("vnl")).unwrap_or_default();
        assert!(leases.contains("52:54:00:4e:45:54") && leases.contains(ip), "{leases}");
        assert_eq!(handle.active_pairs(), 2, "the driver switched both pairs on");
        let st = handle.stats();
        assert!(st.tx_frames >= 2 && st.rx_frames >= 2, "{st:?}");
        assert_eq!(st.tx_malformed + st.rx_malformed + st.ctrl_malformed, 0, "{st:?}");

        mgr.destroy("vnl").unwrap();
    });
}
