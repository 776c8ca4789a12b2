//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! Every register access is validated: out-of-range queue selectors, queue sizes that are not
//! a power of two or exceed the maximum, rings outside guest memory and feature bits the
//! device never offered are refused the way the spec says (the write is ignored, FEATURES_OK
//! stays clear, or DEVICE_NEEDS_RESET is set), never with a panic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hv_mem::GuestMemory;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_SHM_LEN_HIGH, VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device_thread::DeviceThread;
use super::{ActivateError, Activation, ActiveQueue, Interrupt, QueuePosition, VirtioDevice};
use crate::bus::BusDevice;
use crate::devices::IrqLine;

/// Guest physical base of the first virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd100_0000;
/// Size of each device's window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are matched).
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x0000_4856; // "HV"
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;

/// A register offset from virtio-bindings as the `u64` bus offsets are.
const fn reg(offset: u32) -> u64 {
    offset as u64
}

/// The transport: registers, queues and the device behind them.
pub struct MmioTransport {
    pub(crate) device: Box<dyn VirtioDevice>,
    pub(crate) mem: GuestMemory,
    pub(crate) irq: IrqLine,
    pub(crate) interrupt_status: Arc<AtomicU32>,
    notify: Vec<EventFd>,
    pub(crate) queues: Vec<Queue>,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features_sel: u32,
    pub(crate) driver_features: u64,
    pub(crate) queue_sel: u32,
    pub(crate) status: u32,
    pub(crate) config_generation: u32,
    pub(crate) activated: bool,
    /// Where activation and reset run (the VM's device thread), if not on the caller.
    runner: Option<Arc<DeviceThread>>,
}

/// Stands in for the device while its activation or reset runs on the device thread (the
/// transport stays locked by the waiting vCPU, so nothing else sees it).
struct Detached;

impl VirtioDevice for Detached {
    fn device_type(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        Vec::new()
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _: Activation) -> Result<(), ActivateError> {
        Err(ActivateError::Device("the device was lost on its device thread".into()))
    }
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl MmioTransport {
    /// A transport for `device`. `notify` holds one eventfd per queue (registered by the
    /// caller as ioeventfds on QueueNotify with the queue index as data match).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: IrqLine,
        notify: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes();
        if notify.len() != sizes.len() {
            return Err(std::io::Error::other("one notify eventfd per queue is needed"));
        }
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|e| std::io::Error::other(e.to_string())))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            irq,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            notify,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            runner: None,
        })
    }

    /// Runs activation and reset on `runner` instead of the calling (vCPU) thread.
    pub(crate) fn set_runner(&mut self, runner: Arc<DeviceThread>) {
        self.runner = Some(runner);
    }

    /// Runs `f` on the device, on the device thread when there is one.
    fn on_device<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn VirtioDevice) -> R + Send + 'static,
    ) -> Option<R> {
        let Some(runner) = &self.runner else { return Some(f(self.device.as_mut())) };
        let mut device = std::mem::replace(&mut self.device, Box::new(Detached));
        let (device, r) = runner.run(move || {
            let r = f(device.as_mut());
            (device, r)
        })?;
        self.device = device;
        Some(r)
    }

    /// The device's feature bits as offered to the driver.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device has been activated.
    pub fn activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
            && self.status & VIRTIO_CONFIG_S_FAILED == 0
    }

    fn reset(&mut self) {
        if self.activated {
            if self.on_device(|d| d.reset()).is_none() {
                log::error!("virtio device reset failed on the device thread");
            }
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // A driver may only set status bits; only a reset (writing 0) clears them. So DRIVER_OK
        // cannot be cleared and set again to activate a running device twice (its queues would
        // restart at index 0 and replay old requests), nor NEEDS_RESET be cleared.
        let mut new = v | old;
        // FEATURES_OK only sticks for a feature set the device accepts.
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && old & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !ok {
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && old & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            let needed =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if new & needed != needed {
                new &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else if !self.activate() {
                new |= VIRTIO_CONFIG_S_NEEDS_RESET;
            }
        }
        self.status = new;
    }

    fn activate(&mut self) -> bool {
        self.activate_at(&[])
    }

    /// Activates the device with its queues at `positions` (a snapshot's; none for a fresh
    /// activation).
    pub(crate) fn activate_at(&mut self, positions: &[QueuePosition]) -> bool {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                return false;
            }
            let Ok(notify) = self.notify[i].try_clone() else { return false };
            let Some(mut queue) = copy_queue(q, event_idx) else { return false };
            if let Some(p) = positions.iter().find(|p| usize::from(p.index) == i) {
                queue.set_next_avail(p.next_avail);
                queue.set_next_used(p.next_used);
            }
            queues.push(ActiveQueue { index: i as u16, queue, notify });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            acked_features: self.driver_features,
            queues,
            interrupt: Interrupt::new(self.interrupt_status.clone(), self.irq.clone()),
        };
        let device_type = self.device.device_type();
        let result = self.on_device(move |d| d.activate(activation)).unwrap_or_else(|| {
            Err(ActivateError::Device("the device thread failed while activating".into()))
        });
        match result {
            Ok(()) => {
                self.activated = true;
                true
            }
            Err(e) => {
                log::warn!("virtio device type {device_type} failed to activate: {e}");
                false
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        const MAGIC_VALUE: u64 = reg(VIRTIO_MMIO_MAGIC_VALUE);
        const VERSION_REG: u64 = reg(VIRTIO_MMIO_VERSION);
        const DEVICE_ID: u64 = reg(VIRTIO_MMIO_DEVICE_ID);
        const VENDOR: u64 = reg(VIRTIO_MMIO_VENDOR_ID);
        const DEVICE_FEATURES: u64 = reg(VIRTIO_MMIO_DEVICE_FEATURES);
        const QUEUE_NUM_MAX: u64 = reg(VIRTIO_MMIO_QUEUE_NUM_MAX);
        const QUEUE_READY: u64 = reg(VIRTIO_MMIO_QUEUE_READY);
        const INTERRUPT_STATUS: u64 = reg(VIRTIO_MMIO_INTERRUPT_STATUS);
        const STATUS: u64 = reg(VIRTIO_MMIO_STATUS);
        const SHM_LEN_LOW: u64 = reg(VIRTIO_MMIO_SHM_LEN_LOW);
        const SHM_LEN_HIGH: u64 = reg(VIRTIO_MMIO_SHM_LEN_HIGH);
        const CONFIG_GENERATION: u64 = reg(VIRTIO_MMIO_CONFIG_GENERATION);
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => {
                let f = self.offered_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            STATUS => self.status,
            // No shared memory regions: length reads as all ones.
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        const DEVICE_FEATURES_SEL: u64 = reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL);
        const DRIVER_FEATURES: u64 = reg(VIRTIO_MMIO_DRIVER_FEATURES);
        const DRIVER_FEATURES_SEL: u64 = reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL);
        const QUEUE_SEL: u64 = reg(VIRTIO_MMIO_QUEUE_SEL);
        const QUEUE_NUM: u64 = reg(VIRTIO_MMIO_QUEUE_NUM);
        const QUEUE_READY: u64 = reg(VIRTIO_MMIO_QUEUE_READY);
        const INTERRUPT_ACK: u64 = reg(VIRTIO_MMIO_INTERRUPT_ACK);
        const STATUS: u64 = reg(VIRTIO_MMIO_STATUS);
        const DESC_LOW: u64 = reg(VIRTIO_MMIO_QUEUE_DESC_LOW);
        const DESC_HIGH: u64 = reg(VIRTIO_MMIO_QUEUE_DESC_HIGH);
        const AVAIL_LOW: u64 = reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW);
        const AVAIL_HIGH: u64 = reg(VIRTIO_MMIO_QUEUE_AVAIL_HIGH);
        const USED_LOW: u64 = reg(VIRTIO_MMIO_QUEUE_USED_LOW);
        const USED_HIGH: u64 = reg(VIRTIO_MMIO_QUEUE_USED_HIGH);
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            // Driver features are frozen once FEATURES_OK is set.
            DRIVER_FEATURES if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if self.queue_config_allowed() => {
                if let Some(q) = self.selected_queue() {
                    let size = v as u16;
                    if v <= u32::from(q.max_size()) && size.is_power_of_two() {
                        q.set_size(size);
                    }
                }
            }
            QUEUE_READY if self.queue_config_allowed() => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                // Normally consumed by the ioeventfd; a notification that reaches us (no
                // ioeventfd registered) is forwarded the same way.
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            STATUS => self.set_status(v),
            DESC_LOW | DESC_HIGH | AVAIL_LOW | AVAIL_HIGH | USED_LOW | USED_HIGH
                if self.queue_config_allowed() =>
            {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = match offset {
                        DESC_LOW | AVAIL_LOW | USED_LOW => (Some(v), None),
                        _ => (None, Some(v)),
                    };
                    match offset {
                        DESC_LOW | DESC_HIGH => q.set_desc_table_address(lo, hi),
                        AVAIL_LOW | AVAIL_HIGH => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }
}

/// A device-side copy of a queue the driver configured (`Queue` is not `Clone`).
fn copy_queue(q: &Queue, event_idx: bool) -> Option<Queue> {
    let mut c = Queue::new(q.max_size()).ok()?;
    c.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    c.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    c.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    c.set_used_ring_address(lo, hi);
    c.set_event_idx(event_idx);
    c.set_ready(q.ready());
    Some(c)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32-bit; other widths read as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if let ([a, b, c, d], 0) = (data, offset % 4) {
            self.write_reg(offset, u32::from_le_bytes([*a, *b, *c, *d]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Dummy {
        activations: Arc<Mutex<Vec<usize>>>,
        resets: Arc<Mutex<usize>>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn activate(&mut self, a: Activation) -> Result<(), super::super::ActivateError> {
            self.activations.lock().unwrap().push(a.queues.len());
            Ok(())
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    type Fixture = (MmioTransport, Arc<Mutex<Vec<usize>>>, Arc<Mutex<usize>>, hv_mem::GuestRam);

    fn transport() -> Fixture {
        let ram = hv_mem::GuestRam::new(&hv_mem::MemoryConfig::new(16 << 20)).unwrap();
        let acts = Arc::new(Mutex::new(Vec::new()));
        let resets = Arc::new(Mutex::new(0));
        let dev = Dummy { activations: acts.clone(), resets: resets.clone() };
        let notify = vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let t = MmioTransport::new(
            Box::new(dev),
            ram.memory().clone(),
            IrqLine::disconnected().unwrap(),
            notify,
        )
        .unwrap();
        (t, acts, resets, ram)
    }

    #[test]
    fn a_driver_brings_the_device_up() {
        let (mut t, acts, resets, _ram) = transport();
        assert_eq!(rd(&mut t, 0), MAGIC);
        assert_eq!(rd(&mut t, 4), 2);
        assert_eq!(rd(&mut t, 8), 2);
        wr(&mut t, 0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1 << (VIRTIO_F_VERSION_1 - 32));
        // Offer a feature the device lacks: FEATURES_OK must not stick.
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 1 << 6);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, 0x3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(rd(&mut t, 0x70) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 1 << 5);
        wr(&mut t, 0x70, 0x3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_ne!(rd(&mut t, 0x70) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        // Queue 0: a bad size is ignored, then a good one; rings inside RAM.
        wr(&mut t, 0x30, 0);
        assert_eq!(rd(&mut t, 0x34), 16);
        wr(&mut t, 0x38, 12);
        wr(&mut t, 0x38, 8);
        wr(&mut t, 0x80, 0x10000);
        wr(&mut t, 0x90, 0x11000);
        wr(&mut t, 0xa0, 0x12000);
        wr(&mut t, 0x44, 1);
        // Selecting a queue that does not exist reads max 0 and ignores writes.
        wr(&mut t, 0x30, 9);
        assert_eq!(rd(&mut t, 0x34), 0);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, 0x3 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(t.activated());
        assert_eq!(*acts.lock().unwrap(), vec![1]);
        // Status bits cannot be cleared but by a reset: no second activation (fuzzer's F4).
        wr(&mut t, 0x70, 0x3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_ne!(rd(&mut t, 0x70) & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        wr(&mut t, 0x70, 0x3 | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(*acts.lock().unwrap(), vec![1]);
        // Config space.
        let mut b = [0u8; 2];
        t.read(0x104, &mut b);
        assert_eq!(b, [5, 5]);
        // Reset.
        wr(&mut t, 0x70, 0);
        assert_eq!(*resets.lock().unwrap(), 1);
        assert_eq!(rd(&mut t, 0x70), 0);
        assert!(!t.activated());
    }

    #[test]
    fn rings_outside_guest_memory_fail_activation() {
        let (mut t, acts, _, _ram) = transport();
        wr(&mut t, 0x70, 0x3);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, 0x3 | VIRTIO_CONFIG_S_FEATURES_OK);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, 0xffff_f000);
        wr(&mut t, 0x84, 0x7);
        wr(&mut t, 0x90, 0x11000);
        wr(&mut t, 0xa0, 0x12000);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, 0xb | VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(!t.activated());
        assert_ne!(rd(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(acts.lock().unwrap().is_empty());
        // Odd widths and offsets do nothing.
        t.write(0x71, &[1]);
        let mut b = [0u8; 2];
        t.read(0x70, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
