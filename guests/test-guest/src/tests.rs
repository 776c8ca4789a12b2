//! The tests `test=NAME` selects. Each returns when done (the caller prints `hvtest: done` and
//! powers off) or never returns (triple, hlt, reset, pagefault, panic, unknown names).

use crate::acpi::Acpi;
use crate::io::{halt_forever, inb, inl, io_delay, mmio_read32, mmio_write32, outb, outl};
use crate::pvh::Args;
use crate::serial::{say, Line};

/// The port the pio test and bench use (nothing is there in QEMU: reads give all ones).
const TEST_PORT: u16 = 0x6e0;
const BENCH_PORT: u16 = 0x6e1;
/// The MMIO window the mmio test and bench use (inside the MMIO hole).
const TEST_MMIO: u64 = 0xd000_0000;
/// An address no page table maps (64 GiB).
const UNMAPPED: u64 = 0x10_0000_0000;
/// Default `count=` for the benches and ticks.
const DEFAULT_COUNT: u64 = 1000;

/// Runs the test named by `test=` (`cmdline` holds the tests' other `key=value` words).
pub fn run(args: &Args, acpi: Option<&Acpi>, cmdline: &[u8]) {
    let count = args.count.unwrap_or(DEFAULT_COUNT);
    match args.test {
        b"" | b"poweroff" => {}
        b"smp" => {
            let up = crate::smp::start_aps(acpi.and_then(|a| a.cpus.as_ref()));
            Line::new().s("smp ok ").dec(u64::from(up)).print();
        }
        b"pio" => {
            outl(TEST_PORT, 0x1234_5678);
            let value = inl(TEST_PORT);
            Line::new().s("pio read ").hex(u64::from(value), 8).print();
        }
        b"mmio" => {
            mmio_write32(TEST_MMIO, 0xcafe_f00d);
            let value = mmio_read32(TEST_MMIO + 4);
            Line::new().s("mmio read ").hex(u64::from(value), 8).print();
        }
        b"bench-pio" => {
            for _ in 0..count {
                outb(BENCH_PORT, 0);
            }
            Line::new().s("bench-pio done ").dec(count).print();
        }
        b"bench-mmio" => {
            for _ in 0..count {
                mmio_write32(TEST_MMIO + 8, 0);
            }
            Line::new().s("bench-mmio done ").dec(count).print();
        }
        b"ticks" => {
            for i in 0..count {
                Line::new().s("tick ").dec(i).print();
                io_delay(1000);
            }
        }
        b"dirty" => crate::dirty::run(cmdline),
        b"echo" => crate::echo::run(args.count),
        b"blk" => crate::virtio::blk::test(cmdline),
        b"blk-loop" => crate::virtio::blk_loop::run(cmdline),
        b"blk-bench" => crate::virtio::blk::bench(cmdline),
        b"net" => crate::net::test::run(cmdline),
        b"net-bench" => crate::net::bench::run(cmdline),
        b"net-txonly" => crate::net::txonly::run(cmdline),
        b"pagefault" => {
            // SAFETY: deliberately reads an unmapped address; the #PF handler reports it and
            // powers off, so execution never continues past this read.
            let value = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
            Line::new().s("pagefault: read ").hex(value, 1).s(" without a fault").print();
        }
        b"triple" => {
            say("triple-faulting");
            crate::idt::load_empty();
            // SAFETY: ud2 raises #UD, which with an empty IDT escalates to a triple fault:
            // the point of this test. Nothing runs after it.
            unsafe { core::arch::asm!("ud2", options(noreturn)) }
        }
        b"power-button" => {
            say("waiting for the power button");
            if crate::power::wait_power_button() {
                say("power button pressed");
            } else {
                say("no PM1a event block");
            }
        }
        b"hlt" => {
            say("halting");
            halt_forever()
        }
        b"reset" => {
            say("resetting");
            crate::power::reset();
            // If the VMM ignores the reset, keep the CPU quiet rather than report `done`.
            halt_forever()
        }
        b"panic" => {
            // Read the port so the panic is not known at compile time.
            let value = inb(0x61);
            panic!("requested by test=panic (port 0x61 = {value:#x})");
        }
        name => {
            Line::new().s("unknown test ").bytes(name).print();
            crate::power::power_off()
        }
    }
}
