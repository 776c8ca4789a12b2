//! The VMM against the test guest: real KVM, real vCPU exits, reading what the guest prints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hv_core::bus::BusDevice;
use hv_core::console::Capture;
use hv_core::{CrashReason, Error, ExitReason, VmBuilder, VmState};
use hv_test_support::{have_kvm, require, test_guest};

const TIMEOUT: Duration = Duration::from_secs(120);

fn guest(test: &str) -> (VmBuilder, Capture) {
    let console = Capture::new();
    let b = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(64)
        .cmdline(test.to_string())
        .serial_output(console.clone());
    (b, console)
}

fn run(b: VmBuilder) -> ExitReason {
    let vm = b.build().expect("build");
    vm.start().expect("start");
    let r = vm.wait_timeout(TIMEOUT).expect("guest did not stop in time");
    assert_eq!(vm.state(), VmState::Stopped);
    r
}

#[test]
fn boots_prints_and_powers_off() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=poweroff");
    let r = run(b.memory_mib(96));
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    let text = out.text();
    assert!(text.starts_with("hvtest: boot\n"), "{text}");
    assert!(text.contains("hvtest: cmdline=test=poweroff"), "{text}");
    // 96 MiB less the legacy BIOS hole, as the guest sums our e820 map.
    assert!(text.contains("hvtest: mem=95 MiB"), "{text}");
    assert!(text.contains("hvtest: cpus=1\n"), "{text}");
    assert!(text.contains("hvtest: done"), "{text}");
}

/// A test device: remembers writes, answers reads with a fixed value and the last write.
#[derive(Default)]
struct Probe {
    writes: Vec<(u64, Vec<u8>)>,
    reads: usize,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads += 1;
        let v: u32 = if offset == 0 { 0x600d_cafe } else { 0xfeed_0000 | offset as u32 };
        let bytes = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn port_io_reaches_a_device_on_the_pio_bus() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let probe = Arc::new(Mutex::new(Probe::default()));
    let (b, out) = guest("test=pio");
    let r = run(b.pio_device(0x6e0, 4, probe.clone()));
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    let p = probe.lock().unwrap();
    assert_eq!(p.writes, vec![(0, 0x1234_5678u32.to_le_bytes().to_vec())]);
    assert_eq!(p.reads, 1);
    assert!(out.text().contains("hvtest: pio read 0x600dcafe"), "{}", out.text());
}

#[test]
fn mmio_reaches_a_device_on_the_mmio_bus() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let probe = Arc::new(Mutex::new(Probe::default()));
    let (b, out) = guest("test=mmio");
    let r = run(b.mmio_device(0xd000_0000, 0x1000, probe.clone()));
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    let p = probe.lock().unwrap();
    assert_eq!(p.writes, vec![(0, 0xcafe_f00du32.to_le_bytes().to_vec())]);
    assert!(out.text().contains("hvtest: mmio read 0xfeed0004"), "{}", out.text());
}

#[test]
fn unclaimed_io_reads_as_all_ones() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=mmio");
    let r = run(b);
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    assert!(out.text().contains("hvtest: mmio read 0xffffffff"), "{}", out.text());
}

#[test]
fn hlt_without_irqchip_ends_the_vm_as_halted() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=hlt");
    let r = run(b.irqchip(false));
    assert!(matches!(r, ExitReason::Halted), "{r}");
    assert!(out.text().contains("hvtest: halting"), "{}", out.text());
}

#[test]
fn triple_fault_is_a_crash_with_vcpu_state() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=triple");
    let r = run(b);
    let ExitReason::Crashed(info) = &r else { panic!("expected a crash, got {r}") };
    assert_eq!(info.reason, CrashReason::TripleFault);
    assert_eq!(info.vcpu, Some(0));
    let regs = info.regs.expect("registers");
    assert!(regs.rip >= 0x10_0000, "rip {:#x} should be in the guest image", regs.rip);
    assert!(out.text().contains("hvtest: triple-faulting"));
    assert!(r.to_string().contains("triple fault"), "{r}");
}

#[test]
fn guest_page_fault_is_handled_by_the_guest() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=pagefault");
    let r = run(b);
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    assert!(out.text().contains("hvtest: page fault at 0x1000000000"), "{}", out.text());
}

#[test]
fn i8042_reset_ends_the_vm_as_reset() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=reset");
    let r = run(b);
    assert!(matches!(r, ExitReason::Reset), "{r}");
    assert!(out.text().contains("hvtest: resetting"));
}

#[test]
fn four_vcpus_on_a_two_core_host_all_report_in() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=smp");
    let r = run(b.vcpus(4));
    assert!(matches!(r, ExitReason::PoweredOff), "{r}\n{}", out.text());
    let text = out.text();
    assert!(text.contains("hvtest: cpus=4"), "{text}");
    for id in 1..4 {
        assert!(text.contains(&format!("hvtest: cpu {id} up")), "{text}");
    }
    assert!(text.contains("hvtest: smp ok 4"), "{text}");
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=ticks count=400");
    let vm = b.build().unwrap();
    assert!(matches!(vm.pause(), Err(Error::InvalidState { state: VmState::Created, .. })));
    vm.start().unwrap();
    assert!(out.wait_for("hvtest: tick 2\n", TIMEOUT), "{}", out.text());
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    let frozen = out.len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(out.len(), frozen, "the guest printed while paused");
    assert!(matches!(vm.pause(), Err(Error::InvalidState { state: VmState::Paused, .. })));
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    let r = vm.wait_timeout(TIMEOUT).expect("guest finishes");
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    assert!(out.text().contains("hvtest: tick 399\n"));
    assert!(out.len() > frozen);
}

#[test]
fn kill_stops_a_running_guest() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=ticks count=1000000");
    let vm = b.vcpus(2).build().unwrap();
    vm.start().unwrap();
    assert!(out.wait_for("hvtest: tick 1\n", TIMEOUT));
    vm.kill().unwrap();
    let r = vm.wait_timeout(Duration::from_secs(10)).expect("kill is prompt");
    assert!(matches!(r, ExitReason::Killed), "{r}");
    assert!(matches!(vm.start(), Err(Error::InvalidState { .. })));
}

#[test]
fn one_vm_crashing_leaves_another_running() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (good, good_out) = guest("test=ticks count=50");
    let (bad, bad_out) = guest("test=triple");
    let good = good.vcpus(2).build().unwrap();
    let bad = bad.build().unwrap();
    good.start().unwrap();
    bad.start().unwrap();
    let r = bad.wait_timeout(TIMEOUT).unwrap();
    assert!(r.is_crash(), "{r}");
    assert!(bad_out.text().contains("triple-faulting"));
    let r = good.wait_timeout(TIMEOUT).unwrap();
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    assert!(good_out.text().contains("hvtest: tick 49\n"));
}

#[test]
fn a_corrupt_kernel_is_a_typed_error_before_any_vm_runs() {
    let dir = std::env::temp_dir().join(format!("hv-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("vmlinux");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    let e = VmBuilder::new().kernel(&junk).build().unwrap_err();
    assert!(matches!(e, Error::Boot(hv_core::boot::Error::UnknownFormat { .. })), "{e}");
    // A truncated ELF: right magic, nothing else.
    std::fs::write(&junk, b"\x7fELF\x02\x01\x01\x00").unwrap();
    if have_kvm() {
        let e = VmBuilder::new().kernel(&junk).build().unwrap_err();
        assert!(matches!(e, Error::Boot(hv_core::boot::Error::Load { .. })), "{e}");
    }
    let e = VmBuilder::new().kernel(dir.join("missing")).build().unwrap_err();
    assert!(matches!(e, Error::Boot(hv_core::boot::Error::KernelFile { .. })), "{e}");
    let e = VmBuilder::new().kernel(&junk).vcpus(0).build().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. } | Error::Boot(_)), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_configurations_are_refused() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let e = VmBuilder::new().kernel(test_guest()).vcpus(0).build().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { field: "vcpus", .. }), "{e}");
    let e = VmBuilder::new().kernel(test_guest()).vcpus(2).irqchip(false).build().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { field: "vcpus", .. }), "{e}");
    let e = VmBuilder::new().kernel(test_guest()).memory_mib(1).build().unwrap_err();
    assert!(matches!(e, Error::Memory(_)), "{e}");
    let e = VmBuilder::new().kernel(test_guest()).cmdline("x".repeat(3000)).build().unwrap_err();
    assert!(matches!(e, Error::Boot(hv_core::boot::Error::Cmdline(_))), "{e}");
    let e = VmBuilder::new().build().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { field: "kernel", .. }), "{e}");
}

#[test]
fn dirty_log_reports_pages_the_guest_wrote() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, _out) = guest("test=ticks count=3");
    let vm = b.dirty_tracking(true).build().unwrap();
    // Boot data written by the VMM is in the VMM's own bitmap; clear it.
    let before = vm.dirty_log().unwrap();
    assert!(before.is_dirty(0xe0000), "the VMM wrote ACPI tables there");
    vm.start().unwrap();
    let r = vm.wait_timeout(TIMEOUT).unwrap();
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    let after = vm.dirty_log().unwrap();
    // The guest builds page tables and uses a stack: it dirties some pages, not all of RAM.
    assert!(after.dirty_pages() > 0);
    assert!(after.dirty_pages() < (64 << 20) / 4096);
    assert!(!after.is_dirty(0xe0000), "the tables were not written again");
    let again = vm.dirty_log().unwrap();
    assert_eq!(again.dirty_pages(), 0, "reading the log clears it");
    let e = guest("test=poweroff").0.build().unwrap().dirty_log().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. }));
}

#[test]
fn shutdown_presses_the_acpi_power_button_and_the_guest_powers_off() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=power-button");
    let vm = b.build().unwrap();
    assert!(matches!(vm.shutdown(), Err(Error::InvalidState { state: VmState::Created, .. })));
    vm.start().unwrap();
    assert!(out.wait_for("hvtest: waiting for the power button", TIMEOUT), "{}", out.text());
    // The status bit latches whether or not the guest has enabled the event yet (as in
    // ACPI hardware), so one press is enough even if the guest is still setting up.
    vm.shutdown().unwrap();
    let r = vm.wait_timeout(TIMEOUT).expect("the guest powers off");
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    assert!(out.text().contains("hvtest: power button pressed"), "{}", out.text());
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Reserves `pages` more 2 MiB huge pages for the test (needs root). Returns the previous pool
/// size to restore, or `None` if the host cannot provide them.
fn reserve_hugepages(pages: u64) -> Option<u64> {
    let now: u64 =
        std::fs::read_to_string(NR_HUGEPAGES).ok().and_then(|s| s.trim().parse().ok())?;
    std::fs::write(NR_HUGEPAGES, (now + pages).to_string()).ok()?;
    let free = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    if free < pages {
        let _ = std::fs::write(NR_HUGEPAGES, now.to_string());
        return None;
    }
    Some(now)
}

#[test]
fn guests_run_on_every_memory_backing() {
    use hv_core::hv_mem::{Backing, HugePageSize, MemoryConfig};
    require!(have_kvm(), "/dev/kvm is not usable");
    let mut configs = vec![
        ("memfd", MemoryConfig::new(64 << 20).backing(Backing::Memfd)),
        ("thp+ksm", MemoryConfig::new(64 << 20).transparent_hugepages(true).mergeable(true)),
    ];
    let restore = if hv_test_support::is_root() { reserve_hugepages(32) } else { None };
    if restore.is_some() {
        configs.push((
            "hugetlb 2M",
            MemoryConfig::new(64 << 20).backing(Backing::HugeTlb(HugePageSize::Size2M)),
        ));
    } else {
        require!(false, "cannot reserve 2 MiB huge pages (needs root)");
    }
    for (name, config) in configs {
        let (b, out) = guest("test=smp");
        let vm = b.memory(config).vcpus(2).build().unwrap_or_else(|e| panic!("{name}: {e}"));
        vm.start().unwrap();
        let r = vm.wait_timeout(TIMEOUT).unwrap();
        assert!(matches!(r, ExitReason::PoweredOff), "{name}: {r}");
        assert!(out.text().contains("hvtest: smp ok 2"), "{name}: {}", out.text());
        let usage = vm.ram().usage().unwrap();
        assert_eq!(usage.reserved_bytes, 64 << 20, "{name}");
        assert!(usage.resident_bytes > 0 && usage.resident_bytes < 64 << 20, "{name}: {usage:?}");
    }
    if let Some(previous) = restore {
        let _ = std::fs::write(NR_HUGEPAGES, previous.to_string());
    }
}

/// A device model with a bug: it panics on any write.
struct Buggy;

impl BusDevice for Buggy {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        panic!("device bug");
    }
}

#[test]
fn a_panicking_device_ends_its_vm_without_hanging_the_host() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, _) = guest("test=pio");
    let vm = b.vcpus(2).pio_device(0x6e0, 4, Arc::new(Mutex::new(Buggy))).build().unwrap();
    vm.start().unwrap();
    let r = vm.wait_timeout(TIMEOUT).expect("the VM stops");
    assert!(matches!(r, ExitReason::Panicked { vcpu: 0 }), "{r}");
    assert_eq!(vm.state(), VmState::Stopped);
}

#[test]
fn a_guest_printing_far_more_than_the_console_keeps_costs_bounded_memory() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let console = Capture::with_capacity(1024);
    let vm = VmBuilder::new()
        .kernel(test_guest())
        .memory_mib(64)
        .cmdline("test=ticks count=3000")
        .serial_output(console.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    assert!(console.wait_for("hvtest: tick 2999\n", TIMEOUT), "{}", console.text());
    let r = vm.wait_timeout(TIMEOUT).expect("the guest powers off");
    assert!(matches!(r, ExitReason::PoweredOff), "{r}");
    // ~50 KB printed, at most twice the capacity kept.
    assert!(console.len() > 40_000, "{}", console.len());
    assert!(console.retained() <= 2048, "{}", console.retained());
    assert!(console.text().contains("hvtest: tick 2999\n"));
    assert!(!console.text().contains("hvtest: boot"), "the start scrolled out");
}

#[test]
fn one_thread_waits_while_another_kills_and_waiting_before_start_is_an_error() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let (b, out) = guest("test=ticks count=1000000");
    let vm = Arc::new(b.build().unwrap());
    assert!(matches!(vm.wait(), Err(Error::InvalidState { state: VmState::Created, .. })));
    vm.start().unwrap();
    let waiter = {
        let vm = vm.clone();
        std::thread::spawn(move || vm.wait())
    };
    assert!(out.wait_for("hvtest: tick 1\n", TIMEOUT));
    vm.kill().unwrap();
    let r = waiter.join().unwrap().unwrap();
    assert!(matches!(r, ExitReason::Killed), "{r}");
    assert!(matches!(vm.wait().unwrap(), ExitReason::Killed), "waiting again answers the same");
}

#[test]
fn a_memory_size_past_64_bits_is_a_typed_error() {
    let e = VmBuilder::new().kernel(test_guest()).memory_mib(u64::MAX / 2).build().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { field: "memory_mib", .. }), "{e}");
}
