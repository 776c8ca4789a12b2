//! The 8250/16550 UART at COM1 (I/O ports 0x3f8..0x400, IRQ 4), on `vm-superio`.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::IrqLine;
use crate::bus::BusDevice;

/// COM1's I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// Bytes the UART's input FIFO holds.
pub const SERIAL_FIFO: usize = 64;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;

/// A serial port whose output goes to the embedder's sink.
pub struct SerialPort {
    uart: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
}

impl SerialPort {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Self { uart: Serial::new(irq, out) }
    }

    /// A UART restored to `state` (a snapshot's), raising `irq` and writing to `out`. Input
    /// beyond the 64-byte FIFO (only a corrupt snapshot has it) is dropped.
    pub fn from_state(irq: IrqLine, out: Box<dyn Write + Send>, state: &SerialSnapshot) -> Self {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.iter().copied().take(SERIAL_FIFO).collect(),
        };
        match Serial::from_state(&s, irq.clone(), NoEvents, out) {
            Ok(uart) => Self { uart },
            // Unreachable: the FIFO was cut to its size above, the only check from_state makes.
            Err(_) => Self::new(irq, Box::new(std::io::sink())),
        }
    }

    /// Puts this UART (same interrupt, same output) in `state`, as
    /// [`from_state`](Self::from_state) would make it.
    pub fn restore(&mut self, state: &SerialSnapshot) {
        let irq = self.uart.interrupt_evt().clone();
        let sink: Box<dyn Write + Send> = Box::new(std::io::sink());
        let old = std::mem::replace(&mut self.uart, Serial::new(irq.clone(), sink));
        *self = Self::from_state(irq, old.into_writer(), state);
    }

    /// The UART's registers and input FIFO, for a snapshot.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues bytes for the guest to read; returns how many fitted in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Only byte accesses are meaningful on a UART; wider ones read the first register.
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // An output error (a closed pipe) must not stop the guest.
            let _ = self.uart.write(off, b);
        }
    }
}

/// The 8250's registers and pending input, as a snapshot holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes queued for the guest to read.
    pub in_buffer: Vec<u8>,
}
