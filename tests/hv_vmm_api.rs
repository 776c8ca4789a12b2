//! API conformance of the `hv-vmm` binary: every endpoint's status code in each VM state (not
//! created, Created, Running, Paused, Shutdown), malformed bodies, unknown paths and wrong
//! methods, over the real Unix socket, with the test guest running; and `curl --unix-socket`
//! getting the same answers as hv's own client.

mod vmm_process;

use hv::vmm::client::Client;
use vmm_process::{can_run_guests, get, guest_config, put, VmmProcess};

/// The body-less actions.
const ACTIONS: [&str; 6] =
    ["vm.boot", "vm.pause", "vm.resume", "vm.shutdown", "vm.reboot", "vm.power-button"];

/// The state endpoints, each with a well-formed body that cannot succeed (a directory that
/// cannot be made, a snapshot or a listener that does not exist, a socket that cannot be
/// bound), so a call the state allows fails with a 500 and leaves the VM as it was.
const STATE_ENDPOINTS: [(&str, &str); 4] = [
    ("vm.snapshot", r#"{"destination_url":"file:///proc/hv-no-such/snap"}"#),
    ("vm.restore", r#"{"source_url":"file:///hv-no-such-snapshot"}"#),
    ("vm.send-migration", r#"{"destination_url":"unix:/hv-no-such-dir/mig.sock"}"#),
    ("vm.receive-migration", r#"{"receiver_url":"unix:/hv-no-such-dir/mig.sock"}"#),
];

/// Bodies with a URL of the wrong form, per endpoint.
const BAD_URLS: [(&str, &str); 4] = [
    ("vm.snapshot", r#"{"destination_url":"/tmp/snap"}"#),
    ("vm.restore", r#"{"source_url":"file://relative/snap"}"#),
    ("vm.send-migration", r#"{"destination_url":"http://example.com/"}"#),
    ("vm.receive-migration", r#"{"receiver_url":"tcp:no-port"}"#),
];

/// Migration options hv refuses whatever the state: more than one connection, a timeout
/// strategy Cloud Hypervisor does not have.
const BAD_OPTIONS: [&str; 2] = [
    r#"{"destination_url":"unix:/tmp/mig.sock","connections":4}"#,
    r#"{"destination_url":"unix:/tmp/mig.sock","timeout_strategy":"Sometimes"}"#,
];

/// Asserts a status, and for an error that the body is a JSON array of messages.
fn expect(c: &Client, method: &str, endpoint: &str, body: Option<&str>, status: u16) -> String {
    let r = c
        .request(method, endpoint, body.map(str::as_bytes))
        .unwrap_or_else(|e| panic!("{method} {endpoint}: {e}"));
    assert_eq!(r.status, status, "{method} {endpoint} {body:?} answered {}: {}", r.status, r.body);
    if status >= 400 {
        let msgs: Vec<String> = serde_json::from_str(&r.body).unwrap_or_else(|e| {
            panic!("{endpoint}: error body {:?} is not a JSON list: {e}", r.body)
        });
        assert!(!msgs.is_empty() && !msgs[0].is_empty(), "{endpoint}: empty error");
    }
    r.body
}

/// The actions' codes in `state`: `ok` lists the actions that succeed (and are not run here);
/// `states` the codes of the four state endpoints (snapshot, restore, send, receive) with
/// their failing bodies.
fn check_actions(c: &Client, missing: u16, ok: &[&str], states: [u16; 4]) {
    for a in ACTIONS.iter().filter(|a| !ok.contains(a)) {
        expect(c, "PUT", a, None, missing);
    }
    let before = c.info().ok().map(|i| i.state);
    for ((endpoint, body), code) in STATE_ENDPOINTS.into_iter().zip(states) {
        expect(c, "PUT", endpoint, Some(body), code);
        expect(c, "PUT", endpoint, Some("{"), 400);
        expect(c, "PUT", endpoint, Some(r#"{"bogus":1}"#), 400);
        expect(c, "PUT", endpoint, Some("{}"), 400);
    }
    for (endpoint, body) in BAD_URLS {
        expect(c, "PUT", endpoint, Some(body), 400);
    }
    for body in BAD_OPTIONS {
        expect(c, "PUT", "vm.send-migration", Some(body), 400);
    }
    assert_eq!(c.info().ok().map(|i| i.state), before, "a failed state call changed the VM");
    expect(c, "GET", "vmm.ping", None, 200);
    expect(c, "GET", "vm.nope", None, 404);
    expect(c, "PUT", "vm.nope", Some("{}"), 404);
    expect(c, "GET", "vm.boot", None, 400);
    expect(c, "POST", "vm.info", None, 400);
    let r = c.request("GET", "../../etc/passwd", None).expect("request");
    assert_eq!(r.status, 404, "{}", r.body);
}

fn state(c: &Client) -> String {
    let info = c.info().expect("vm.info");
    serde_json::to_value(info.state).expect("state").as_str().expect("string").to_owned()
}

#[test]
fn every_endpoint_answers_cloud_hypervisors_codes_in_every_state() {
    if !can_run_guests() {
        return;
    }
    let mut vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    let ping = c.ping().expect("ping");
    assert_eq!(ping.pid, i64::from(vmm.child.id()));

    // Not created: restore and receive are allowed (and fail on their bodies).
    check_actions(&c, 404, &[], [404, 500, 404, 500]);
    expect(&c, "GET", "vm.info", None, 404);
    expect(&c, "GET", "vm.counters", None, 404);
    expect(&c, "PUT", "vm.delete", None, 204);
    for bad in [
        "",
        "{",
        "[]",
        "null",
        "\u{0}\u{1}binary",
        r#"{"payload":{"kernel":"/k"},"bogus":1}"#,
        r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":"two","max_vcpus":2}}"#,
        r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":-1,"max_vcpus":1}}"#,
        r#"{"payload":{"kernel":"/k"},"memory":{"size":18446744073709551616}}"#,
        r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1,"max_vcpus":2}}"#,
        r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":100000,"max_vcpus":100000}}"#,
        r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/d","image_type":"Unknown"}]}"#,
        r#"{"payload":{"kernel":"/k"},"console":{"mode":"Pty"}}"#,
        r#"{"payload":{"kernel":"/k"},"vsock":{"cid":3,"socket":"/s"}}"#,
        r#"{"payload":{}}"#,
    ] {
        expect(&c, "PUT", "vm.create", Some(bad), 400);
    }
    let bad_utf8 = c.put("vm.create", Some(&[0xff, 0xfe, b'{'])).expect("request");
    assert_eq!(bad_utf8.status, 400);
    expect(&c, "GET", "vm.info", None, 404);

    // Created (a guest that halts and stays so: it ignores the power button).
    let config = guest_config("test=hlt", &vmm.serial);
    expect(&c, "PUT", "vm.create", Some(&config), 204);
    assert_eq!(state(&c), "Created");
    expect(&c, "PUT", "vm.create", Some(&config), 405);
    check_actions(&c, 405, &["vm.boot"], [405, 404, 405, 404]);
    assert_eq!(expect(&c, "GET", "vm.counters", None, 200), "{}");
    let info = c.info().expect("info");
    assert_eq!(info.config.memory.size, 64 << 20);
    assert_eq!(info.memory_actual_size, Some(64 << 20));

    // Running.
    expect(&c, "PUT", "vm.boot", None, 204);
    vmm.wait_for_line("halting", 1);
    assert_eq!(state(&c), "Running");
    check_actions(
        &c,
        405,
        &["vm.pause", "vm.shutdown", "vm.reboot", "vm.power-button"],
        [405, 404, 500, 404],
    );
    expect(&c, "PUT", "vm.create", Some(&config), 405);
    expect(&c, "PUT", "vm.power-button", None, 204);
    assert!(vmm.log_text().contains("has not enabled the ACPI power-button event"));

    // Paused.
    expect(&c, "PUT", "vm.pause", None, 204);
    assert_eq!(state(&c), "Paused");
    check_actions(
        &c,
        405,
        &["vm.resume", "vm.shutdown", "vm.reboot", "vm.power-button"],
        [500, 404, 500, 404],
    );
    expect(&c, "PUT", "vm.resume", None, 204);
    assert_eq!(state(&c), "Running");
    expect(&c, "PUT", "vm.pause", None, 204);
    // A reboot from Paused boots the guest again, appending to the serial file.
    expect(&c, "PUT", "vm.reboot", None, 204);
    assert_eq!(state(&c), "Running");
    vmm.wait_for_line("boot", 2);
    vmm.wait_for_line("halting", 2);

    // Shutdown.
    expect(&c, "PUT", "vm.shutdown", None, 204);
    assert_eq!(state(&c), "Shutdown");
    check_actions(&c, 405, &["vm.boot"], [405, 404, 405, 404]);
    expect(&c, "PUT", "vm.create", Some(&config), 405);
    expect(&c, "GET", "vm.counters", None, 200);
    // Boot from Shutdown starts the same configuration again.
    expect(&c, "PUT", "vm.boot", None, 204);
    vmm.wait_for_line("halting", 3);
    assert_eq!(state(&c), "Running");

    // Delete from Running, then create again.
    expect(&c, "PUT", "vm.delete", None, 204);
    expect(&c, "GET", "vm.info", None, 404);
    check_actions(&c, 404, &[], [404, 500, 404, 500]);
    expect(&c, "PUT", "vm.create", Some(&config), 204);
    assert_eq!(state(&c), "Created");

    expect(&c, "PUT", "vmm.shutdown", None, 204);
    let status = vmm.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", vmm.log_text());
    assert!(!vmm.socket.exists(), "the socket is removed at exit");
}

/// Runs `curl --unix-socket` and returns (status, body).
fn curl(
    socket: &std::path::Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(["-X", method])
        .arg(format!("http://localhost/api/v1/{endpoint}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().expect("status code"), body.to_owned())
}

#[test]
fn curl_gets_the_same_answers_as_the_client() {
    let have_curl = std::process::Command::new("curl").arg("--version").output().is_ok();
    hv_test_support::require!(have_curl, "curl is not installed");
    if !can_run_guests() {
        return;
    }
    let vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    let config = guest_config("test=hlt", &vmm.serial);
    let steps: [(&str, &str, Option<&str>); 9] = [
        ("GET", "vm.info", None),
        ("PUT", "vm.boot", None),
        ("PUT", "vm.create", Some("{\"payload\":")),
        ("PUT", "vm.create", Some(&config)),
        ("GET", "vm.info", None),
        ("PUT", "vm.boot", None),
        ("PUT", "vm.resume", None),
        ("PUT", "vm.pause", None),
        ("GET", "vm.info", None),
    ];
    let mut codes = Vec::new();
    for (method, endpoint, body) in steps {
        let (code, text) = curl(&vmm.socket, method, endpoint, body);
        codes.push(code);
        if endpoint == "vm.info" && code == 200 {
            let from_client = get(&c, "vm.info");
            assert_eq!(from_client.status, 200);
            assert_eq!(text, from_client.body, "curl and the client see the same vm.info");
        }
    }
    assert_eq!(codes, [404, 404, 400, 204, 200, 204, 405, 204, 200]);
    let (code, text) = curl(&vmm.socket, "GET", "vmm.ping", None);
    assert_eq!(code, 200);
    assert!(text.contains("\"version\""), "{text}");
    assert_eq!(put(&c, "vm.delete", None).status, 204);
    let (code, _) = curl(&vmm.socket, "PUT", "vmm.shutdown", None);
    assert_eq!(code, 204);
}

#[test]
fn garbage_on_the_socket_is_answered_or_dropped_and_the_server_goes_on() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let vmm = VmmProcess::spawn(&[], true);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{",
        b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x00\x01\x02\xff\xfe",
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n",
    ] {
        let mut s = UnixStream::connect(&vmm.socket).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        s.write_all(garbage).expect("write");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{garbage:?} answered {text:?}"
        );
    }
    let ping = vmm.client().ping().expect("the server still answers");
    assert_eq!(ping.pid, i64::from(vmm.child.id()));
}

#[test]
fn a_nic_without_a_mac_gets_one_kept_in_the_config() {
    if !can_run_guests() {
        return;
    }
    let vmm = VmmProcess::spawn(&[], true);
    let c = vmm.client();
    let mut config: serde_json::Value =
        serde_json::from_str(&guest_config("test=hlt", &vmm.serial)).unwrap();
    config["net"] =
        serde_json::json!([{"tap": "hvnomac0"}, {"tap": "hvnomac1", "mac": "52:54:00:12:34:56"}]);
    expect(&c, "PUT", "vm.create", Some(&config.to_string()), 204);
    let info: serde_json::Value =
        serde_json::from_str(&expect(&c, "GET", "vm.info", None, 200)).unwrap();
    let made = info["config"]["net"][0]["mac"].as_str().expect("a MAC was assigned");
    let parsed: hv::net::MacAddr = made.parse().expect("a well-formed MAC");
    assert_eq!(parsed.0[0] & 0x03, 0x02, "{made}: unicast and locally administered");
    assert_eq!(info["config"]["net"][1]["mac"], "52:54:00:12:34:56", "a given MAC is kept");
    // The same config, MAC included, is what a snapshot or a migration carries.
    let again: serde_json::Value =
        serde_json::from_str(&expect(&c, "GET", "vm.info", None, 200)).unwrap();
    assert_eq!(again["config"]["net"][0]["mac"].as_str(), Some(made));
}
