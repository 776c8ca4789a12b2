//! Snapshot and restore of a running test guest (`test=dirty`: it rewrites a block of pages in
//! a loop and checks each page before rewriting it), and every kind of bad snapshot.

use std::path::Path;
use std::time::Duration;

use hv_core::console::Capture;
use hv_core::snapshot::{self, MemorySource, SnapshotConfig};
use hv_core::{Error, Vm, VmBuilder, VmState};
use hv_test_support::{have_kvm, require, test_guest};

const WAIT: Duration = Duration::from_secs(60);

fn dirty_guest(pages: u64, mib: u64) -> (Vm, Capture) {
    let console = Capture::new();
    let vm = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(mib)
        .cmdline(format!("test=dirty pages={pages} every=4"))
        .serial_output(console.clone())
        .build()
        .expect("build");
    vm.start().expect("start");
    (vm, console)
}

/// The round numbers the guest reported as checked, in order.
pub fn rounds(console: &Capture) -> Vec<u64> {
    console
        .lines_with("hvtest: dirty round ")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .collect()
}

fn wait_rounds(console: &Capture, after: u64) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = console.text();
        assert!(!text.contains("mismatch"), "the guest found a bad page:\n{text}");
        if let Some(&r) = rounds(console).last() {
            if r > after {
                return r;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no round after {after}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restored_guest_runs_on_with_every_page_right() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let dir = tempfile::tempdir().unwrap();
    let (vm, console) = dirty_guest(512, 64);
    wait_rounds(&console, 8);
    vm.pause().unwrap();
    vm.snapshot(dir.path()).expect("snapshot");
    let last = *rounds(&console).last().unwrap();
    // The original goes on after the snapshot too.
    vm.resume().unwrap();
    wait_rounds(&console, last);
    vm.kill().unwrap();
    vm.wait().unwrap();

    let restored_console = Capture::new();
    let restored = VmBuilder::new()
        .serial_output(restored_console.clone())
        .restore(dir.path())
        .expect("restore");
    assert_eq!(restored.state(), VmState::Paused);
    assert_eq!(
        restored.memory_source(),
        &MemorySource::MappedFile(dir.path().join(snapshot::MEMORY_FILE))
    );
    restored.resume().unwrap();
    let now = wait_rounds(&restored_console, last + 8);
    let after = rounds(&restored_console);
    // Serial output continues where the snapshot was taken: the next report is the next round.
    assert_eq!(after[0], last + 4, "{}", restored_console.text());
    assert!(now > last + 8);
    // And the restored VM can be snapshotted and restored again.
    restored.pause().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    restored.snapshot(dir2.path()).expect("second snapshot");
    let last2 = *rounds(&restored_console).last().unwrap();
    restored.kill().unwrap();
    restored.wait().unwrap();
    let third_console = Capture::new();
    let third = VmBuilder::new()
        .serial_output(third_console.clone())
        .restore(dir2.path())
        .expect("second restore");
    third.resume().unwrap();
    wait_rounds(&third_console, last2 + 4);
    assert_eq!(rounds(&third_console)[0], last2 + 4);
    third.kill().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for name in [snapshot::CONFIG_FILE, snapshot::STATE_FILE, snapshot::MEMORY_FILE] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn restore_err(dir: &Path) -> Error {
    match VmBuilder::new().restore(dir) {
        Ok(_) => panic!("restoring {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_snapshots_are_typed_errors_before_any_vcpu_runs() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let good = tempfile::tempdir().unwrap();
    let (vm, console) = dirty_guest(16, 32);
    wait_rounds(&console, 4);
    vm.pause().unwrap();
    vm.snapshot(good.path()).unwrap();
    vm.kill().unwrap();
    vm.wait().unwrap();
    let cfg = SnapshotConfig::load(good.path()).unwrap();
    assert_eq!(cfg.memory_bytes, 32 << 20);

    // Truncated state.
    let d = tempfile::tempdir().unwrap();
    copy_dir(good.path(), d.path());
    let state = std::fs::read(d.path().join(snapshot::STATE_FILE)).unwrap();
    std::fs::write(d.path().join(snapshot::STATE_FILE), &state[..state.len() / 2]).unwrap();
    let e = restore_err(d.path());
    assert!(matches!(e, Error::Snapshot(snapshot::Error::Truncated { .. })), "{e}");

    // Another version.
    copy_dir(good.path(), d.path());
    let text = std::fs::read_to_string(d.path().join(snapshot::CONFIG_FILE)).unwrap();
    std::fs::write(
        d.path().join(snapshot::CONFIG_FILE),
        text.replacen("\"version\":1", "\"version\":2", 1),
    )
    .unwrap();
    let e = restore_err(d.path());
    assert!(
        matches!(e, Error::Snapshot(snapshot::Error::Version { found: 2, supported: 1, .. })),
        "{e}"
    );

    // A memory file of the wrong size.
    copy_dir(good.path(), d.path());
    let f =
        std::fs::OpenOptions::new().write(true).open(d.path().join(snapshot::MEMORY_FILE)).unwrap();
    f.set_len(16 << 20).unwrap();
    let e = restore_err(d.path());
    assert!(
        matches!(
            e,
            Error::Snapshot(snapshot::Error::MemorySize { expected, actual: 16777216, .. })
                if expected == 32 << 20
        ),
        "{e}"
    );

    // A machine this host cannot build.
    copy_dir(good.path(), d.path());
    let mut big = cfg.clone();
    big.vcpus = 100_000;
    std::fs::write(d.path().join(snapshot::CONFIG_FILE), serde_json_vec(&big)).unwrap();
    let e = restore_err(d.path());
    assert!(
        matches!(e, Error::Snapshot(snapshot::Error::Unsatisfiable { what: "vcpus", .. })),
        "{e}"
    );

    // The builder's devices do not match the snapshot's.
    copy_dir(good.path(), d.path());
    let e = match VmBuilder::new().virtio_device(Box::new(NullDevice)).restore(d.path()) {
        Ok(_) => panic!("restore with an extra device should fail"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Snapshot(snapshot::Error::DeviceMismatch { .. })), "{e}");

    // The good one still restores.
    let vm = VmBuilder::new().restore(good.path()).expect("the good snapshot restores");
    vm.kill().unwrap();
}

fn serde_json_vec(cfg: &SnapshotConfig) -> Vec<u8> {
    hv_core::snapshot::config_json(cfg)
}

/// A virtio device that never gets activated.
struct NullDevice;

impl hv_core::virtio::VirtioDevice for NullDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![8]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        _: hv_core::virtio::Activation,
    ) -> Result<(), hv_core::virtio::ActivateError> {
        Ok(())
    }
}
