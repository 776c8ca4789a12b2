//! `hvctl console` against hvd as a user runs it: a domain with `<serial type='pty'>` booting
//! the echoing test guest (`test=echo`), `dumpxml` naming its pty, the console attached by a
//! real `hvctl` process with piped stdin and stdout (a line in, its echo out, Ctrl-]
//! detaching with exit 0), a second console refused with virsh's message, `--force` taking the
//! console over, and a console ending by itself when the domain stops; after save and
//! restore (a new VMM, a new pty) the console works over TCP with the key, and not without.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_test_support::{have_kvm, require, test_guest};

/// A state directory with its on-demand hvd (ended by pid when the test ends).
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn hvctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hvctl"))
            .arg("--state-dir")
            .arg(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run hvctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.hvctl(args);
        assert!(o.status.success(), "hvctl {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The daemon's pid, from its `GET /v1/ping` answer (`{"pong":{"pid":N,..}}`).
    fn hvd_pid(&self) -> Option<i32> {
        let sock = hv::host::daemon::socket_path(self.dir.path());
        let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
        s.write_all(b"GET /v1/ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()?;
        find_pid(&body)
    }
}

fn find_pid(v: &serde_json::Value) -> Option<i32> {
    match v {
        serde_json::Value::Object(m) => m
            .get("pid")
            .and_then(serde_json::Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .or_else(|| m.values().find_map(find_pid)),
        _ => None,
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Domains first (their VMMs are in sessions of their own), then the daemon.
        let _ = self.hvctl(&["destroy", "echo"]);
        if let Some(pid) = self.hvd_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// A running `hvctl console` with its stdout collected as it arrives.
struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    fn spawn(h: &Host, args: &[&str]) -> Console {
        let dir = h.dir.path().to_str().expect("utf-8");
        Console::spawn_with(&["--state-dir", dir], args)
    }

    /// `hvctl CONN... console ARGS...`.
    fn spawn_with(conn: &[&str], args: &[&str]) -> Console {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hvctl"))
            .args(conn)
            .arg("console")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hvctl console");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Console { child, stdin, out }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.text().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                let _ = self.child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("hvctl console ended ({status}) before {needle:?}: {}{err}", self.text());
            }
            assert!(Instant::now() < deadline, "{needle:?} never came: {:?}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).and_then(|()| stdin.flush()).expect("write to hvctl");
    }

    /// Waits (at most 20 s) for hvctl to end; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "hvctl console did not end: {}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pty `dumpxml` names in `<source path='...'/>`.
fn pty_in(xml: &str) -> PathBuf {
    let at = xml.find("<source path=\"/dev/pts/").unwrap_or_else(|| panic!("no pty in {xml}"));
    let rest = &xml[at + "<source path=\"".len()..];
    PathBuf::from(&rest[..rest.find('"').expect("closing quote")])
}

/// Defines domain `echo`: the echoing test guest, its serial a pty.
fn define_echo(h: &Host) {
    define_echo_with(h, "<serial type='pty'><target port='0'/></serial>");
}

/// Defines domain `echo` with the `serial` element given.
fn define_echo_with(h: &Host, serial: &str) {
    let xml = format!(
        "<domain type='kvm'><name>echo</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type>hvm</type><kernel>{}</kernel><cmdline>test=echo</cmdline></os>\
         <devices>{serial}</devices></domain>",
        test_guest().display()
    );
    let file = h.dir.path().join("echo.xml");
    std::fs::write(&file, xml).expect("write XML");
    h.ok(&["define", file.to_str().expect("utf-8")]);
}

#[test]
fn hvctl_console_reaches_a_pty_domain_one_session_at_a_time() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host { dir: tempfile::tempdir().expect("temp dir") };
    define_echo(&h);
    assert!(!h.ok(&["dumpxml", "echo"]).contains("/dev/pts/"), "a stopped domain has no pty");
    h.ok(&["start", "echo"]);
    let dumped = h.ok(&["dumpxml", "echo"]);
    let pty = pty_in(&dumped);
    assert!(Path::new(&pty).exists(), "{}", pty.display());
    assert!(dumped.contains(&format!("<console type=\"pty\" tty=\"{}\">", pty.display())));

    let mut first = Console::spawn(&h, &["echo"]);
    first.wait_for("Connected to domain 'echo'\nEscape character is ^] (Ctrl + ])\n");
    first.send(b"hello console\n");
    first.wait_for("hvtest: echo hello console\n");

    // A second console is refused while the first holds it, and the first goes on.
    let second = h.hvctl(&["console", "echo"]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("Active console session exists for this domain"), "{err}");
    first.send(b"still here\n");
    first.wait_for("hvtest: echo still here\n");

    // Ctrl-] detaches: hvctl ends with 0 and the console is free again.
    first.send(&[0x1d]);
    assert_eq!(first.wait_exit(), Some(0), "{}", first.text());

    // --force takes the console from a session that holds it, which then ends cleanly.
    let mut again = Console::spawn(&h, &["echo"]);
    again.wait_for("Escape character is ^]");
    let mut forced = Console::spawn(&h, &["echo", "--force"]);
    forced.wait_for("Escape character is ^]");
    assert_eq!(again.wait_exit(), Some(0), "{}", again.text());
    forced.send(b"forced\n");
    forced.wait_for("hvtest: echo forced\n");

    // The guest powers off on `quit`: the console ends by itself, with 0.
    forced.send(b"quit\n");
    forced.wait_for("hvtest: done");
    assert_eq!(forced.wait_exit(), Some(0), "{}", forced.text());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.ok(&["domstate", "echo"]).starts_with("shut off") {
        assert!(Instant::now() < deadline, "the domain did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restored_domain_has_a_new_pty_and_the_console_works_over_tcp_with_the_key() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host { dir: tempfile::tempdir().expect("temp dir") };
    let key = h.dir.path().join("key");
    std::fs::write(&key, "s3cret-key\n").expect("write key");
    let port = 20000 + (std::process::id() % 20000) + 1;
    let mut hvd = Command::new(env!("CARGO_BIN_EXE_hvd"))
        .arg("--state-dir")
        .arg(h.dir.path())
        .args(["--listen", &format!("tcp:127.0.0.1:{port}"), "--auth-key-file"])
        .arg(&key)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hvd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.hvd_pid().is_none() {
        assert!(Instant::now() < deadline, "hvd never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    define_echo(&h);
    h.ok(&["start", "echo"]);
    let save = h.dir.path().join("echo.save");
    h.ok(&["save", "echo", save.to_str().expect("utf-8")]);
    h.ok(&["restore", save.to_str().expect("utf-8")]);
    let after = pty_in(&h.ok(&["dumpxml", "echo"]));
    assert!(after.exists(), "{}", after.display());

    let uri = format!("hv+tcp://127.0.0.1:{port}");
    let key_s = key.to_str().expect("utf-8");
    let wrong = h.dir.path().join("wrong");
    std::fs::write(&wrong, "guess").expect("write key");
    let mut refused = Console::spawn_with(
        &["-c", &uri, "--auth-key-file", wrong.to_str().expect("utf-8")],
        &["echo"],
    );
    assert_eq!(refused.wait_exit(), Some(1));
    assert!(!refused.text().contains("Connected"), "{}", refused.text());

    let mut c = Console::spawn_with(&["-c", &uri, "--auth-key-file", key_s], &["echo"]);
    c.wait_for("Connected to domain 'echo'");
    c.send(b"over tcp after restore\n");
    c.wait_for("hvtest: echo over tcp after restore\n");
    c.send(&[0x1d]);
    assert_eq!(c.wait_exit(), Some(0), "{}", c.text());
    h.ok(&["destroy", "echo"]);
    let _ = hvd.kill();
    let _ = hvd.wait();
}

#[test]
fn a_file_serial_domain_streams_its_output_and_ignores_input() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host { dir: tempfile::tempdir().expect("temp dir") };
    let log = h.dir.path().join("echo.serial");
    define_echo_with(
        &h,
        &format!("<serial type='file'><source path='{}'/></serial>", log.display()),
    );
    let refused = h.hvctl(&["console", "echo"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("domain is not running"));
    h.ok(&["start", "echo"]);
    let mut c = Console::spawn(&h, &["echo"]);
    c.wait_for("hvtest: echo ready\n");
    // Input has nowhere to go: the guest never sees it.
    c.send(b"unheard\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!std::fs::read_to_string(&log).unwrap_or_default().contains("unheard"));
    c.send(&[0x1d]);
    assert_eq!(c.wait_exit(), Some(0), "{}", c.text());
}
