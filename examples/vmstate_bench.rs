//! hv's side of `benches/peers/vmstate.sh`: times snapshot, restore-to-running and live
//! migration of the test guest dirtying memory (`test=dirty`), and prints one `name=value`
//! line per figure.
//!
//! ```text
//! cargo run --release --example vmstate_bench -- GUEST_ELF MEM_MIB PAGES DIR
//! ```
//!
//! - `snapshot_ms`: `Vm::snapshot` of the paused guest into `DIR` (all of RAM written, sparse);
//! - `restore_ms`: `VmBuilder::restore` (memory file mapped private) plus `Vm::resume`;
//! - `restore_to_output_ms`: from the start of the restore to the guest's next serial line;
//! - `migrate_total_ms`, `migrate_downtime_ms`, `migrate_rounds`, `migrate_mib`: a migration
//!   over a Unix socket pair to a VM in another thread, the guest rewriting `PAGES` pages in
//!   a loop (downtime: from pausing the source to the destination's confirmation).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hv::core::console::Capture;
use hv::core::migration::{self, MigrationOptions};
use hv::core::{Vm, VmBuilder};

fn guest(elf: &PathBuf, mib: u64, pages: u64, console: &Capture) -> Vm {
    let vm = VmBuilder::new()
        .kernel(elf)
        .memory_mib(mib)
        .dirty_tracking(true)
        .cmdline(format!("test=dirty pages={pages} every=8"))
        .serial_output(console.clone())
        .build()
        .expect("build the VM");
    vm.start().expect("start");
    assert!(console.wait_for("dirty round 16 ok", Duration::from_secs(60)), "guest too slow");
    vm
}

fn main() {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [elf, mib, pages, dir] = args.as_slice() else {
        eprintln!("usage: vmstate_bench GUEST_ELF MEM_MIB PAGES DIR");
        std::process::exit(2);
    };
    let elf = PathBuf::from(elf);
    let mib: u64 = mib.parse().expect("MEM_MIB");
    let pages: u64 = pages.parse().expect("PAGES");
    let dir = PathBuf::from(dir);

    // Snapshot.
    let console = Capture::new();
    let vm = guest(&elf, mib, pages, &console);
    vm.pause().unwrap();
    let t = Instant::now();
    vm.snapshot(&dir).expect("snapshot");
    println!("snapshot_ms={:.1}", t.elapsed().as_secs_f64() * 1e3);
    vm.kill().unwrap();
    drop(vm);

    // Restore to running, and to the guest's next line.
    let restored_console = Capture::new();
    let t = Instant::now();
    let restored =
        VmBuilder::new().serial_output(restored_console.clone()).restore(&dir).expect("restore");
    restored.resume().unwrap();
    println!("restore_ms={:.1}", t.elapsed().as_secs_f64() * 1e3);
    assert!(restored_console.wait_for("dirty round", Duration::from_secs(60)));
    println!("restore_to_output_ms={:.1}", t.elapsed().as_secs_f64() * 1e3);
    restored.kill().unwrap();
    drop(restored);

    // Live migration.
    let console = Capture::new();
    let vm = guest(&elf, mib, pages, &console);
    let (mut src, mut dst) = UnixStream::pair().unwrap();
    let receiver = std::thread::spawn(move || {
        migration::receive(&mut dst, VmBuilder::new().serial_output(Capture::new()))
    });
    let stats = vm.send_migration(&mut src, &MigrationOptions::default()).expect("migrate");
    let dest = receiver.join().unwrap().expect("receive");
    println!("migrate_total_ms={:.1}", stats.total.as_secs_f64() * 1e3);
    println!("migrate_downtime_ms={:.1}", stats.downtime.as_secs_f64() * 1e3);
    println!("migrate_rounds={}", stats.rounds);
    println!("migrate_mib={}", stats.memory_bytes >> 20);
    dest.kill().unwrap();
}
