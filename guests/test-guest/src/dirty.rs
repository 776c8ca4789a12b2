//! `test=dirty`: rewrites a block of guest pages over and over and checks, before each
//! rewrite, that every page still holds what the previous round wrote. It is the guest side
//! of the snapshot/restore and live-migration tests: a page the VMM lost or saved stale shows
//! up as a `dirty mismatch` line, and the round numbers on serial show the guest running on.
//!
//! Words: `pages=N` (default 256) pages from the arena, `count=R` rounds (0, the default,
//! runs until the VM stops), `every=E` (default 16) rounds between progress lines. Each round
//! writes three words per page (the first, the last, and one that moves with the round) and
//! runs at CPL0 (emulated on PVM hosts, ~4 MIPS: 256 pages take well under a millisecond).
//!
//! Lines: `dirty pages=N at 0x<addr>`, `dirty round R ok` every E rounds, and on a bad page
//! `dirty mismatch page P word W round R got 0x<x> want 0x<y>` (then the test ends).

use crate::serial::Line;
use crate::virtio::{alloc, arg_u64};

const PAGE: u64 = 4096;
const WORDS: u64 = PAGE / 8;

fn pattern(round: u64, page: u64, word: u64) -> u64 {
    0x5a00_0000_0000_0000 ^ (round << 24) ^ (page << 9) ^ word
}

/// The words of a page a round writes.
fn words(round: u64) -> [u64; 3] {
    [0, WORDS - 1, 1 + round % (WORDS - 2)]
}

pub fn run(cmdline: &[u8]) {
    let pages = arg_u64(cmdline, b"pages", 256).max(1);
    let count = arg_u64(cmdline, b"count", 0);
    let every = arg_u64(cmdline, b"every", 16).max(1);
    let Some(base) = alloc(pages * PAGE, PAGE) else {
        Line::new().s("dirty: cannot allocate ").dec(pages).s(" pages").print();
        return;
    };
    Line::new().s("dirty pages=").dec(pages).s(" at ").hex(base, 1).print();
    let mut round = 1u64;
    loop {
        for page in 0..pages {
            let p = base + page * PAGE;
            if round > 1 {
                for w in words(round - 1) {
                    let want = pattern(round - 1, page, w);
                    // SAFETY: the page came from `alloc`: identity-mapped RAM only this test uses.
                    let got = unsafe { core::ptr::read_volatile((p + w * 8) as *const u64) };
                    if got != want {
                        Line::new()
                            .s("dirty mismatch page ")
                            .dec(page)
                            .s(" word ")
                            .dec(w)
                            .s(" round ")
                            .dec(round)
                            .s(" got ")
                            .hex(got, 16)
                            .s(" want ")
                            .hex(want, 16)
                            .print();
                        return;
                    }
                }
            }
            for w in words(round) {
                // SAFETY: as above.
                unsafe {
                    core::ptr::write_volatile((p + w * 8) as *mut u64, pattern(round, page, w))
                };
            }
        }
        if round % every == 0 {
            Line::new().s("dirty round ").dec(round).s(" ok").print();
        }
        if count != 0 && round >= count {
            return;
        }
        round += 1;
    }
}
