//! Live migration between two hvd, as a user drives it: two state directories (over the
//! daemons' Unix sockets), and two network namespaces joined by a veth (over TCP with the
//! shared key). The memory-checking test guest writes to one serial file in every VMM it runs
//! in, so its transcript must go on round after round with no page ever wrong.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use hv_test_support::netns::{have_netns_tools, NetNs};
use hv_test_support::{check_dirty_transcript, have_kvm, is_root, require, test_guest};

const DIRTY_EVERY: u64 = 4;

/// One hvd on its own state directory (in a namespace when given), stopped when dropped.
struct Hvd {
    state: PathBuf,
    child: Child,
}

impl Hvd {
    fn start(state: &Path, ns: Option<&NetNs>, tcp: Option<(&str, &Path)>) -> Hvd {
        std::fs::create_dir_all(state).unwrap();
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).arg(env!("CARGO_BIN_EXE_hvd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_hvd")),
        };
        cmd.arg("--state-dir").arg(state).arg("--log-file").arg(state.join("hvd.log"));
        if let Some((addr, key)) = tcp {
            cmd.args(["--listen", &format!("tcp:{addr}")]).arg("--auth-key-file").arg(key);
        }
        let child = cmd.spawn().expect("start hvd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(state.join("hvd.sock")).is_err() {
            assert!(Instant::now() < deadline, "hvd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Hvd { state: state.to_path_buf(), child }
    }

    /// An hvd in a mount namespace of its own where `hidden` is an empty tmpfs: a host that
    /// does not share that storage.
    fn start_without(state: &Path, hidden: &Path) -> Hvd {
        std::fs::create_dir_all(state).unwrap();
        let script = format!(
            "mount -t tmpfs none '{}' && exec '{}' --state-dir '{}' --log-file '{}'",
            hidden.display(),
            env!("CARGO_BIN_EXE_hvd"),
            state.display(),
            state.join("hvd.log").display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .expect("start hvd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(state.join("hvd.sock")).is_err() {
            assert!(Instant::now() < deadline, "hvd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Hvd { state: state.to_path_buf(), child }
    }

    fn uri(&self) -> String {
        format!("hv+unix://{}", self.state.join("hvd.sock").display())
    }

    fn hvctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hvctl"))
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .output()
            .expect("run hvctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.hvctl(args);
        assert!(
            o.status.success(),
            "hvctl {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn state_of(&self, name: &str) -> String {
        self.ok(&["domstate", "--reason", name]).trim().to_string()
    }
}

impl Drop for Hvd {
    fn drop(&mut self) {
        // Domains first (hvd leaves them running when it goes), then the daemon.
        let list = self.hvctl(&["list", "--name"]);
        for name in String::from_utf8_lossy(&list.stdout).lines().filter(|l| !l.is_empty()) {
            let _ = self.hvctl(&["destroy", name]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Defines domain `name` running the memory-checking guest with a disk at `disk`.
fn define_dirty(h: &Hvd, name: &str, serial: &Path, disk: &Path) {
    std::fs::File::create(disk).unwrap().set_len(1 << 20).unwrap();
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type>hvm</type><kernel>{}</kernel>\
         <cmdline>test=dirty pages=256 every={DIRTY_EVERY}</cmdline></os>\
         <devices><disk type='file'><driver name='qemu' type='raw'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk>\
         <serial type='file'><source path='{}'/></serial></devices></domain>",
        test_guest().display(),
        disk.display(),
        serial.display()
    );
    let file = h.state.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    h.ok(&["define", file.to_str().unwrap()]);
}

fn wait_round(serial: &Path, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        match check_dirty_transcript(&text, DIRTY_EVERY) {
            Ok(r) if r > after => return r,
            Err(e) if e.contains("bad page") || e.contains("follows") => panic!("{e}:\n{text}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no dirty round after {after}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn last_round(serial: &Path) -> u64 {
    check_dirty_transcript(&std::fs::read_to_string(serial).unwrap(), DIRTY_EVERY).unwrap()
}

#[test]
fn live_migration_between_two_hvd_on_two_state_dirs() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let tmp = tempfile::tempdir().unwrap();
    let src = Hvd::start(&tmp.path().join("a"), None, None);
    let dst = Hvd::start(&tmp.path().join("b"), None, None);
    let serial = tmp.path().join("m.serial");
    define_dirty(&src, "m", &serial, &tmp.path().join("m.img"));
    src.ok(&["start", "m"]);
    let first = wait_round(&serial, 0);

    let out = src.ok(&["migrate", "--live", "--persistent", "--undefinesource", "m", &dst.uri()]);
    assert!(out.contains("Migration: [100 %]"), "{out}");
    assert_eq!(dst.state_of("m"), "running (migrated)");
    assert!(!String::from_utf8_lossy(&src.hvctl(&["list", "--all"]).stdout).contains(" m "));
    let at = last_round(&serial);
    assert!(at >= first);
    wait_round(&serial, at + 2 * DIRTY_EVERY);

    // And back, keeping the source's definition this time.
    dst.ok(&["migrate", "--live", "m", &src.uri()]);
    assert_eq!(src.state_of("m"), "running (migrated)");
    assert_eq!(dst.state_of("m"), "shut off (migrated)");
    let at = last_round(&serial);
    wait_round(&serial, at + 2 * DIRTY_EVERY);
    // A domain that is not running does not migrate.
    let o = dst.hvctl(&["migrate", "--live", "m", &src.uri()]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn live_migration_over_tcp_between_two_network_namespaces() {
    require!(have_kvm(), "/dev/kvm is not usable");
    require!(is_root() && have_netns_tools(), "root, ip and ping");
    let tmp = tempfile::tempdir().unwrap();
    let (na, nb) = (NetNs::new("hvt-mga"), NetNs::new("hvt-mgb"));
    na.exec_ok(&[
        "ip",
        "link",
        "add",
        "mga",
        "type",
        "veth",
        "peer",
        "name",
        "mgb",
        "netns",
        nb.name(),
    ]);
    na.exec_ok(&["ip", "addr", "add", "10.73.0.1/24", "dev", "mga"]);
    na.exec_ok(&["ip", "link", "set", "mga", "up"]);
    nb.exec_ok(&["ip", "addr", "add", "10.73.0.2/24", "dev", "mgb"]);
    nb.exec_ok(&["ip", "link", "set", "mgb", "up"]);
    assert!(na.ping("10.73.0.2", 2));
    let key = tmp.path().join("key");
    std::fs::write(&key, "migration-test-key\n").unwrap();
    let src = Hvd::start(&tmp.path().join("a"), Some(&na), None);
    let dst = Hvd::start(&tmp.path().join("b"), Some(&nb), Some(("10.73.0.2:16509", &key)));
    let serial = tmp.path().join("t.serial");
    define_dirty(&src, "t", &serial, &tmp.path().join("t.img"));
    src.ok(&["start", "t"]);
    wait_round(&serial, 0);

    let dest = "hv+tcp://10.73.0.2:16509";
    let o = Command::new(env!("CARGO_BIN_EXE_hvctl"))
        .args(["-c", &src.uri(), "migrate", "--live", "t", dest])
        .env_remove("HV_AUTH_KEY_FILE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "a TCP destination needs the key");
    let o = Command::new(env!("CARGO_BIN_EXE_hvctl"))
        .args(["-c", &src.uri(), "migrate", "--live", "t", dest])
        .env("HV_AUTH_KEY_FILE", &key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(dst.state_of("t"), "running (migrated)");
    assert_eq!(src.state_of("t"), "shut off (migrated)");
    let at = last_round(&serial);
    wait_round(&serial, at + 2 * DIRTY_EVERY);
}

#[test]
fn migration_without_shared_storage_is_refused_and_the_guest_stays() {
    require!(have_kvm(), "/dev/kvm is not usable");
    require!(is_root(), "root (a mount namespace for the destination)");
    let tmp = tempfile::tempdir().unwrap();
    let disks = tmp.path().join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    let src = Hvd::start(&tmp.path().join("a"), None, None);
    let dst = Hvd::start_without(&tmp.path().join("b"), &disks);
    let serial = tmp.path().join("s.serial");
    define_dirty(&src, "s", &serial, &disks.join("s.img"));
    src.ok(&["start", "s"]);
    wait_round(&serial, 0);
    let o = src.hvctl(&["migrate", "--live", "s", &dst.uri()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("migration needs shared storage: disk vda"), "{err}");
    assert!(src.state_of("s").starts_with("running"));
    assert!(dst.hvctl(&["dominfo", "s"]).status.code() == Some(1), "nothing defined there");
    let at = last_round(&serial);
    wait_round(&serial, at + DIRTY_EVERY);
}
