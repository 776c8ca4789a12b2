//! The virtio-mmio transport's state: its registers, each queue's configuration and position,
//! and the device's own state (through [`VirtioDevice::quiesce`]).
//!
//! In-flight requests: a device is quiesced before its state is read (its worker finishes
//! the request it is on and stops), so no request is half done. A request the driver made
//! available but the device had not taken stays in the avail ring in guest memory, past the
//! saved `next_avail`; the restored device takes it up when it is activated.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use crate::virtio::{DeviceState, MmioTransport, QueuePosition, StateError};

/// One queue as the driver configured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The size the driver chose.
    pub size: u16,
    /// The ready bit.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Avail ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

/// A virtio-mmio transport and its device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    /// The virtio device ID behind it.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// The device status register.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus (bits not yet acknowledged by the driver).
    pub interrupt_status: u32,
    /// Whether the device was activated (DRIVER_OK accepted).
    pub activated: bool,
    /// Every queue, in order.
    pub queues: Vec<QueueState>,
    /// Where each active queue stood (activated devices only).
    pub positions: Vec<QueuePosition>,
    /// The device's own state (activated devices only).
    pub device: Option<DeviceState>,
}

impl MmioTransport {
    /// Quiesces an active device and reads the transport's state. The device stays stopped
    /// until [`resume_after_save`](Self::resume_after_save).
    pub(crate) fn save(&mut self) -> Result<TransportState, StateError> {
        let (positions, device) = if self.activated {
            let q = self.device.quiesce()?;
            (q.queues, Some(q.state))
        } else {
            (Vec::new(), None)
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|q| QueueState {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                })
                .collect(),
            positions,
            device,
        })
    }

    /// Starts a device [`save`](Self::save) quiesced again where it stopped (the VM goes on).
    pub(crate) fn resume_after_save(&mut self, state: &TransportState) -> bool {
        if !state.activated {
            return true;
        }
        self.activated = false;
        let ok = self.activate_at(&state.positions);
        self.activated = ok;
        ok
    }

    /// Puts a fresh transport (same device type and queues) in the saved state and activates
    /// the device at the saved queue positions. A pending interrupt is raised again, so a
    /// driver that had not seen it yet does.
    pub(crate) fn restore(&mut self, state: &TransportState) -> Result<(), StateError> {
        let device_type = self.device.device_type();
        let bad = |reason: String| StateError::BadState { device_type, reason };
        if state.device_type != device_type {
            return Err(bad(format!("the snapshot has device type {}", state.device_type)));
        }
        if state.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "the snapshot has {} queues, the device {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        for (q, s) in self.queues.iter_mut().zip(&state.queues) {
            if s.size > q.max_size() || (s.size != 0 && !s.size.is_power_of_two()) {
                return Err(bad(format!("queue size {} (max {})", s.size, q.max_size())));
            }
            q.set_size(s.size);
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(s.desc_table);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(s.avail_ring);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(s.used_ring);
            q.set_used_ring_address(lo, hi);
            q.set_ready(s.ready);
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.interrupt_status.store(state.interrupt_status, Ordering::SeqCst);
        if state.activated {
            let device = state
                .device
                .as_ref()
                .ok_or_else(|| bad("an active device without its state".into()))?;
            self.device.restore_state(device)?;
            if !self.activate_at(&state.positions) {
                return Err(bad("the device refused to activate at the saved positions".into()));
            }
            self.activated = true;
        }
        if state.interrupt_status != 0 {
            let _ = self.irq.eventfd().write(1);
        }
        Ok(())
    }

    /// The device's type and queue sizes (to check a rebuilt device against a snapshot).
    pub(crate) fn shape(&self) -> (u32, Vec<u16>) {
        (self.device.device_type(), self.device.queue_max_sizes())
    }
}
