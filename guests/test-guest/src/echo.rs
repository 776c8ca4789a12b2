//! `test=echo [count=N]`: reads COM1's input by polling the line status register and prints
//! each line back as `hvtest: echo <line>` (a line ends at `\r` or `\n`; empty lines are
//! skipped). Ends after N lines, or at a line `quit`; without `count=` it runs until `quit`.

use crate::io::inb;
use crate::serial::{say, Line};

const COM1: u16 = 0x3f8;
/// Line status register; bit 0 = a received byte is waiting in RBR.
const LSR: u16 = COM1 + 5;
const LSR_DR: u8 = 0x01;
/// Longest line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 200;

/// Waits for the next input byte, pausing between polls so an idle guest exits rarely.
fn read_byte() -> u8 {
    loop {
        let lsr = inb(LSR);
        // An absent port reads 0xff: never treat that as data.
        if lsr != 0xff && lsr & LSR_DR != 0 {
            return inb(COM1);
        }
        for _ in 0..20_000 {
            core::hint::spin_loop();
        }
    }
}

/// `test=echo`.
pub fn run(count: Option<u64>) {
    say("echo ready");
    let mut lines = 0u64;
    let mut buf = [0u8; MAX_LINE];
    let mut len = 0usize;
    while count.is_none_or(|n| lines < n) {
        match read_byte() {
            b'\r' | b'\n' => {
                if len == 0 {
                    continue;
                }
                let line = &buf[..len];
                Line::new().s("echo ").bytes(line).print();
                len = 0;
                lines += 1;
                if line == b"quit" {
                    break;
                }
            }
            b => {
                if len < MAX_LINE {
                    buf[len] = b;
                    len += 1;
                }
            }
        }
    }
}
