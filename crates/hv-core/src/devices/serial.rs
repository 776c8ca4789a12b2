//! The 8250/16550 UART at COM1 (I/O ports 0x3f8..0x400, IRQ 4), on `vm-superio`.

use std::collections::VecDeque;
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
/// Input bytes held beyond the FIFO, fed to it as the guest drains it.
pub const SERIAL_PENDING: usize = 4096;

/// A serial port whose output goes to the embedder's sink.
pub struct SerialPort {
    uart: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
    /// Input waiting for room in the FIFO (at most [`SERIAL_PENDING`] bytes; not in snapshots).
    pending: VecDeque<u8>,
}

impl SerialPort {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Self { uart: Serial::new(irq, out), pending: VecDeque::new() }
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
            Ok(uart) => Self { uart, pending: VecDeque::new() },
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

    /// Queues bytes for the guest to read (the FIFO first, raising the receive interrupt when
    /// the guest enabled it, then up to [`SERIAL_PENDING`] bytes held back); returns how many
    /// were taken. The caller keeps the rest and retries once the guest has read some.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.refill();
        let mut taken = 0;
        if self.pending.is_empty() {
            taken = self.uart.enqueue_raw_bytes(bytes).unwrap_or(0);
        }
        let rest = bytes.get(taken..).unwrap_or_default();
        let more = rest.len().min(SERIAL_PENDING.saturating_sub(self.pending.len()));
        self.pending.extend(rest.iter().take(more));
        taken + more
    }

    /// Moves held-back input into the FIFO while it has room.
    fn refill(&mut self) {
        while !self.pending.is_empty() {
            let n = self.uart.enqueue_raw_bytes(self.pending.as_slices().0).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Only byte accesses are meaningful on a UART; wider ones read the first register.
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
            if off == 0 {
                // The guest took a byte (or read the divisor latch): room for held-back input.
                self.refill();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> SerialPort {
        SerialPort::new(IrqLine::disconnected().unwrap(), Box::new(std::io::sink()))
    }

    fn read(p: &mut SerialPort, off: u64) -> u8 {
        let mut b = [0u8];
        p.read(off, &mut b);
        b[0]
    }

    #[test]
    fn input_beyond_the_fifo_is_held_and_read_in_order() {
        let mut p = port();
        let input: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(p.enqueue_input(&input), 200);
        let mut got = Vec::new();
        while read(&mut p, 5) & 1 == 1 {
            got.push(read(&mut p, 0));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn input_is_bounded() {
        let mut p = port();
        let big = vec![b'x'; SERIAL_FIFO + SERIAL_PENDING + 100];
        assert_eq!(p.enqueue_input(&big), SERIAL_FIFO + SERIAL_PENDING);
        assert_eq!(p.enqueue_input(b"y"), 0);
        read(&mut p, 0);
        assert_eq!(p.enqueue_input(b"yz"), 1);
    }

    #[test]
    fn receive_interrupt_follows_ier() {
        let mut p = port();
        p.write(1, &[0x01]); // IER: received data available.
        let before = p.uart.interrupt_evt().eventfd().read().unwrap_or(0);
        assert_eq!(before, 0);
        p.enqueue_input(b"a");
        assert!(p.uart.interrupt_evt().eventfd().read().unwrap() >= 1);
        p.write(1, &[0x00]);
        p.enqueue_input(b"b");
        assert!(p.uart.interrupt_evt().eventfd().read().is_err(), "no IRQ with IER off");
    }

    #[test]
    fn any_register_write_is_harmless() {
        let mut p = port();
        for off in 0..16u64 {
            for v in [0u8, 0xff, 0x80, 0x10] {
                p.write(off, &[v]);
                p.write(off, &[]);
                p.enqueue_input(b"q");
                read(&mut p, off);
            }
        }
    }
}
