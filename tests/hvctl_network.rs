//! hvctl's network verbs end to end through hvd, in a network namespace the test makes: a NAT
//! network's start makes its bridge and firewall and a DHCP server process that outlives a
//! killed hvd; destroy removes them all.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use hv_test_support::netns::{have_netns_tools, NetNs};
use hv_test_support::{is_root, require};

/// An hvd process, killed when dropped.
struct Hvd(Child);

impl Hvd {
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Hvd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An hvd inside namespace `ns` on state directory `state`.
fn start_hvd(ns: &NetNs, state: &Path) -> Hvd {
    let sock = state.join("hvd.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(env!("CARGO_BIN_EXE_hvd"))
        .arg("--state-dir")
        .arg(state)
        .arg("--log-file")
        .arg(state.join("hvd.log"))
        .spawn()
        .expect("start hvd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "hvd did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Hvd(child)
}

fn hvctl(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvctl"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run hvctl")
}

fn ok(state: &Path, args: &[&str]) -> String {
    let o = hvctl(state, args);
    assert!(o.status.success(), "hvctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(state: &Path, args: &[&str], want: &str) {
    let o = hvctl(state, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "hvctl {args:?} should fail: {err}");
    assert!(err.contains(want), "hvctl {args:?}: wanted '{want}' in {err}");
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(|v| v.trim().to_string())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

#[test]
fn network_verbs_through_hvd_and_dhcp_outlives_the_daemon() {
    require!(is_root(), "root (network namespaces, bridges)");
    require!(have_netns_tools(), "ip and ping");
    require!(Path::new("/usr/sbin/nft").exists(), "nft binary (apt-get install nftables)");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let ns = NetNs::new("hvt-hvctl");
    let hvd = start_hvd(&ns, &state);
    let s = state.as_path();

    assert_eq!(
        ok(
            s,
            &[
                "net-define",
                "t1",
                "--mode",
                "nat",
                "--ip",
                "10.61.0.1/24",
                "--dhcp-range",
                "10.61.0.100,10.61.0.200",
                "--dhcp-host",
                "52:54:00:00:00:01,10.61.0.10,web",
            ]
        ),
        "Network t1 defined\n"
    );
    fails(s, &["net-define", "t2", "--mode", "tunnel"], "tunnel");
    fails(s, &["net-start", "nope"], "not defined");
    assert_eq!(ok(s, &["net-list"]).lines().count(), 3, "only active networks by default");
    let list = ok(s, &["net-list", "--all"]);
    let row: Vec<&str> = list.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(row, ["t1", "inactive", "no", "yes"], "{list}");

    assert_eq!(ok(s, &["net-start", "t1"]), "Network t1 started\n");
    let info = ok(s, &["net-info", "t1"]);
    assert_eq!(field(&info, "Active").as_deref(), Some("yes"));
    assert_eq!(field(&info, "Bridge").as_deref(), Some("hvt1"));
    assert_eq!(field(&info, "DHCP host").as_deref(), Some("52:54:00:00:00:01 -> 10.61.0.10 (web)"));
    assert!(field(&info, "Firewall").is_some_and(|f| f.contains("inet")), "{info}");
    let pid: u32 = field(&info, "DHCP server")
        .and_then(|v| v.strip_prefix("pid ").map(str::to_string))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no DHCP server in {info}"));
    assert!(alive(pid));
    assert!(ns.exec_ok(&["ip", "-br", "addr", "show", "hvt1"]).contains("10.61.0.1/24"));
    let leases = ok(s, &["net-dhcp-leases", "t1"]);
    assert!(leases.lines().next().unwrap().contains("Expiry Time"), "{leases}");
    assert_eq!(leases.lines().filter(|l| !l.trim().is_empty()).count(), 2, "no lease yet");
    fails(s, &["net-undefine", "t1"], "active");

    // The DHCP server is a process of its own: killing hvd leaves it serving, and the next
    // hvd on the state directory knows it.
    hvd.kill();
    assert!(alive(pid), "the DHCP server outlives hvd");
    let hvd = start_hvd(&ns, &state);
    let info = ok(s, &["net-info", "t1"]);
    assert_eq!(field(&info, "DHCP server"), Some(format!("pid {pid}")));

    assert_eq!(ok(s, &["net-destroy", "t1"]), "Network t1 destroyed\n");
    assert!(!alive(pid), "net-destroy stops the DHCP server");
    assert!(!ns.exec(&["ip", "link", "show", "hvt1"]).status.success(), "bridge removed");
    assert_eq!(ok(s, &["net-undefine", "t1"]), "Network t1 has been undefined\n");
    fails(s, &["net-info", "t1"], "not defined");
    hvd.kill();
}
