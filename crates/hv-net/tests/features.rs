//! The host feature probe: what this kernel lacks is reported as `Unsupported`, not assumed,
//! and the typed errors say so when a VLAN device or bridge VLAN filtering is asked for.

use hv_net::features::{host_features, Feature};
use hv_net::netlink::{Netlink, NetlinkError};
use hv_test_support::netns::NetNs;

mod common;

#[test]
fn probe_agrees_with_direct_attempts() {
    need_root!();
    let f = host_features();
    for (feature, result) in f.all() {
        eprintln!("{feature}: {result:?}");
    }
    assert_eq!(f.has(Feature::VhostNet), std::path::Path::new("/dev/vhost-net").exists());
    assert_eq!(f.has(Feature::Tun), std::path::Path::new("/dev/net/tun").exists());
    if let Err(e) = f.require(Feature::VhostNet) {
        assert!(e.to_string().contains("vhost-net"), "{e}");
    }
    let vlan = f.has(Feature::VlanDevices);
    let filtering = f.has(Feature::BridgeVlanFiltering);
    NetNs::new("hvt-feat").run(|| {
        let mut nl = Netlink::new().unwrap();
        nl.create_bridge("hvbrf").unwrap();
        match nl.create_vlan("hvbrf.5", "hvbrf", 5) {
            Ok(_) => assert!(vlan),
            Err(NetlinkError::Unsupported { what, .. }) => {
                assert!(!vlan);
                assert_eq!(what, "802.1Q VLAN devices");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        match nl.set_bridge_vlan_filtering("hvbrf", true) {
            Ok(()) => assert!(filtering),
            Err(NetlinkError::Unsupported { what, .. }) => {
                assert!(!filtering);
                assert_eq!(what, "bridge VLAN filtering");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    });
}
