//! `test=blk-loop [dev=D] [sector=S] [sectors=N] [count=R] [every=E]`: round after round,
//! writes a pattern seeded with the round number to N sectors (default 64) at S, one 4 KiB
//! request at a time, reads them back and compares; prints `blk-loop round R ok` every E
//! rounds (default 1), or `blk-loop round R FAILED ...`. `count=0` (the default) runs until the
//! VM stops. The guest side of the virtio-blk snapshot test: requests are in flight at any
//! moment the VMM pauses it.

use super::blk::{first_mismatch, Blk};
use super::{alloc, arg_u64, Buf};
use crate::serial::Line;

const SECTOR: u64 = 512;
const PER_REQUEST: u64 = 8;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;

fn transfer(blk: &mut Blk, ty: u32, sector: u64, addr: u64, round: u64) -> bool {
    let data = Buf { addr, len: (PER_REQUEST * SECTOR) as u32, device_writes: ty == T_IN };
    match blk.request(ty, sector, Some(data)) {
        Some(S_OK) => true,
        other => {
            Line::new()
                .s("blk-loop round ")
                .dec(round)
                .s(" FAILED: ")
                .s(if ty == T_IN { "read" } else { "write" })
                .s(" of sector ")
                .dec(sector)
                .s(" status ")
                .dec(other.map_or(256, u64::from))
                .print();
            false
        }
    }
}

pub fn run(cmdline: &[u8]) {
    let Some(mut blk) = Blk::open(cmdline, 16, 0) else { return };
    let start = arg_u64(cmdline, b"sector", 0);
    let sectors = (arg_u64(cmdline, b"sectors", 64) / PER_REQUEST).max(1) * PER_REQUEST;
    let count = arg_u64(cmdline, b"count", 0);
    let every = arg_u64(cmdline, b"every", 1).max(1);
    let bytes = sectors * SECTOR;
    let (Some(wbuf), Some(rbuf)) = (alloc(bytes, 4096), alloc(bytes, 4096)) else {
        return crate::serial::say("blk-loop: out of memory");
    };
    let mut round = 1u64;
    loop {
        super::blk::fill_pattern(wbuf, start * SECTOR, bytes, round);
        super::zero(rbuf, bytes);
        let mut s = 0;
        while s < sectors {
            if !transfer(&mut blk, T_OUT, start + s, wbuf + s * SECTOR, round) {
                return;
            }
            s += PER_REQUEST;
        }
        let mut s = 0;
        while s < sectors {
            if !transfer(&mut blk, T_IN, start + s, rbuf + s * SECTOR, round) {
                return;
            }
            s += PER_REQUEST;
        }
        if let Some(off) = first_mismatch(rbuf, start * SECTOR, bytes, round) {
            Line::new()
                .s("blk-loop round ")
                .dec(round)
                .s(" FAILED: byte ")
                .dec(off)
                .s(" differs")
                .print();
            return;
        }
        if round % every == 0 {
            Line::new().s("blk-loop round ").dec(round).s(" ok").print();
        }
        if count != 0 && round >= count {
            return;
        }
        round += 1;
    }
}
