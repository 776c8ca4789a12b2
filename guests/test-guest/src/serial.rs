//! COM1 output, polled, one whole line at a time under a spinlock (APs print too).
//!
//! Every line the guest prints starts with `hvtest: ` and ends with `\n`: build one with
//! [`Line`] and [`Line::print`] it.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::io::{inb, outb};

const COM1: u16 = 0x3f8;
/// Line status register; bit 5 = transmit holding register empty.
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 0x20;

/// The prefix of every line.
pub const PREFIX: &str = "hvtest: ";

/// A test-and-set spinlock (`xchg`, no `cmpxchg16b`).
pub struct SpinLock(AtomicBool);

impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinLock(AtomicBool::new(false))
    }

    /// Spins until the lock is ours.
    pub fn lock(&self) {
        while self.0.swap(true, Ordering::Acquire) {
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Releases the lock.
    pub fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

static SERIAL_LOCK: SpinLock = SpinLock::new();

fn put_byte(b: u8) {
    while inb(LSR) & LSR_THRE == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// Writes raw bytes under the serial lock.
pub fn write_bytes(bytes: &[u8]) {
    SERIAL_LOCK.lock();
    for &b in bytes {
        put_byte(b);
    }
    SERIAL_LOCK.unlock();
}

/// One output line, built in a fixed buffer (longer lines are cut) and printed at once.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// A new line holding the `hvtest: ` prefix.
    pub fn new() -> Self {
        let mut line = Line { buf: [0; 256], len: 0 };
        line.s(PREFIX);
        line
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        // Keep one byte for the newline.
        let room = self.buf.len() - 1 - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    /// Appends a string.
    pub fn s(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends a number in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&digits[i..])
    }

    /// Appends `0x` and a number in lowercase hex, at least `width` digits.
    pub fn hex(&mut self, v: u64, width: usize) -> &mut Self {
        let mut digits = [0u8; 16];
        let mut n = 0;
        let mut rest = v;
        while n < 16 && (rest != 0 || n < width.max(1)) {
            digits[15 - n] = b"0123456789abcdef"[(rest & 0xf) as usize];
            rest >>= 4;
            n += 1;
        }
        self.s("0x").bytes(&digits[16 - n..])
    }

    /// Prints the line (with its newline).
    pub fn print(&mut self) {
        self.buf[self.len] = b'\n';
        write_bytes(&self.buf[..self.len + 1]);
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.s(s);
        Ok(())
    }
}

/// Prints `hvtest: <s>`.
pub fn say(s: &str) {
    Line::new().s(s).print();
}
