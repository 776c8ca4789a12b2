//! The migration wire protocol: framing, frame kinds, reading and writing.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::Error;
use crate::snapshot::SnapshotConfig;

/// "HVMG", little-endian, at the start of every frame.
pub const MAGIC: u32 = u32::from_le_bytes(*b"HVMG");
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Frame header: magic (4), kind (1), reserved (3), payload length (8).
pub const HEADER_LEN: usize = 16;
/// Largest memory run per frame.
pub const MAX_RUN: usize = 4 << 20;
/// Largest JSON or text payload.
pub const MAX_DOC: u64 = 64 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Source to destination, first: JSON [`Hello`].
    Hello = 1,
    /// Destination to source: it can build the machine; memory may come.
    Ready = 2,
    /// Source to destination: guest-physical address (u64 LE) then page-aligned bytes.
    Memory = 3,
    /// Source to destination, last: JSON [`crate::snapshot::MachineState`] of the paused VM.
    State = 4,
    /// Destination to source: the VM runs there; the source may end.
    Complete = 5,
    /// Either way: UTF-8 reason; the sender gives up.
    Error = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Memory,
            4 => Kind::State,
            5 => Kind::Complete,
            6 => Kind::Error,
            _ => return None,
        })
    }
}

/// The opening of a migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The machine to build.
    pub config: SnapshotConfig,
    /// Whether the VM was running (the destination resumes it) or paused.
    pub running: bool,
}

/// A frame's header, built for writing.
pub fn header(kind: Kind, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Writes one frame (header and payload in one write, so small frames go out in one segment).
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header(kind, payload.len() as u64));
    buf.extend_from_slice(payload);
    w.write_all(&buf).map_err(|source| Error::Io { during: "sending a frame", source })?;
    w.flush().map_err(|source| Error::Io { during: "sending a frame", source })
}

/// Writes a JSON frame.
pub fn write_json<T: Serialize>(w: &mut impl Write, kind: Kind, v: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Encode(e.to_string()))?;
    write_frame(w, kind, &bytes)
}

/// Reads one frame: its kind and payload. Bad magic, an unknown kind or an oversized payload
/// are errors before the payload is read.
pub fn read_frame(r: &mut impl Read) -> Result<(Kind, Vec<u8>), Error> {
    let mut payload = Vec::new();
    let kind = read_frame_into(r, &mut payload)?;
    Ok((kind, payload))
}

/// Reads one frame into `payload` (its old contents replaced, its allocation reused, so a
/// stream of memory frames costs no allocation per frame) and returns its kind. Checks as
/// [`read_frame`].
pub fn read_frame_into(r: &mut impl Read, payload: &mut Vec<u8>) -> Result<Kind, Error> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).map_err(|source| Error::Io { during: "receiving a frame", source })?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(Error::BadMagic(magic));
    }
    let kind = Kind::from_u8(h[4]).ok_or(Error::UnknownFrame(h[4]))?;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&h[8..]);
    let len = u64::from_le_bytes(len_bytes);
    let max = if kind == Kind::Memory { (MAX_RUN + 8) as u64 } else { MAX_DOC };
    if len > max {
        return Err(Error::FrameTooLarge { kind, len });
    }
    payload.resize(len as usize, 0);
    r.read_exact(payload).map_err(|source| Error::Io { during: "receiving a frame", source })?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Error, b"no").unwrap();
        let (k, p) = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!((k, p.as_slice()), (Kind::Error, &b"no"[..]));
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(read_frame(&mut bad.as_slice()), Err(Error::BadMagic(_))));
        let mut bad = buf.clone();
        bad[4] = 99;
        assert!(matches!(read_frame(&mut bad.as_slice()), Err(Error::UnknownFrame(99))));
        let huge = header(Kind::Memory, u64::MAX);
        assert!(matches!(
            read_frame(&mut huge.as_slice()),
            Err(Error::FrameTooLarge { kind: Kind::Memory, .. })
        ));
        assert!(matches!(read_frame(&mut &buf[..10]), Err(Error::Io { .. })));
    }
}
