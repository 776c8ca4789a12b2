//! Real Linux guests, read through the kernel's own log.
//!
//! On a PVM host (this project's CI machines) guest kernel mode is emulated at ~4 MIPS, so a
//! kernel takes tens of seconds to reach /init and then dies there (PVM runs no guest user
//! space); on a hardware-KVM host the same tests run in well under a second and also see the
//! initramfs's marker and a clean power-off. Both paths are kept, chosen by the host kind.

use std::time::{Duration, Instant};

use hv_core::console::Capture;
use hv_core::{CrashReason, ExitReason, HostKind, VmBuilder};
use hv_test_support::{have_kvm, mini_kernel, require, stock_kernel, tiny_initramfs};

/// Generous: CI machines are shared and the emulated kernel is slow.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn milestone(out: &Capture, start: Instant, needle: &str) {
    assert!(
        out.wait_for(needle, BOOT_TIMEOUT),
        "no {needle:?} within {BOOT_TIMEOUT:?}; the guest said:\n{}",
        out.text()
    );
    eprintln!("milestone {:>7.2}s  {needle}", start.elapsed().as_secs_f64());
}

#[test]
fn stock_debian_kernel_sees_our_cmdline_e820_acpi_and_four_cpus() {
    require!(have_kvm(), "/dev/kvm is not usable");
    let kernel = stock_kernel();
    require!(kernel.is_some(), "the guest kit has no stock kernel: run guests/kit.sh");
    let out = Capture::new();
    let start = Instant::now();
    let vm = VmBuilder::new()
        .kernel(kernel.unwrap())
        .vcpus(4)
        .memory_mib(256)
        .cmdline("console=ttyS0 earlyprintk=serial,ttyS0 hv.test=stock-4cpu")
        .serial_output(out.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    milestone(&out, start, "Linux version");
    milestone(&out, start, "hv.test=stock-4cpu");
    milestone(&out, start, "smpboot: Allowing 4 CPUs");
    let text = out.text();
    // The command line we gave, echoed with the quirks hv added for this host.
    let cmdline = text.lines().find(|l| l.contains("Command line:")).expect("cmdline echo");
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    if vm.host() == HostKind::Pvm {
        assert!(cmdline.contains("noxsave"), "{cmdline}");
    }
    // Our e820 map: low RAM, the BIOS hole, RAM from 1 MiB to 256 MiB.
    assert!(
        text.contains("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"),
        "{text}"
    );
    assert!(text.contains("BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved"));
    assert!(text.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"));
    // Our ACPI tables, found from the RSDP at 0xe0000.
    assert!(text.contains("ACPI: RSDP 0x00000000000E0000"), "{text}");
    for table in ["XSDT", "FACP", "APIC", "DSDT"] {
        assert!(text.contains(&format!("ACPI: {table} ")), "no {table}:\n{text}");
    }
    assert!(text.contains("HVVMM"), "our OEM id");
    vm.kill().unwrap();
    assert!(matches!(vm.wait().unwrap(), ExitReason::Killed));
}

#[test]
fn minimal_kernel_boots_through_init_with_two_cpus() {
    require!(have_kvm(), "/dev/kvm is not usable");
    // The 9 KB initramfs: its /init prints HV-INIT-OK and powers off where user space runs;
    // unpacking the 2 MB busybox one costs the emulated kernel here ~50 s more.
    let (kernel, initrd) = (mini_kernel(), tiny_initramfs());
    require!(kernel.is_some() && initrd.is_some(), "the guest kit is missing: run guests/kit.sh");
    let out = Capture::new();
    let start = Instant::now();
    let vm = VmBuilder::new()
        .kernel(kernel.unwrap())
        .initrd(initrd.unwrap())
        .vcpus(2)
        .memory_mib(256)
        .cmdline("console=ttyS0 panic=-1 reboot=k")
        .serial_output(out.clone())
        .build()
        .unwrap();
    vm.start().unwrap();
    milestone(&out, start, "Linux version");
    milestone(&out, start, "smp: Brought up 1 node, 2 CPUs");
    milestone(&out, start, "Run /init as init process");
    // The kernel set its clock from our CMOS RTC: the host's date (now or at boot, in case
    // the boot straddled midnight).
    let date = |t: std::time::SystemTime| {
        let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let d = hv_core::devices::cmos::DateTime::from_unix(secs);
        format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
    };
    let boot_wall = std::time::SystemTime::now() - start.elapsed();
    let text = out.text();
    let rtc = text.lines().find(|l| l.contains("setting system clock to")).unwrap_or_default();
    assert!(
        rtc.contains(&date(boot_wall)) || rtc.contains(&date(std::time::SystemTime::now())),
        "the RTC line does not carry the host's date:\n{text}"
    );
    let reason = vm.wait_timeout(BOOT_TIMEOUT).expect("the guest stops by itself");
    eprintln!("milestone {:>7.2}s  {reason}", start.elapsed().as_secs_f64());
    if vm.host().is_hardware_virt() {
        // User space runs: the initramfs prints its marker and powers off.
        assert!(out.text().contains("HV-INIT-OK"), "{}", out.text());
        assert!(matches!(reason, ExitReason::PoweredOff), "{reason}");
    } else {
        // PVM: /init dies on its first system call and the kernel panics; its pvpanic driver
        // tells us before the panic=-1 reboot could.
        assert!(out.text().contains("Attempted to kill init"), "{}", out.text());
        match &reason {
            ExitReason::Crashed(c) => assert_eq!(c.reason, CrashReason::GuestPanic),
            other => panic!("expected a guest crash, got {other}"),
        }
    }
}
