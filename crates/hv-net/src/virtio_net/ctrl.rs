//! The control queue (VIRTIO_NET_F_CTRL_VQ): requests parsed into [`CtrlRequest`], answered
//! with an ack byte.
//!
//! The only command served is VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, with which the driver says how
//! many queue pairs it uses (the device offers the control queue only for multiqueue). Every
//! other command is answered VIRTIO_NET_ERR; a chain without room for the ack is returned
//! unanswered and counted.

use hv_mem::GuestMemory;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use super::chain::ChainError;
use super::queue_handler::{publish_used, should_interrupt, usable, QueueHandlerError};
use super::{Counter, NetMetrics};

/// The most command bytes (class, command and data) a request may carry.
pub const MAX_CTRL_LEN: usize = 4096;

/// What the driver asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtrlCommand {
    /// Use this many queue pairs.
    SetQueuePairs(u16),
    /// A command this device does not serve.
    Unsupported {
        /// VIRTIO_NET_CTRL_* class.
        class: u8,
        /// The command within the class.
        command: u8,
    },
}

/// A validated control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlRequest {
    /// The head descriptor, to return the chain with.
    pub head: u16,
    /// The command.
    pub command: CtrlCommand,
    /// Where the ack byte goes.
    pub ack: GuestAddress,
}

impl CtrlRequest {
    /// Parses a control chain: device-readable class, command and data, then a device-writable
    /// ack byte; every buffer inside guest memory, the chain whole.
    pub fn parse(
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut out = Vec::new();
        let mut ack = None;
        let mut last_has_next = false;
        for desc in chain {
            last_has_next = desc.has_next();
            let (addr, len) = (desc.addr(), desc.len());
            if !mem.check_range(addr, len as usize) {
                return Err(ChainError::OutOfMemory { head, addr: addr.0, len });
            }
            if desc.is_write_only() {
                if ack.is_none() && len > 0 {
                    ack = Some(addr);
                }
            } else if ack.is_some() {
                return Err(ChainError::ReadableAfterWritable { head });
            } else {
                let n = len as usize;
                if out.len() + n > MAX_CTRL_LEN {
                    return Err(ChainError::TooLarge { head, len: (out.len() + n) as u64 });
                }
                let at = out.len();
                out.resize(at + n, 0);
                mem.read_slice(&mut out[at..], addr).map_err(|_| ChainError::OutOfMemory {
                    head,
                    addr: addr.0,
                    len,
                })?;
            }
        }
        if last_has_next {
            return Err(ChainError::Broken { head });
        }
        let ack = ack.ok_or(ChainError::TooShort { head, len: 0 })?;
        if out.len() < 2 {
            return Err(ChainError::TooShort { head, len: out.len() as u64 });
        }
        let (class, command) = (out[0], out[1]);
        let data = &out[2..];
        let command = match (u32::from(class), u32::from(command)) {
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if data.len() >= 2 => {
                CtrlCommand::SetQueuePairs(u16::from_le_bytes([data[0], data[1]]))
            }
            _ => CtrlCommand::Unsupported { class, command },
        };
        Ok(Self { head, command, ack })
    }
}

/// Answers control requests; `apply` carries out a valid queue-pair count.
#[derive(Debug)]
pub struct CtrlQueueHandler {
    max_pairs: u16,
    metrics: std::sync::Arc<NetMetrics>,
    last_error: Option<String>,
}

impl CtrlQueueHandler {
    /// A handler for a device of `max_pairs` queue pairs, counting into `metrics`.
    pub fn new(max_pairs: u16, metrics: std::sync::Arc<NetMetrics>) -> Self {
        Self { max_pairs, metrics, last_error: None }
    }

    /// The last malformed or refused request, for logs.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Answers every available request; `apply(n)` switches to `n` pairs (1 to the maximum).
    /// Returns whether to interrupt the guest.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        apply: &mut dyn FnMut(u16),
    ) -> Result<bool, QueueHandlerError> {
        if !usable(queue) {
            return Ok(false);
        }
        let old_used = queue.next_used();
        let mut used = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if head >= queue.size() {
                self.fail(ChainError::BadHead { head, size: queue.size() });
                continue;
            }
            match CtrlRequest::parse(chain, mem) {
                Ok(req) => {
                    let ok = match req.command {
                        CtrlCommand::SetQueuePairs(n) if (1..=self.max_pairs).contains(&n) => {
                            apply(n);
                            true
                        }
                        ref other => {
                            self.last_error = Some(format!("control request refused: {other:?}"));
                            false
                        }
                    };
                    let status = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
                    let written = u32::from(mem.write_obj(status, req.ack).is_ok());
                    used.push((head, written));
                }
                Err(e) => {
                    self.fail(e);
                    used.push((head, 0));
                }
            }
        }
        publish_used(queue, mem, &used)?;
        should_interrupt(queue, mem, old_used)
    }

    fn fail(&mut self, e: ChainError) {
        self.metrics.bump(Counter::CtrlMalformed);
        self.last_error = Some(e.to_string());
    }
}
