//! The lease file is state on disk that survives restarts (and that an operator may edit):
//! reading any bytes as one must give leases or a typed error, and a server started over it
//! keeps only valid leases and rewrites a file that reads back the same.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, UNIX_EPOCH};

use hv_fuzz::scratch_dir;
use hv_net::dhcp::{read_leases, write_leases, DhcpConfig, DhcpCore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_dir().join("leases");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(leases) = read_leases(&path) else { return };
    hv_fuzz::reached("read");
    // What was read writes back and reads back unchanged.
    write_leases(&path, &leases).expect("write leases");
    assert_eq!(read_leases(&path).expect("re-read"), leases);
    std::fs::write(&path, data).expect("restore");
    let config = DhcpConfig::new(
        "hvfuzz0",
        Ipv4Addr::new(192, 168, 100, 1),
        24,
        Ipv4Addr::new(192, 168, 100, 10)..=Ipv4Addr::new(192, 168, 100, 20),
        &path,
    );
    let now = UNIX_EPOCH + Duration::from_secs(1_795_600_000);
    let core = DhcpCore::new(config, now).expect("a server over a readable lease file");
    for lease in core.leases() {
        let last = lease.ip.octets()[3];
        assert!(
            lease.ip.octets()[..3] == [192, 168, 100] && (10..=20).contains(&last),
            "{lease:?}"
        );
        assert!(lease.is_active(now));
    }
    assert_eq!(read_leases(&path).expect("rewritten"), core.leases());
});
