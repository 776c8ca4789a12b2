//! VMM benchmarks with the test guest: VM create+destroy, PIO and MMIO exit round trips, and
//! launch to the guest's first serial line. Peers (the raw-ioctl floor in
//! `benches/peers/raw_kvm.c`, QEMU microvm) are run side by side by `benches/peers/run.sh`.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hv::core::bus::BusDevice;
use hv::core::console::Capture;
use hv::core::{ExitReason, VmBuilder};

struct Sink;
impl BusDevice for Sink {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {}
}

fn guest(cmdline: &str) -> VmBuilder {
    VmBuilder::new().kernel(hv_test_support::test_guest()).memory_mib(128).cmdline(cmdline)
}

/// Runs the guest to power-off and returns how long its vCPUs ran.
fn run(b: VmBuilder) -> Duration {
    let vm = b.build().expect("build");
    let t = Instant::now();
    vm.start().expect("start");
    let r = vm.wait().expect("wait");
    let d = t.elapsed();
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    d
}

fn exit_bench(c: &mut Criterion, name: &str, test: &str) {
    let with_device = |count: u64| {
        let b = guest(&format!("test={test} count={count}"));
        if test == "bench-pio" {
            b.pio_device(0x6e0, 4, Arc::new(Mutex::new(Sink)))
        } else {
            b.mmio_device(0xd000_0000, 0x1000, Arc::new(Mutex::new(Sink)))
        }
    };
    // The same guest with no exits in its loop: what the per-exit figure must not include.
    let baseline = (0..3).map(|_| run(with_device(0))).min().unwrap();
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let total = run(with_device(iters));
            total.saturating_sub(baseline)
        })
    });
}

fn benches(c: &mut Criterion) {
    if !hv_test_support::have_kvm() {
        eprintln!("SKIPPED: /dev/kvm is not usable");
        return;
    }
    c.bench_function("vm_create_destroy", |b| {
        b.iter(|| drop(guest("test=poweroff").build().expect("build")))
    });
    exit_bench(c, "exit_pio_round_trip", "bench-pio");
    exit_bench(c, "exit_mmio_round_trip", "bench-mmio");
    c.bench_function("boot_to_first_serial_line", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let out = Capture::new();
                let t = Instant::now();
                let vm = guest("test=poweroff").serial_output(out.clone()).build().expect("build");
                vm.start().expect("start");
                assert!(out.wait_for("hvtest: boot\n", Duration::from_secs(30)));
                total += t.elapsed();
                vm.kill().ok();
                let _ = vm.wait();
            }
            total
        })
    });
}

criterion_group! {
    name = vmm;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(vmm);
