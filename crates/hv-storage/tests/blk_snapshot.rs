//! Snapshot and restore of a guest in the middle of virtio-blk I/O (`test=blk-loop`: it writes
//! a pattern to a range of sectors one request at a time, reads it back and checks it, round
//! after round). The device is throttled so that at the snapshot a request sits in the avail
//! ring, made available by the driver and not yet taken by the device: the test shows it
//! there in the saved memory, and the restored guest, on a disk reopened by path, completes it
//! and goes on verifying.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hv_core::console::Capture;
use hv_core::rate_limiter::{BucketConfig, RateLimiter};
use hv_core::snapshot::{self, DeviceSource, MachineState, SnapshotConfig};
use hv_core::{Error, VmBuilder};
use hv_storage::block::{open_disk, DiskFormat, DiskOptions};
use hv_storage::virtio_blk::{BlockConfig, VirtioBlock};
use hv_test_support::{have_kvm, require, test_guest};

const WAIT: Duration = Duration::from_secs(60);

fn device(path: &Path, throttled: bool) -> VirtioBlock {
    let disk = open_disk(path, DiskFormat::Raw, DiskOptions::default()).expect("open the disk");
    let dev = VirtioBlock::new(disk, BlockConfig::default());
    if throttled {
        // One request per 20 ms: the driver spends nearly all its time waiting on one.
        let ops = BucketConfig::new(1, Duration::from_millis(20));
        dev.with_rate_limiter(RateLimiter::new(None, Some(ops)).unwrap())
    } else {
        dev
    }
}

/// The saved machine state and the avail index the driver had published in saved memory.
fn saved_queue(snap: &Path) -> (MachineState, u16) {
    let state: MachineState =
        serde_json::from_slice(&std::fs::read(snap.join(snapshot::STATE_FILE)).unwrap()).unwrap();
    let memory = std::fs::File::open(snap.join(snapshot::MEMORY_FILE)).unwrap();
    let mut idx = [0u8; 2];
    memory.read_exact_at(&mut idx, state.virtio[0].queues[0].avail_ring + 2).unwrap();
    (state, u16::from_le_bytes(idx))
}

fn rounds(console: &Capture) -> Vec<u64> {
    console
        .lines_with("hvtest: blk-loop round ")
        .iter()
        .filter(|l| l.ends_with(" ok"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .collect()
}

fn wait_round(console: &Capture, after: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = console.text();
        assert!(!text.contains("FAILED"), "{text}");
        if rounds(console).last().is_some_and(|&r| r > after) {
            return;
        }
        assert!(Instant::now() < deadline, "no round after {after}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_guest_snapshotted_mid_io_restores_and_completes_its_requests() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let source = DeviceSource::Block { path: disk.clone(), read_only: false };
    let console = Capture::new();
    let vm = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(64)
        .cmdline("test=blk-loop sectors=64")
        .serial_output(console.clone())
        .virtio_device_from(Box::new(device(&disk, true)), source.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    wait_round(&console, 1);
    // Snapshot while a request is in flight: the device is throttled, so nearly always one
    // waits; should the pause land between two requests, resume and take another.
    let snap = dir.path().join("snap");
    let mut attempts = 0;
    let (state, avail_idx) = loop {
        std::thread::sleep(Duration::from_millis(30));
        vm.pause().unwrap();
        vm.snapshot(&snap).unwrap();
        let (state, avail_idx) = saved_queue(&snap);
        if avail_idx != state.virtio[0].positions[0].next_avail || attempts == 20 {
            break (state, avail_idx);
        }
        attempts += 1;
        vm.resume().unwrap();
    };
    let last = *rounds(&console).last().unwrap();
    vm.kill().unwrap();
    vm.wait().unwrap();

    // The saved queue position is behind the avail index the driver had published: a request
    // was in flight (available, untaken) when the VM was saved.
    let transport = &state.virtio[0];
    assert!(transport.activated);
    let pos = transport.positions[0];
    assert_eq!(
        avail_idx.wrapping_sub(pos.next_avail),
        1,
        "one request should be waiting (avail idx {avail_idx}, device at {})",
        pos.next_avail
    );
    assert_eq!(pos.next_avail, pos.next_used, "no request is half done");

    // Rebuild the disk from the snapshot's config, by path, unthrottled.
    let cfg = SnapshotConfig::load(&snap).unwrap();
    let Some(DeviceSource::Block { path, read_only: false }) = cfg.devices[0].source.clone() else {
        panic!("the config does not say where the disk is: {cfg:?}")
    };
    assert_eq!(path, disk);

    // A different disk (another size) is refused before anything runs.
    let other = dir.path().join("other.raw");
    std::fs::File::create(&other).unwrap().set_len(2 << 20).unwrap();
    let e = match VmBuilder::new().virtio_device(Box::new(device(&other, false))).restore(&snap) {
        Ok(_) => panic!("a restore onto another disk should fail"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Snapshot(snapshot::Error::Device(_))), "{e}");

    let restored_console = Capture::new();
    let restored = VmBuilder::new()
        .serial_output(restored_console.clone())
        .virtio_device_from(Box::new(device(&path, false)), source)
        .restore(&snap)
        .expect("restore");
    restored.resume().unwrap();
    wait_round(&restored_console, last + 3);
    assert_eq!(rounds(&restored_console)[0], last + 1, "{}", restored_console.text());
    restored.kill().unwrap();
}
