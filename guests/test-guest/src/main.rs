//! The hv test guest: a small bare-metal PVH program that the VMM tests boot (and QEMU runs the
//! same binary). It reports on COM1, one `hvtest: ` line at a time, and runs the test named by
//! `test=` on its command line. The protocol is in `guests/README.md`.
#![no_std]
#![no_main]

mod acpi;
mod boot;
mod dirty;
mod echo;
mod idt;
mod io;
mod mem;
mod net;
mod power;
mod pvh;
mod serial;
mod smp;
mod tests;
mod virtio;

use core::fmt::Write;
use core::panic::PanicInfo;

use serial::Line;

/// The BSP's Rust entry, from `boot.rs`, in long mode with interrupts off.
#[no_mangle]
extern "C" fn rust_main(start_info: u64) -> ! {
    idt::install();
    let boot = pvh::parse(start_info);
    if !boot.valid {
        serial::say("no PVH start info (bad magic)");
    }
    Line::new().s("cmdline=").bytes(boot.cmdline()).print();
    if let Some(bytes) = boot.ram_bytes {
        Line::new().s("mem=").dec(bytes >> 20).s(" MiB").print();
    }
    let acpi = acpi::find(boot.rsdp_paddr);
    match &acpi {
        Some(acpi) => {
            let cpus = acpi.cpus.as_ref().map_or(1, |c| c.count.max(1));
            Line::new().s("cpus=").dec(cpus as u64).print();
            power::init(acpi.fadt.as_ref());
        }
        None => serial::say("cpus=1 (no acpi)"),
    }
    let args = pvh::Args::parse(boot.cmdline());
    tests::run(&args, acpi.as_ref(), boot.cmdline());
    serial::say("done");
    power::power_off()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let mut line = Line::new();
    line.s("panic: ");
    let _ = write!(line, "{}", info.message());
    line.print();
    power::power_off()
}

/// Never called (`panic = "abort"`): it only satisfies the reference from the precompiled
/// `core` in builds without LTO (the dev profile).
#[no_mangle]
extern "C" fn rust_eh_personality() {}
