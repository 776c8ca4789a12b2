//! Live migration of a running test guest (`test=dirty`: it rewrites a block of pages in a
//! loop and checks each page before rewriting it) between two VMs in this process, over a Unix
//! socket pair and over TCP on 127.0.0.1; migration of a restored VM; and failures that must
//! leave the source running.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hv_core::console::Capture;
use hv_core::migration::{self, protocol, MigrationOptions, TimeoutStrategy};
use hv_core::{ExitReason, Vm, VmBuilder, VmState};
use hv_test_support::{have_kvm, require, test_guest};

const WAIT: Duration = Duration::from_secs(60);
const EVERY: u64 = 4;

fn dirty_guest(pages: u64) -> (Vm, Capture) {
    let console = Capture::new();
    let vm = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(64)
        .dirty_tracking(true)
        .cmdline(format!("test=dirty pages={pages} every={EVERY}"))
        .serial_output(console.clone())
        .build()
        .expect("build");
    vm.start().expect("start");
    (vm, console)
}

fn rounds(console: &Capture) -> Vec<u64> {
    console
        .lines_with("hvtest: dirty round ")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .collect()
}

fn wait_rounds(console: &Capture, after: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = console.text();
        assert!(!text.contains("mismatch"), "the guest found a bad page:\n{text}");
        if let Some(&r) = rounds(console).last() {
            if r > after {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "no round after {after}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Migrates `vm` over the stream pair and checks both ends; returns the destination.
fn migrate<S: Read + Write + Send + 'static>(
    vm: Vm,
    console: &Capture,
    src: S,
    dst: S,
) -> (Vm, Capture) {
    migrate_with(vm, console, src, dst, &MigrationOptions::default())
}

/// [`migrate`] with `opts`.
fn migrate_with<S: Read + Write + Send + 'static>(
    vm: Vm,
    console: &Capture,
    mut src: S,
    mut dst: S,
    opts: &MigrationOptions,
) -> (Vm, Capture) {
    let dst_console = Capture::new();
    let c = dst_console.clone();
    let receiver = std::thread::spawn(move || {
        migration::receive(&mut dst, VmBuilder::new().serial_output(c)).map(|vm| (vm, dst))
    });
    let stats = vm.send_migration(&mut src, opts).expect("migrate");
    let (dest, _dst) = receiver.join().unwrap().expect("receive");
    eprintln!(
        "migrated: {} rounds, {} MiB, total {:?}, downtime {:?}",
        stats.rounds,
        stats.memory_bytes >> 20,
        stats.total,
        stats.downtime
    );
    // The source has ended, the destination runs.
    let reason = vm.wait_timeout(WAIT).expect("the source ends");
    assert!(matches!(reason, ExitReason::Migrated), "{reason}");
    assert_eq!(vm.state(), VmState::Stopped);
    assert_eq!(dest.state(), VmState::Running);
    let last = *rounds(console).last().unwrap();
    wait_rounds(&dst_console, last + 2 * EVERY);
    // The destination's serial output goes on with the next round: every page was right.
    assert_eq!(rounds(&dst_console)[0], last + EVERY, "{}", dst_console.text());
    (dest, dst_console)
}

#[test]
fn migrates_a_dirtying_guest_over_a_unix_socket_pair() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (vm, console) = dirty_guest(2048);
    wait_rounds(&console, 2 * EVERY);
    let (src, dst) = UnixStream::pair().unwrap();
    let (dest, _) = migrate(vm, &console, src, dst);
    dest.kill().unwrap();
}

#[test]
fn migrates_over_tcp_and_a_restored_vm_migrates_again() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (vm, console) = dirty_guest(1024);
    wait_rounds(&console, 2 * EVERY);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let src = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (dst, _) = listener.accept().unwrap();
    src.set_nodelay(true).unwrap();
    dst.set_nodelay(true).unwrap();
    let (dest, dest_console) = migrate(vm, &console, src, dst);

    // Snapshot the migrated VM, restore it, and migrate the restored one again.
    dest.pause().unwrap();
    let dir = tempfile::tempdir().unwrap();
    dest.snapshot(dir.path()).unwrap();
    dest.kill().unwrap();
    let restored_console = Capture::new();
    let restored = VmBuilder::new()
        .serial_output(restored_console.clone())
        .restore(dir.path())
        .expect("restore");
    restored.resume().unwrap();
    let last = *rounds(&dest_console).last().unwrap();
    wait_rounds(&restored_console, last + EVERY);
    let (src, dst) = UnixStream::pair().unwrap();
    let (again, _) = migrate(restored, &restored_console, src, dst);
    again.kill().unwrap();
}

#[test]
fn a_failed_migration_leaves_the_source_running() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (vm, console) = dirty_guest(256);
    wait_rounds(&console, EVERY);

    // A destination that refuses after the opening.
    let (mut src, mut dst) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let (kind, _) = protocol::read_frame(&mut dst).unwrap();
        assert_eq!(kind, protocol::Kind::Hello);
        protocol::write_frame(&mut dst, protocol::Kind::Error, b"no room here").unwrap();
    });
    let e = vm.send_migration(&mut src, &MigrationOptions::default()).unwrap_err();
    t.join().unwrap();
    assert!(matches!(&e, migration::Error::Peer(r) if r == "no room here"), "{e}");
    assert_eq!(vm.state(), VmState::Running);
    let r = *rounds(&console).last().unwrap();
    wait_rounds(&console, r + EVERY);

    // A destination that takes the whole copy, then hangs up instead of confirming: the
    // source had paused, and must run again.
    let (mut src, mut dst) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        protocol::read_frame(&mut dst).unwrap();
        protocol::write_frame(&mut dst, protocol::Kind::Ready, &[]).unwrap();
        loop {
            let (kind, _) = protocol::read_frame(&mut dst).unwrap();
            if kind == protocol::Kind::State {
                break;
            }
        }
        drop(dst);
    });
    let e = vm.send_migration(&mut src, &MigrationOptions::default()).unwrap_err();
    t.join().unwrap();
    assert!(matches!(e, migration::Error::Io { .. }), "{e}");
    assert_eq!(vm.state(), VmState::Running);
    let r = *rounds(&console).last().unwrap();
    wait_rounds(&console, r + EVERY);

    // A stream that is not a migration at all is refused by the destination.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    a.write_all(&[0u8; 64]).unwrap();
    let e = match migration::receive(&mut b, VmBuilder::new()) {
        Ok(_) => panic!("garbage accepted"),
        Err(e) => e,
    };
    assert!(matches!(e, migration::Error::BadMagic(0)), "{e}");
    vm.kill().unwrap();
}

#[test]
fn a_migration_past_its_timeout_is_cancelled_or_finished_as_its_strategy_says() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (vm, console) = dirty_guest(1024);
    wait_rounds(&console, EVERY);
    // A budget no copy can meet, and no time for it: the copy times out at its first check.
    let mut opts = MigrationOptions {
        downtime: Duration::from_nanos(1),
        timeout: Duration::ZERO,
        ..MigrationOptions::default()
    };

    // Cancel (the default): the source goes on, the destination is told and drops its VM.
    let (mut src, mut dst) = UnixStream::pair().unwrap();
    let receiver = std::thread::spawn(move || migration::receive(&mut dst, VmBuilder::new()));
    let e = vm.send_migration(&mut src, &opts).unwrap_err();
    assert!(matches!(e, migration::Error::Timeout { .. }), "{e}");
    let Err(refused) = receiver.join().unwrap() else { panic!("the destination ran a VM") };
    assert!(refused.to_string().contains("timed out"), "{refused}");
    assert_eq!(vm.state(), VmState::Running);
    let r = *rounds(&console).last().unwrap();
    wait_rounds(&console, r + EVERY);

    // Ignore: it pauses and finishes anyway.
    opts.on_timeout = TimeoutStrategy::Ignore;
    let (src, dst) = UnixStream::pair().unwrap();
    let (dest, _) = migrate_with(vm, &console, src, dst, &opts);
    dest.kill().unwrap();
}
