//! hvd and hvctl driven as a user drives them: real binaries, a real state directory, the test
//! guest as each domain's kernel, its serial output read from the file the domain writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hv_test_support::{have_kvm, require, test_guest};

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `hvctl --state-dir DIR ARGS...`.
    fn hvctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hvctl"))
            .arg("--state-dir")
            .arg(self.path())
            .args(args)
            .output()
            .expect("run hvctl")
    }

    /// Runs hvctl and returns its stdout, failing the test on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.hvctl(args);
        assert!(
            o.status.success(),
            "hvctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs hvctl expecting failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.hvctl(args);
        assert_eq!(o.status.code(), Some(1), "hvctl {args:?} should fail with 1: {o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn serial(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}.serial"))
    }

    /// Defines domain `name` booting the test guest with `cmdline`, serial to a file.
    fn define(&self, name: &str, cmdline: &str) {
        let xml = format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type>hvm</type><kernel>{}</kernel><cmdline>{cmdline}</cmdline></os>\
             <devices><serial type='file'><source path='{}'/></serial></devices></domain>",
            test_guest().display(),
            self.serial(name).display()
        );
        let file = self.path().join(format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        let out = self.ok(&["define", file.to_str().unwrap()]);
        assert!(out.contains(&format!("Domain '{name}' defined from")), "{out}");
    }

    fn state(&self, name: &str) -> String {
        self.ok(&["domstate", "--reason", name]).trim().to_string()
    }

    fn wait_state(&self, name: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.state(name);
            if s.starts_with(want) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_serial(&self, name: &str, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(self.serial(name)).unwrap_or_default();
            if text.contains(line) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn vmm_pid(&self, name: &str) -> u32 {
        let rec = std::fs::read_to_string(self.path().join(format!("run/{name}.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&rec).unwrap();
        v["process"]["pid"].as_u64().unwrap() as u32
    }

    fn hvd_pid(&self) -> u32 {
        let out = self.ok(&["list"]);
        let _ = out;
        let o = Command::new("pgrep")
            .args(["-f", &format!("hvd --state-dir {}", self.path().display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().next().expect("hvd runs").trim().parse().unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Stop whatever the test left running: domains, then the daemon.
        let _ =
            Command::new("pkill").args(["-9", "-f", &self.path().display().to_string()]).status();
    }
}

/// The rows of a virsh-style table as cells (columns are separated by 3+ spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().split("   ").map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
        })
        .collect()
}

/// The `list --all` row of `name`: (id, state).
fn listed(h: &Host, name: &str) -> Option<(String, String)> {
    rows(&h.ok(&["list", "--all"]))
        .into_iter()
        .find(|r| r[1] == name)
        .map(|r| (r[0].clone(), r[2].clone()))
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

#[test]
fn domain_lifecycle_through_hvd() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    h.define("web", "test=power-button");
    assert_eq!(listed(&h, "web"), Some(("-".into(), "shut off".into())));
    assert!(rows(&h.ok(&["list"])).is_empty(), "no active domain yet");
    assert!(h.ok(&["start", "web"]).contains("Domain 'web' started"));
    h.wait_serial("web", "waiting for the power button");
    assert_eq!(rows(&h.ok(&["list"])), [["1", "web", "running"]]);
    let info = h.ok(&["dominfo", "web"]);
    for want in [
        "Name:           web",
        "State:          running",
        "CPU(s):         1",
        "Max memory:     65536 KiB",
    ] {
        assert!(info.contains(want), "{want} missing from\n{info}");
    }
    assert!(h.fails(&["start", "web"]).contains("cannot start a domain that is running"));
    h.ok(&["suspend", "web"]);
    assert_eq!(h.state("web"), "paused (user)");
    h.ok(&["resume", "web"]);
    assert_eq!(h.state("web"), "running (user)");
    let xml = h.ok(&["dumpxml", "web"]);
    assert!(xml.contains("<cmdline>test=power-button</cmdline>"), "{xml}");
    // The ACPI power button reaches the guest, which powers off; the domain shuts off.
    assert!(h.ok(&["shutdown", "web", "--timeout", "20"]).contains("is being shutdown"));
    let serial = h.wait_serial("web", "hvtest: done");
    assert!(serial.contains("power button pressed"), "{serial}");
    assert_eq!(h.wait_state("web", "shut off"), "shut off (shutdown)");
    // Destroy of a running domain, then undefine.
    h.ok(&["start", "web"]);
    h.wait_serial("web", "waiting for the power button");
    let pid = h.vmm_pid("web");
    assert!(h.ok(&["destroy", "web"]).contains("Domain 'web' destroyed"));
    assert!(!alive(pid), "the VMM process is gone after destroy");
    assert_eq!(h.state("web"), "shut off (destroyed)");
    assert!(h.ok(&["undefine", "web"]).contains("has been undefined"));
    assert!(h.fails(&["dominfo", "web"]).contains("Domain not found"));
}

#[test]
fn domains_outlive_a_killed_hvd_and_a_dead_vmm_is_crashed() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    h.define("a", "test=power-button");
    h.define("b", "test=power-button");
    h.ok(&["start", "a"]);
    h.ok(&["start", "b"]);
    h.wait_serial("a", "waiting for the power button");
    let (pa, pb) = (h.vmm_pid("a"), h.vmm_pid("b"));
    let hvd = h.hvd_pid();
    Command::new("kill").args(["-9", &hvd.to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pa) && alive(pb), "killing hvd leaves the guests running");
    // A VMM dies while no daemon watches.
    Command::new("kill").args(["-9", &pb.to_string()]).status().unwrap();
    // The next hvctl starts a new daemon, which finds a running and b crashed.
    assert_eq!(listed(&h, "a").map(|r| r.1), Some("running".into()));
    let b = h.state("b");
    assert!(b.starts_with("crashed (crashed: hv-vmm (pid"), "{b}");
    assert_ne!(h.hvd_pid(), hvd);
    // The adopted VMM is still driven: pause, resume, power button.
    h.ok(&["suspend", "a"]);
    assert_eq!(h.state("a"), "paused (user)");
    h.ok(&["resume", "a"]);
    h.ok(&["shutdown", "a", "--timeout", "20"]);
    assert_eq!(h.wait_state("a", "shut off"), "shut off (shutdown)");
    // A crashed domain starts again.
    h.ok(&["start", "b"]);
    assert!(h.state("b").starts_with("running"));
    h.ok(&["destroy", "b"]);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    h.define("keep", "test=power-button");
    let before = h.ok(&["list", "--all"]);
    let bad = h.path().join("bad.xml");
    for (xml, word) in [
        ("<domain type='kvm'><name>x</name>", "domain XML"),
        (
            "<domain type='kvm'><name>x</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type>\
             <kernel>/k</kernel></os><devices><graphics type='vnc'/></devices></domain>",
            "graphics",
        ),
        (
            "<domain type='kvm'><name>keep</name><uuid>11111111-1111-4111-8111-111111111111</uuid>\
             <memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>",
            "already exists",
        ),
    ] {
        std::fs::write(&bad, xml).unwrap();
        let err = h.fails(&["define", bad.to_str().unwrap()]);
        assert!(err.contains(word), "{word}: {err}");
    }
    assert!(h.fails(&["start", "nope"]).contains("Domain not found"));
    assert!(h.fails(&["define", "/nonexistent.xml"]).contains("Failed to open file"));
    assert_eq!(h.ok(&["list", "--all"]), before, "nothing changed");
    // A domain whose kernel does not exist fails to start, cleanly, and stays shut off.
    let xml = "<domain type='kvm'><name>nokernel</name><memory>65536</memory><vcpu>1</vcpu>\
               <os><type>hvm</type><kernel>/nonexistent/kernel</kernel></os></domain>";
    std::fs::write(&bad, xml).unwrap();
    h.ok(&["define", bad.to_str().unwrap()]);
    let err = h.fails(&["start", "nokernel"]);
    assert!(err.contains("hv-vmm"), "{err}");
    assert_eq!(h.state("nokernel"), "shut off (unknown)");
}

#[test]
fn autostart_domains_start_with_hvd() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    h.define("auto", "test=power-button");
    h.define("manual", "test=power-button");
    assert!(h.ok(&["autostart", "auto"]).contains("marked as autostarted"));
    assert!(h.ok(&["dominfo", "auto"]).contains("Autostart:      enable"));
    Command::new("kill").args(["-TERM", &h.hvd_pid().to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A new daemon starts autostart domains and only those.
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed(&h, "auto").map(|r| r.1).as_deref() != Some("running") && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(listed(&h, "auto").map(|r| r.1).as_deref(), Some("running"));
    assert_eq!(listed(&h, "manual").map(|r| r.1).as_deref(), Some("shut off"));
    h.ok(&["autostart", "--disable", "auto"]);
    h.ok(&["destroy", "auto"]);
}

#[test]
fn tcp_clients_need_the_key() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    let key = h.path().join("key");
    std::fs::write(&key, "s3cret-key\n").unwrap();
    let port = 20000 + (std::process::id() % 20000);
    let mut hvd = Command::new(env!("CARGO_BIN_EXE_hvd"))
        .arg("--state-dir")
        .arg(h.path())
        .args(["--listen", &format!("tcp:127.0.0.1:{port}"), "--auth-key-file"])
        .arg(&key)
        .spawn()
        .unwrap();
    let uri = format!("hv+tcp://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let run = |k: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hvctl"))
            .args(["-c", &uri, "--auth-key-file"])
            .arg(k)
            .args(["list", "--all"])
            .output()
            .unwrap()
    };
    while !run(&key).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(run(&key).status.success());
    let wrong = h.path().join("wrong");
    std::fs::write(&wrong, "guess").unwrap();
    let o = run(&wrong);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing or wrong key"), "{o:?}");
    let _ = hvd.kill();
    let _ = hvd.wait();
}

/// Reports of the memory-checking guest (`test=dirty`): a round report every `DIRTY_EVERY`.
const DIRTY_EVERY: u64 = 4;

/// Waits until domain `name`'s dirty guest reported a round after `after` with every page
/// right so far (its serial file spans every VMM the domain ran in); answers that round.
fn wait_dirty_round(h: &Host, name: &str, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(h.serial(name)).unwrap_or_default();
        match hv_test_support::check_dirty_transcript(&text, DIRTY_EVERY) {
            Ok(r) if r > after => return r,
            Err(e) if e.contains("bad page") || e.contains("follows") => panic!("{e}:\n{text}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no dirty round after {after}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn save_and_restore_go_on_where_the_guest_was() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    h.define("mem", &format!("test=dirty pages=256 every={DIRTY_EVERY}"));
    h.ok(&["start", "mem"]);
    let first = wait_dirty_round(&h, "mem", 0);
    let pid = h.vmm_pid("mem");
    let file = h.path().join("mem.save");
    let out = h.ok(&["save", "mem", file.to_str().unwrap()]);
    assert!(out.contains("Domain 'mem' saved to"), "{out}");
    assert!(!alive(pid), "save stops the VMM");
    assert_eq!(h.state("mem"), "shut off (saved)");
    assert!(h.ok(&["dominfo", "mem"]).contains("Managed save:   yes"));
    let text = std::fs::read_to_string(h.serial("mem")).unwrap();
    let saved = hv_test_support::check_dirty_transcript(&text, DIRTY_EVERY).unwrap();
    assert!(saved >= first);
    assert!(h.fails(&["save", "mem", file.to_str().unwrap()]).contains("not valid"));

    assert!(h.ok(&["restore", file.to_str().unwrap()]).contains("Domain restored from"));
    assert_eq!(h.state("mem"), "running (restored)");
    assert!(h.ok(&["dominfo", "mem"]).contains("Managed save:   no"));
    // The guest goes on from the round it was in, every page right.
    wait_dirty_round(&h, "mem", saved + 2 * DIRTY_EVERY);

    // A paused domain comes back paused.
    let paused = h.path().join("paused.save");
    h.ok(&["suspend", "mem"]);
    h.ok(&["save", "mem", paused.to_str().unwrap()]);
    let text = std::fs::read_to_string(h.serial("mem")).unwrap();
    let at = hv_test_support::check_dirty_transcript(&text, DIRTY_EVERY).unwrap();
    h.ok(&["restore", paused.to_str().unwrap()]);
    assert_eq!(h.state("mem"), "paused (restored)");
    h.ok(&["resume", "mem"]);
    wait_dirty_round(&h, "mem", at + DIRTY_EVERY);
    h.ok(&["destroy", "mem"]);

    // Undefining a domain with a saved state keeps the user's file and forgets the state: a
    // new domain of that name has none.
    let last = h.path().join("last.save");
    h.ok(&["start", "mem"]);
    h.ok(&["save", "mem", last.to_str().unwrap()]);
    h.ok(&["undefine", "mem"]);
    assert!(last.join("state.json").exists() || last.read_dir().unwrap().next().is_some());
    h.define("mem", "test=hlt");
    assert!(h.ok(&["dominfo", "mem"]).contains("Managed save:   no"));

    let bogus = h.path().join("bogus");
    std::fs::create_dir_all(&bogus).unwrap();
    assert!(h.fails(&["restore", bogus.to_str().unwrap()]).contains("cannot read"));
}

#[test]
fn a_volume_disk_opens_in_its_recorded_format_whatever_its_bytes_say() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    let images = dir_pool(&h, "p");
    h.ok(&["vol-create-as", "p", "v", "1M"]);
    // The raw volume's bytes are made to look like a qcow2 image (as a guest could write).
    let mut fake = b"QFI\xfb\0\0\0\x03".to_vec();
    fake.resize(4096, 0);
    let up = h.path().join("fake");
    std::fs::write(&up, &fake).unwrap();
    h.ok(&["vol-upload", "v", up.to_str().unwrap(), "--pool", "p"]);
    let disk = "<disk type='volume'><source pool='p' volume='v'/><target dev='vda'/></disk>";
    let file = disk_domain(&h, "vd", "test=power-button", disk);
    h.ok(&["define", file.to_str().unwrap()]);
    h.ok(&["start", "vd"]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.vmm_pid("vd"))).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let want = format!("path={},image_type=raw", images.join("v").display());
    assert!(cmdline.contains(&want), "{want} not in {cmdline}");
    assert!(h.ok(&["domblklist", "vd"]).contains("p/v"));
    h.ok(&["destroy", "vd"]);
}

/// Defines, builds and starts the directory pool `name` in `images` under the test's
/// directory; returns that directory.
fn dir_pool(h: &Host, name: &str) -> PathBuf {
    let images = h.path().join("images");
    h.ok(&["pool-define-as", name, "dir", "--target", images.to_str().unwrap()]);
    h.ok(&["pool-build", name]);
    h.ok(&["pool-start", name]);
    images
}

/// A domain XML booting the test guest with `cmdline` on the one disk `disk` (XML).
fn disk_domain(h: &Host, name: &str, cmdline: &str, disk: &str) -> PathBuf {
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type>hvm</type><kernel>{}</kernel><cmdline>{cmdline}</cmdline></os>\
         <devices>{disk}<serial type='file'><source path='{}'/></serial></devices></domain>",
        test_guest().display(),
        h.serial(name).display()
    );
    let file = h.path().join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    file
}

#[test]
fn a_qcow2_overlay_volume_boots_over_its_backing_volume_and_dumpxml_shows_the_chain() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    let images = dir_pool(&h, "p");
    h.ok(&["vol-create-as", "p", "base", "16M"]);
    let base = hv_test_support::blk_pattern(99, 0, 4096);
    let up = h.path().join("base-bytes");
    std::fs::write(&up, &base).unwrap();
    h.ok(&["vol-upload", "base", up.to_str().unwrap(), "--pool", "p"]);
    h.ok(&[
        "vol-create-as",
        "p",
        "vm1",
        "32M",
        "--format",
        "qcow2",
        "--backing-vol",
        "base",
        "--backing-vol-format",
        "raw",
    ]);
    let disk = "<disk type='volume'><driver name='qemu' type='qcow2'/>\
                <source pool='p' volume='vm1'/><target dev='vda'/></disk>";
    let file = disk_domain(&h, "ov", "test=blk sector=4000 count=160 seed=5", disk);
    h.ok(&["define", file.to_str().unwrap()]);
    h.ok(&["start", "ov"]);
    let serial = h.wait_serial("ov", "hvtest: done");
    assert!(serial.contains("hvtest: blk capacity=65536"), "{serial}");
    assert!(serial.contains("hvtest: blk verify ok"), "{serial}");
    // dumpxml shows the chain as libvirt does.
    let xml = h.ok(&["dumpxml", "ov"]);
    let squashed = xml.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = format!(
        "<backingStore type=\"file\" index=\"1\"> <format type=\"raw\"/> \
         <source file=\"{}\"/> <backingStore/> </backingStore>",
        images.join("base").canonicalize().unwrap().display()
    );
    assert!(squashed.contains(&want), "{want} not in {xml}");
    assert_eq!(h.wait_state("ov", "shut off"), "shut off (shutdown)");
    // The overlay reads as the base plus the guest's writes; the base is as uploaded.
    let down = h.path().join("down");
    h.ok(&["vol-download", "vm1", down.to_str().unwrap(), "--pool", "p"]);
    let got = std::fs::read(&down).unwrap();
    let mut want = base.clone();
    want.resize(6000 * 512, 0);
    want[4000 * 512..4160 * 512].copy_from_slice(&hv_test_support::blk_pattern(5, 4000, 160));
    assert!(got[..want.len()] == want[..], "the overlay is not base + the guest's writes");
    h.ok(&["vol-download", "base", down.to_str().unwrap(), "--pool", "p"]);
    assert!(std::fs::read(&down).unwrap()[..base.len()] == base[..], "the base changed");

    // The same overlay as a file disk (it lies in the pool's directory): its chain opens too.
    let disk = format!(
        "<disk type='file'><driver name='qemu' type='qcow2'/><source file='{}'/>\
         <target dev='vda'/></disk>",
        images.join("vm1").display()
    );
    let file = disk_domain(&h, "infile", "test=blk sector=0 count=8 seed=2", &disk);
    h.ok(&["define", file.to_str().unwrap()]);
    h.ok(&["start", "infile"]);
    let serial = h.wait_serial("infile", "hvtest: done");
    assert!(serial.contains("hvtest: blk verify ok"), "{serial}");
    assert_eq!(h.wait_state("infile", "shut off"), "shut off (shutdown)");

    // A qcow2 file disk whose backing file lies outside every pool does not start.
    let loose = h.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::copy(images.join("vm1"), loose.join("vm1.qcow2")).unwrap();
    let disk = format!(
        "<disk type='file'><driver name='qemu' type='qcow2'/><source file='{}'/>\
         <target dev='vda'/></disk>",
        loose.join("vm1.qcow2").display()
    );
    let file = disk_domain(&h, "loose", "test=blk count=1", &disk);
    h.ok(&["define", file.to_str().unwrap()]);
    let err = h.fails(&["start", "loose"]);
    assert!(err.contains("backing file") && err.contains("pool"), "{err}");
}

#[test]
fn a_logical_volume_disk_runs_on_its_extents_and_is_not_freed_under_its_domain() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let h = Host::new();
    // Two sparse 64 MiB files as PVs (15 extents of 4 MiB each after the metadata area).
    let pvs: Vec<PathBuf> = (0..2).map(|i| h.path().join(format!("pv{i}"))).collect();
    for pv in &pvs {
        std::fs::File::create(pv).unwrap().set_len(64 << 20).unwrap();
    }
    let (pv0, pv1) = (pvs[0].to_str().unwrap(), pvs[1].to_str().unwrap());
    h.ok(&["pool-define-as", "vg", "logical", "--source-dev", pv0, "--source-dev", pv1]);
    h.ok(&["pool-build", "vg"]);
    h.ok(&["pool-start", "vg"]);
    // `fill` takes 14 of one PV's 15 extents, so the 16 extents of `data` span both PVs.
    h.ok(&["vol-create-as", "vg", "fill", "56M"]);
    h.ok(&["vol-create-as", "vg", "data", "64M"]);
    let disk = "<disk type='volume'><source pool='vg' volume='data'/><target dev='vda'/></disk>";

    // A domain on it gets its extents (the VMM's command line names them).
    let file = disk_domain(&h, "hold", "test=power-button", disk);
    h.ok(&["define", file.to_str().unwrap()]);
    h.ok(&["start", "hold"]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.vmm_pid("hold"))).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let (_, segs) = cmdline
        .split_once("path=/dev/vg/data,image_type=raw,segments=")
        .unwrap_or_else(|| panic!("{cmdline}"));
    let segs: Vec<&str> = segs.split_whitespace().next().unwrap().split(';').collect();
    assert_eq!(segs.len(), 2, "{cmdline}");
    assert!(cmdline.contains(pv0) && cmdline.contains(pv1), "{cmdline}");
    let first_len: u64 = segs[0].rsplit(':').next().unwrap().parse().unwrap();
    // dumpxml shows the disk as defined: a volume of the pool.
    let xml = h.ok(&["dumpxml", "hold"]);
    assert!(xml.contains("type=\"volume\"") || xml.contains("type='volume'"), "{xml}");
    assert!(xml.contains("pool=\"vg\"") || xml.contains("pool='vg'"), "{xml}");
    // While it runs, the volume's extents are not freed or rewritten.
    for args in [
        &["vol-delete", "data", "--pool", "vg"][..],
        &["vol-wipe", "data", "--pool", "vg"][..],
        &["vol-resize", "data", "8M", "--shrink", "--pool", "vg"][..],
    ] {
        let err = h.fails(args);
        assert!(err.contains("in use by domain(s) hold"), "{args:?}: {err}");
    }
    // Other volumes are not held; growing is fine (the VMM's extents stay where they are).
    h.ok(&["vol-delete", "fill", "--pool", "vg"]);
    h.ok(&["vol-resize", "data", "--delta", "4M", "--pool", "vg"]);
    // A saved domain holds it too (its snapshot reopens the same extents), and restores on it.
    let saved = h.path().join("hold.save");
    h.ok(&["save", "hold", saved.to_str().unwrap()]);
    assert_eq!(h.state("hold"), "shut off (saved)");
    let err = h.fails(&["vol-delete", "data", "--pool", "vg"]);
    assert!(err.contains("in use by domain(s) hold"), "{err}");
    h.ok(&["restore", saved.to_str().unwrap()]);
    assert_eq!(h.state("hold"), "running (restored)");
    h.ok(&["destroy", "hold"]);

    // 256 sectors across the boundary between the two PVs.
    let sector = first_len / 512 - 128;
    let cmd = format!("test=blk sector={sector} count=256 seed=3");
    let file = disk_domain(&h, "lv", &cmd, disk);
    h.ok(&["define", file.to_str().unwrap()]);
    h.ok(&["start", "lv"]);
    let serial = h.wait_serial("lv", "hvtest: done");
    assert!(serial.contains("hvtest: blk capacity=139264"), "{serial}");
    assert!(serial.contains("hvtest: blk verify ok"), "{serial}");
    assert_eq!(h.wait_state("lv", "shut off"), "shut off (shutdown)");
    // The guest's bytes are the volume's, read through the pool.
    let down = h.path().join("down");
    h.ok(&["vol-download", "data", down.to_str().unwrap(), "--pool", "vg"]);
    let got = std::fs::read(&down).unwrap();
    let at = sector as usize * 512;
    let want = hv_test_support::blk_pattern(3, sector, 256);
    assert!(got[at..at + want.len()] == want[..], "the volume lacks the guest's writes");
    assert!(got[..at].iter().chain(&got[at + want.len()..]).all(|&b| b == 0), "other bytes");
    h.ok(&["vol-delete", "data", "--pool", "vg"]);
}
