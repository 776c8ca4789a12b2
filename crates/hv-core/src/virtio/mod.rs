//! The virtio transport and the [`VirtioDevice`] trait devices implement.
//!
//! hv uses virtio-mmio (version 2, `VIRTIO_F_VERSION_1` only). Why mmio rather than pci:
//! a device is one 4 KiB register window and one interrupt line, with no PCI host bridge,
//! config space, BARs or MSI-X tables to emulate; each register access the guest makes is a
//! single MMIO exit, and queue notifications never exit to user space at all (ioeventfd).
//! A stock kernel finds the devices through the ACPI DSDT (`LNRO0005`), and minimal kernels
//! or test guests through `virtio_mmio.device=SIZE@ADDR:IRQ` on the command line.
//!
//! Data path: the guest's write to `QueueNotify` is matched by KVM against an ioeventfd and
//! wakes the device's own worker thread ([`worker`]); the device completes requests in guest
//! memory and raises its interrupt through an irqfd ([`Interrupt`]). The vCPU thread does no
//! device work.

pub(crate) mod device_thread;
pub mod mmio;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hv_mem::GuestMemory;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::IrqLine;

pub use mmio::MmioTransport;

#[cfg(test)]
mod tests {
    #[test]
    fn config_reads_past_the_end_are_zero() {
        let mut d = [0xffu8; 4];
        super::read_config_space(&[1, 2, 3], 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        super::read_config_space(&[1, 2, 3], u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}

pub use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

/// Serves a guest read of `data.len()` bytes at `offset` from a device's configuration space
/// `config`; bytes past its end read as zero, so no offset a guest chooses can fault.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// A device's way to interrupt the guest.
#[derive(Clone, Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irq: IrqLine,
}

impl Interrupt {
    pub(crate) fn new(status: Arc<AtomicU32>, irq: IrqLine) -> Self {
        Self { status, irq }
    }

    /// Tells the guest buffers were used.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        let _ = self.irq.eventfd().write(1);
    }

    /// Tells the guest the device configuration changed.
    pub fn signal_config_change(&self) {
        self.status.fetch_or(VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
        let _ = self.irq.eventfd().write(1);
    }

    /// An interrupt connected to nothing (for tests of devices without a VM).
    pub fn disconnected() -> std::io::Result<Self> {
        Ok(Self::new(Arc::new(AtomicU32::new(0)), IrqLine::disconnected()?))
    }

    /// The pending interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }
}

/// A queue the driver set up, handed to the device at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue's index.
    pub index: u16,
    /// The queue (addresses validated against guest memory).
    pub queue: Queue,
    /// Signalled when the driver notifies this queue.
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory, for the device's worker.
    pub mem: GuestMemory,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The queues the driver made ready.
    pub queues: Vec<ActiveQueue>,
    /// How to interrupt the guest.
    pub interrupt: Interrupt,
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is required but was not set up")]
    MissingQueue(u16),
    /// The device's worker could not start.
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
    /// Another device-specific reason.
    #[error("{0}")]
    Device(String),
}

/// Where a quiesced queue stood: the device's next avail entry to take and next used slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuePosition {
    /// The queue's index.
    pub index: u16,
    /// The next avail ring entry the device will take.
    pub next_avail: u16,
    /// The next used ring slot the device will fill.
    pub next_used: u16,
}

/// A device's own state for a snapshot: a device-defined, versioned serde value.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// The device's state format version.
    pub version: u32,
    /// The state (the device's own serde struct).
    pub data: serde_json::Value,
}

/// What a device hands back when quiesced for a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Quiesced {
    /// Each active queue's position.
    pub queues: Vec<QueuePosition>,
    /// The device's own state.
    pub state: DeviceState,
}

/// Why a device cannot save or restore its state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The device does not implement snapshots.
    #[error("virtio device type {device_type} cannot be snapshotted (it does not save its state)")]
    Unsupported {
        /// The virtio device ID.
        device_type: u32,
    },
    /// The saved state is not one this device can take.
    #[error("virtio device type {device_type}: bad saved state: {reason}")]
    BadState {
        /// The virtio device ID.
        device_type: u32,
        /// What is wrong.
        reason: String,
    },
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 = net, 2 = block, ...).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (`VIRTIO_F_VERSION_1` is added by the transport).
    fn features(&self) -> u64;
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (most devices ignore writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device: it owns the queues from now on.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops using the queues and returns to the initial state (the driver reset it).
    fn reset(&mut self) {}
    /// Stops the active device for a snapshot or a migration: its worker finishes the request
    /// it is on and stops, so every request the driver made available is either completed
    /// (in the used ring) or untouched (past `next_avail` in the avail ring). Returns where
    /// each queue stood and the device's own state. The device is inactive afterwards;
    /// [`activate`](VirtioDevice::activate) with queues at those positions starts it again,
    /// and it takes up the untouched requests then. The default refuses.
    fn quiesce(&mut self) -> Result<Quiesced, StateError> {
        Err(StateError::Unsupported { device_type: self.device_type() })
    }
    /// Takes the state [`quiesce`](VirtioDevice::quiesce) returned (on a fresh device, before
    /// it is activated at the saved queue positions). The default refuses.
    fn restore_state(&mut self, _state: &DeviceState) -> Result<(), StateError> {
        Err(StateError::Unsupported { device_type: self.device_type() })
    }
}
