//! Shared by the hv-cloud tests: a real `hv-cloud serve` process, the real `openstack`
//! client pointed at it, and a raw HTTP/1.1 client for requests no well-behaved client sends.

#![allow(dead_code)] // Each test binary uses a different part.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The admin password the tests bootstrap with.
pub const ADMIN_PASSWORD: &str = "admin-secret-1";

/// The `openstack` client: `$HV_OPENSTACK`, or the venv `.ci/setup` makes.
pub fn openstack_bin() -> Option<PathBuf> {
    let p = std::env::var_os("HV_OPENSTACK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hv-venv/bin/openstack"));
    p.exists().then_some(p)
}

/// What to say when the client is missing.
pub const OPENSTACK_MISSING: &str =
    "the openstack client (python-openstackclient in /opt/hv-venv, or $HV_OPENSTACK)";

/// The value of `field` in a `show -f json` object.
pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("no string '{field}' in {v}"))
}

/// The names in a `list -f json` table, sorted.
pub fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> =
        v.as_array().unwrap().iter().map(|r| r["Name"].as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

/// True when this host can run servers: KVM, root, `ip` and `nft` (for the netns, bridges
/// and NAT the compute host makes).
pub fn can_run_vms() -> bool {
    hv_test_support::have_kvm()
        && hv_test_support::is_root()
        && hv_test_support::netns::have_netns_tools()
        && Path::new("/usr/sbin/nft").exists()
}

/// A running `hv-cloud serve`.
pub struct Serve {
    child: Option<Child>,
    /// Its base URL.
    pub url: String,
    /// `HOST:PORT`.
    pub addr: String,
    state: PathBuf,
    database: Option<String>,
    extra: Vec<String>,
}

impl Serve {
    /// Starts a control-plane-only server on a free loopback port with state in `state` (and
    /// `database`).
    pub fn start(state: &Path, database: Option<&str>) -> Serve {
        Serve::start_with(state, database, &["--control-plane-only"], "127.0.0.1:0")
    }

    /// Starts a server that is also a compute host (its servers run the test build's hv-vmm),
    /// on SQLite in `state`.
    pub fn start_compute(state: &Path) -> Serve {
        let vmm = hv_test_support::vmm_binary();
        Serve::start_with(state, None, &["--vmm-binary", vmm.to_str().unwrap()], "127.0.0.1:0")
    }

    /// Starts a server with extra arguments, listening on `listen`.
    pub fn start_with(state: &Path, database: Option<&str>, extra: &[&str], listen: &str) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hv-cloud"));
        cmd.arg("serve").arg("--state-dir").arg(state).args(["--listen", listen]);
        if let Some(d) = database {
            cmd.args(["--database", d]);
        }
        cmd.args(extra)
            .env("HV_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn hv-cloud");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read hv-cloud's first line");
        // "hv-cloud: serving URL on ADDR"
        let mut words = line.split_whitespace().skip(2);
        let (Some(url), Some("on"), Some(addr)) = (words.next(), words.next(), words.next()) else {
            let status = child.wait().expect("wait");
            panic!("hv-cloud did not start ({status}): {line:?}");
        };
        Serve {
            child: Some(child),
            url: url.to_string(),
            addr: addr.to_string(),
            state: state.to_path_buf(),
            database: database.map(str::to_string),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Stops the server with SIGTERM and checks it exits cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = child.wait().expect("wait for hv-cloud");
        assert!(status.success(), "hv-cloud exited with {status} after SIGTERM");
    }

    /// Stops the server and starts a new one on the same state and port.
    pub fn restart(&mut self) {
        self.stop();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = Serve::start_with(&self.state, self.database.as_deref(), &extra, &self.addr);
        assert_eq!(next.url, self.url);
        *self = next;
    }

    /// The identity URL clients are configured with.
    pub fn auth_url(&self) -> String {
        format!("{}/identity/v3", self.url)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `openstack` client as one user in one project.
#[derive(Clone)]
pub struct Os {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl Os {
    /// A client of `serve` as `user`/`password` scoped to `project`.
    pub fn new(bin: &Path, serve: &Serve, user: &str, password: &str, project: &str) -> Os {
        let env = [
            ("OS_AUTH_URL", serve.auth_url()),
            ("OS_USERNAME", user.into()),
            ("OS_PASSWORD", password.into()),
            ("OS_PROJECT_NAME", project.into()),
            ("OS_USER_DOMAIN_NAME", "Default".into()),
            ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
            ("OS_IDENTITY_API_VERSION", "3".into()),
            ("OS_REGION_NAME", "RegionOne".into()),
            ("OS_INTERFACE", "public".into()),
            ("OS_AUTH_TYPE", "password".into()),
        ];
        Os {
            bin: bin.to_path_buf(),
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// A client configured only by `--os-cloud NAME` with `clouds.yaml` in `dir`.
    pub fn cloud(bin: &Path, dir: &Path, name: &str) -> Os {
        Os {
            bin: bin.to_path_buf(),
            env: vec![
                ("OS_CLIENT_CONFIG_FILE".into(), dir.join("clouds.yaml").display().to_string()),
                ("OS_CLOUD".into(), name.into()),
            ],
        }
    }

    /// Runs the client.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("OS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()
            .expect("run openstack")
    }

    /// Runs the client, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "openstack {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the client with `-f json`, which must succeed; returns the parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// `image create --disk-format aki --container-format aki --file KERNEL --property P ...
    /// NAME`: a kernel image as OpenStack boots it by direct kernel boot.
    pub fn create_aki(&self, name: &str, kernel: &Path, properties: &[&str]) -> Value {
        let file = kernel.to_str().expect("a UTF-8 kernel path");
        let mut args = vec!["image", "create", "--disk-format", "aki", "--container-format", "aki"];
        args.extend(["--file", file]);
        for p in properties {
            args.extend(["--property", p]);
        }
        args.push(name);
        self.json(&args)
    }

    /// Runs the client, which must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "openstack {args:?} succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to the end.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).expect("send head");
    // The server may answer (413) before taking a whole huge body: a failed write is fine.
    let _ = s.write_all(body);
    read_answer(&mut s)
}

/// Reads a whole HTTP/1.1 answer (Content-Length or chunked, or to EOF).
pub fn read_answer(s: &mut impl Read) -> Answer {
    let mut raw = vec![];
    let _ = s.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        let mut out = vec![];
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16)
                .expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 2 + size + 2..];
        }
        body = out;
    }
    Answer { status, headers, body }
}

/// A token for `user` in `project` (201 expected), by a raw request.
pub fn token(addr: &str, user: &str, password: &str, project: &str) -> String {
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
    let a = http(
        addr,
        "POST",
        "/identity/v3/auth/tokens",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    a.header("x-subject-token").expect("X-Subject-Token").to_string()
}

/// A JSON request with a token; returns the answer.
pub fn call(addr: &str, token: &str, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    http(
        addr,
        method,
        path,
        &[("X-Auth-Token", token), ("Content-Type", "application/json")],
        b.as_bytes(),
    )
}

/// Makes project `name` with a member user `name`-user (password `pw-NAME`); returns its id.
pub fn tenant(addr: &str, admin: &str, name: &str) -> String {
    let p = call(
        addr,
        admin,
        "POST",
        "/identity/v3/projects",
        Some(&serde_json::json!({"project": {"name": name}})),
    );
    assert_eq!(p.status, 201);
    let pid = p.json()["project"]["id"].as_str().unwrap().to_string();
    let u = call(
        addr,
        admin,
        "POST",
        "/identity/v3/users",
        Some(
            &serde_json::json!({"user": {"name": format!("{name}-user"), "password": format!("pw-{name}"),
                              "default_project_id": pid}}),
        ),
    );
    assert_eq!(u.status, 201);
    let uid = u.json()["user"]["id"].as_str().unwrap().to_string();
    let roles = call(addr, admin, "GET", "/identity/v3/roles?name=member", None).json();
    let rid = roles["roles"][0]["id"].as_str().unwrap().to_string();
    let g = call(
        addr,
        admin,
        "PUT",
        &format!("/identity/v3/projects/{pid}/users/{uid}/roles/{rid}"),
        None,
    );
    assert_eq!(g.status, 204);
    pid
}
