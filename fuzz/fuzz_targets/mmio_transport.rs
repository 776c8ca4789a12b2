//! virtio-mmio register accesses come from the guest: any sequence of them on hv's
//! `MmioTransport` must never panic, and the transport must keep the spec's promises: the
//! device activates only with features it offered (VERSION_1 among them), only with ready
//! queues of a valid size inside guest memory, and a status write of 0 resets everything.
//!
//! The status register must agree with the device: active only with DRIVER_OK, and DRIVER_OK
//! without NEEDS_RESET only when active (finding F4 in the README: the transport took any
//! status value, so a driver could clear DRIVER_OK and set it again, activating the device a
//! second time without a reset, or clear NEEDS_RESET; `regressions/mmio_transport/`).
//!
//! Input: operations of 7 bytes: kind (bit 0 write, bits 1-2 log2 width), offset (u16, within
//! the 4 KiB window), value (u32).
#![no_main]

use std::sync::{Arc, Mutex};

use hv_core::bus::BusDevice;
use hv_core::devices::IrqLine;
use hv_core::virtio::{ActivateError, Activation, MmioTransport, VirtioDevice};
use hv_core::vmm_sys_util::eventfd::EventFd;
use hv_fuzz::{reached, Reader};
use hv_mem::{GuestMemory, GuestRam, MemoryConfig};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;

const RAM: u64 = 2 << 20;
const FEATURES: u64 = (1 << 5) | (1 << 28) | (1 << 29);
const STATUS: u64 = 0x70;
const DRIVER_OK: u32 = 4;
const NEEDS_RESET: u32 = 0x40;

/// What the dummy device saw.
#[derive(Default)]
struct Seen {
    active: bool,
    activations: usize,
}

/// A device with two queues that checks what the transport hands it.
struct Dummy {
    mem: GuestMemory,
    seen: Arc<Mutex<Seen>>,
    config: [u8; 16],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16, 256]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        hv_core::virtio::read_config_space(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = usize::try_from(offset).ok().and_then(|o| self.config.get_mut(o + i)) {
                *c = *b;
            }
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let mut seen = self.seen.lock().unwrap();
        let offered = FEATURES | (1 << 32);
        assert_eq!(a.acked_features & !offered, 0, "features the device never offered");
        assert_ne!(a.acked_features & (1 << 32), 0, "VERSION_1 not negotiated");
        for q in &a.queues {
            assert!(q.queue.ready());
            assert!(q.queue.is_valid(&self.mem), "queue {} outside guest memory", q.index);
            assert!(q.queue.size().is_power_of_two() && q.queue.size() <= q.queue.max_size());
        }
        // A device that needs a queue refuses without it, as virtio-net and virtio-blk do.
        if !a.queues.iter().any(|q| q.index == 0) {
            return Err(ActivateError::MissingQueue(0));
        }
        seen.active = true;
        seen.activations += 1;
        a.interrupt.signal_used_queue();
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().active = false;
    }
}

fuzz_target!(|data: &[u8]| {
    let ram = GuestRam::new(&MemoryConfig::new(RAM)).expect("guest RAM");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = Dummy { mem: ram.memory().clone(), seen: seen.clone(), config: [0; 16] };
    let notify =
        vec![EventFd::new(libc_nonblock()).unwrap(), EventFd::new(libc_nonblock()).unwrap()];
    let irq = IrqLine::disconnected().expect("eventfd");
    let mut t =
        MmioTransport::new(Box::new(device), ram.memory().clone(), irq, notify).expect("transport");
    let mut input = Reader::new(data);
    while !input.is_empty() {
        let kind = input.u8();
        let offset = u64::from(input.u16() % 0x1000);
        let value = input.u32().to_le_bytes();
        let width = 1usize << ((kind >> 1) & 3);
        let mut buf = [0u8; 8];
        if kind & 1 == 1 {
            buf[..4].copy_from_slice(&value);
            t.write(offset, &buf[..width]);
            if offset == STATUS && width == 4 && u32::from_le_bytes(value) == 0 {
                assert_eq!(t.status(), 0);
                assert!(!t.activated() && !seen.lock().unwrap().active);
            }
        } else {
            t.read(offset, &mut buf[..width]);
            if width == 4 && offset == 0 {
                assert_eq!(&buf[..4], b"virt");
            }
        }
        assert_eq!(t.activated(), seen.lock().unwrap().active, "transport and device disagree");
        let status = t.status();
        if t.activated() {
            assert_ne!(status & DRIVER_OK, 0, "active without DRIVER_OK");
        }
        if status & DRIVER_OK != 0 && status & NEEDS_RESET == 0 {
            assert!(t.activated(), "DRIVER_OK accepted but the device is not active");
        }
    }
    if seen.lock().unwrap().activations > 0 {
        reached("activated");
    }
});

fn libc_nonblock() -> i32 {
    // EFD_NONBLOCK: a notification with nobody reading must not block the transport.
    0o4000
}
