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
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, ActiveQueue, Interrupt, QueuePosition, VirtioDevice};
use crate::bus::BusDevice;
use crate::devices::IrqLine;

/// Guest physical base of the first virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd100_0000;
/// Size of each device's window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are matched).
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x0000_4856; // "HV"
const CONFIG_SPACE: u64 = 0x100;

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
        })
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
            self.device.reset();
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
        let mut new = v;
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
        match self.device.activate(activation) {
            Ok(()) => {
                self.activated = true;
                true
            }
            Err(e) => {
                log::warn!(
                    "virtio device type {} failed to activate: {e}",
                    self.device.device_type()
                );
                false
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.offered_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt_status.load(Ordering::SeqCst),
            0x70 => self.status,
            // No shared memory regions: length reads as all ones.
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            // Driver features are frozen once FEATURES_OK is set.
            0x20 if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 => {
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
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if self.queue_config_allowed() => {
                if let Some(q) = self.selected_queue() {
                    let size = v as u16;
                    if v <= u32::from(q.max_size()) && size.is_power_of_two() {
                        q.set_size(size);
                    }
                }
            }
            0x44 if self.queue_config_allowed() => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                // Normally consumed by the ioeventfd; a notification that reaches us (no
                // ioeventfd registered) is forwarded the same way.
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if self.queue_config_allowed() => {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if offset & 4 == 0 { (Some(v), None) } else { (None, Some(v)) };
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
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
