//! DHCP packets come from guests: decoding and answering them must never panic.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::SystemTime;

use hv_net::dhcp::{decode_request, DhcpConfig, DhcpCore};
use libfuzzer_sys::fuzz_target;

fn config() -> DhcpConfig {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("hv-fuzz-dhcp-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    });
    DhcpConfig::new(
        "hvfuzz0",
        Ipv4Addr::new(10, 0, 0, 1),
        24,
        Ipv4Addr::new(10, 0, 0, 10)..=Ipv4Addr::new(10, 0, 0, 20),
        dir.join("leases"),
    )
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_request(data) {
        if let Ok(mut core) = DhcpCore::new(config(), SystemTime::now()) {
            let _ = core.handle(&msg, SystemTime::now());
        }
    }
});
