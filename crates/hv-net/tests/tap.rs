//! TAP devices inside a test namespace: create, offloads, persistence, multiqueue, delete.

use hv_net::netlink::Netlink;
use hv_net::tap::{Tap, TapError};
use hv_test_support::netns::NetNs;

mod common;

#[test]
fn tap_non_persistent_goes_with_its_file() {
    need_root!();
    NetNs::new("hvt-tap").run(|| {
        let mut nl = Netlink::new().unwrap();
        let tap = Tap::open("hvtap0").unwrap();
        assert!(tap.created());
        assert_eq!(nl.require_link("hvtap0").unwrap().kind.as_deref(), Some("tun"));
        tap.set_offload(true, true, true, false).unwrap();
        tap.set_offload(false, false, false, false).unwrap();
        tap.set_vnet_hdr_size(12).unwrap();
        tap.set_vnet_hdr_size(10).unwrap();
        drop(tap);
        assert!(nl.link("hvtap0").unwrap().is_none(), "closing the last file removes it");
    });
}

#[test]
fn tap_persistent_reopen_and_delete() {
    need_root!();
    NetNs::new("hvt-tapp").run(|| {
        let mut nl = Netlink::new().unwrap();
        let tap = Tap::builder("hvtap1").persistent(true).open().unwrap();
        let index = nl.require_link("hvtap1").unwrap().index;
        drop(tap);
        assert_eq!(nl.require_link("hvtap1").unwrap().index, index, "persistent TAP stays");
        // Opening an existing TAP attaches to it (idempotent re-create).
        let again = Tap::open("hvtap1").unwrap();
        assert!(!again.created());
        assert_eq!(nl.require_link("hvtap1").unwrap().index, index);
        // Bridged like a guest port.
        nl.create_bridge("hvbr9").unwrap();
        nl.set_master("hvtap1", "hvbr9").unwrap();
        drop(again);
        assert!(nl.delete_link("hvtap1").unwrap());
        assert!(nl.link("hvtap1").unwrap().is_none());
        nl.delete_link("hvbr9").unwrap();
    });
}

#[test]
fn tap_multiqueue() {
    need_root!();
    NetNs::new("hvt-tapq").run(|| {
        let mut nl = Netlink::new().unwrap();
        let tap = Tap::builder("hvtapq").queues(4).open().unwrap();
        assert_eq!(tap.queues().len(), 4);
        assert!(tap.queue_fd(3).is_some());
        tap.set_offload(true, true, false, false).unwrap();
        assert!(nl.link("hvtapq").unwrap().is_some());
        // One more queue of the same multiqueue TAP, opened on its own.
        let extra = Tap::builder("hvtapq").multi_queue(true).open().unwrap();
        assert!(!extra.created());
        // A single-queue open of a multiqueue TAP is refused by the kernel, with the name.
        let err = Tap::open("hvtapq").unwrap_err();
        assert!(err.to_string().contains("hvtapq"), "{err}");
        drop(extra);
        drop(tap);
        assert!(nl.link("hvtapq").unwrap().is_none());
        assert!(matches!(
            Tap::builder("hvtapq").queues(0).open(),
            Err(TapError::InvalidQueues { .. })
        ));
        assert!(matches!(Tap::open("bad/name"), Err(TapError::InvalidName(_))));
    });
}
