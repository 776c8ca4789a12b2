//! Port I/O comes from the guest: any sequence of reads and writes of any width to the legacy
//! devices (8250 serial, i8042, CMOS RTC, ACPI PM block, pvpanic) on hv's PIO bus must never
//! panic, and each VM-level request comes only from the device that owns it.
//!
//! Input: a CMOS clock (u64 seconds), then operations of 4+ bytes: kind (bit 0 write, bits 1-2
//! log2 width, bit 3 serial input instead), device index, offset, data.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hv_core::bus::Bus;
use hv_core::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN};
use hv_core::devices::cmos::{Cmos, CMOS_BASE, CMOS_LEN};
use hv_core::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use hv_core::devices::pvpanic::{PvPanic, PVPANIC_PORT};
use hv_core::devices::serial::{SerialPort, COM1_BASE};
use hv_core::devices::{IrqLine, RequestSink, VmRequest};
use hv_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

static CLOCK: AtomicU64 = AtomicU64::new(0);

fn clock() -> u64 {
    CLOCK.load(Ordering::Relaxed)
}

/// The devices' ranges, in the order the device index picks them; index 5 is unowned ports.
const RANGES: [(u64, u64); 6] = [
    (COM1_BASE, 8),
    (I8042_BASE, I8042_LEN),
    (CMOS_BASE, CMOS_LEN),
    (PM_BASE, PM_LEN),
    (PVPANIC_PORT, 1),
    (0x80, 0x10),
];

fuzz_target!(|data: &[u8]| {
    let mut input = Reader::new(data);
    CLOCK.store(input.u64(), Ordering::Relaxed);
    let requests: Arc<Mutex<Vec<VmRequest>>> = Arc::default();
    let sink: RequestSink = {
        let r = requests.clone();
        Arc::new(move |req| r.lock().unwrap().push(req))
    };
    let irq = || IrqLine::disconnected().expect("eventfd");
    let serial = Arc::new(Mutex::new(SerialPort::new(irq(), Box::new(std::io::sink()))));
    let bus = Bus::new();
    bus.insert(COM1_BASE, 8, serial.clone()).unwrap();
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new(sink.clone())))).unwrap();
    bus.insert(CMOS_BASE, CMOS_LEN, Arc::new(Mutex::new(Cmos::with_clock(clock)))).unwrap();
    bus.insert(PM_BASE, PM_LEN, Arc::new(Mutex::new(AcpiPm::new(sink.clone(), irq())))).unwrap();
    bus.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic::new(sink)))).unwrap();

    while !input.is_empty() {
        let kind = input.u8();
        let (base, len) = RANGES[usize::from(input.u8()) % RANGES.len()];
        let port = base + u64::from(input.u8()) % (len + 1);
        let width = 1usize << ((kind >> 1) & 3);
        if kind & 8 != 0 {
            let bytes = input.bytes(usize::from(kind >> 4));
            serial.lock().unwrap().enqueue_input(bytes);
            continue;
        }
        let before = requests.lock().unwrap().len();
        if kind & 1 == 1 {
            let mut buf = [0u8; 8];
            let b = input.bytes(width);
            buf[..b.len()].copy_from_slice(b);
            bus.write(port, &buf[..width]);
        } else {
            let mut buf = [0u8; 8];
            let owned = bus.read(port, &mut buf[..width]);
            if !owned {
                assert!(
                    buf[..width].iter().all(|&b| b == 0xff),
                    "unowned port {port:#x} read {buf:?}"
                );
            }
        }
        let reqs = requests.lock().unwrap();
        for r in &reqs[before..] {
            let from = match r {
                VmRequest::Reset => I8042_BASE..I8042_BASE + I8042_LEN,
                VmRequest::PowerOff => PM_BASE..PM_BASE + PM_LEN,
                VmRequest::GuestPanic => PVPANIC_PORT..PVPANIC_PORT + 1,
                // A request kind this target does not know yet: make it look at it.
                other => panic!("unexpected request {other:?}"),
            };
            assert!(
                kind & 1 == 1 && from.contains(&port),
                "{r:?} from a {kind:#x} access to {port:#x}"
            );
        }
    }
});
