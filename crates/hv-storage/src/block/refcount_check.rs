//! A check imago 0.2.6 lacks: before a qcow2 image is opened for writing, its refcount table
//! must cover every cluster of the file with a real refcount block.
//!
//! With an entry zeroed (or pointing outside the file), imago's cluster allocator recurses
//! until the stack overflows on the first guest write that allocates: a SIGSEGV no
//! `catch_unwind` contains, so one damaged image would kill the VMM process. QEMU marks such an
//! image corrupt and fails the write; hv refuses to open it writable (read-only access never
//! allocates and stays allowed).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{BlockError, Result};

/// Reads a big-endian field of `n` bytes at `at`.
fn be(f: &File, at: u64, n: usize) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b[..n], at)?;
    Ok(b[..n].iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// Refuses a qcow2 image whose refcount table does not cover the file's clusters with
/// refcount blocks that are cluster-aligned and inside the file. The header itself was already
/// checked by hv's parser.
pub(super) fn check(path: &Path) -> Result<()> {
    let bad = |reason: String| BlockError::BadHeader { path: path.to_path_buf(), reason };
    let io = |source| BlockError::Open { path: path.to_path_buf(), source };
    let f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let version = be(&f, 4, 4).map_err(io)?;
    let cluster_bits = be(&f, 20, 4).map_err(io)?;
    let refcount_order = if version >= 3 { be(&f, 96, 4).map_err(io)? } else { 4 };
    if !(9..=21).contains(&cluster_bits) || refcount_order > 6 {
        return Err(bad(format!("cluster bits {cluster_bits}, refcount order {refcount_order}")));
    }
    let cluster = 1u64 << cluster_bits;
    let per_block = (cluster * 8) >> refcount_order;
    let table = be(&f, 48, 8).map_err(io)?;
    let table_entries = be(&f, 56, 4).map_err(io)? * cluster / 8;
    let blocks = file_len.div_ceil(cluster).div_ceil(per_block);
    if blocks > table_entries {
        return Err(bad(format!(
            "the refcount table has {table_entries} entries; the file needs {blocks}"
        )));
    }
    for i in 0..blocks {
        let at = table
            .checked_add(i * 8)
            .ok_or_else(|| bad("refcount table offset overflows".into()))?;
        let entry = be(&f, at, 8)
            .map_err(|_| bad(format!("refcount table entry {i} lies past the end of the file")))?;
        if entry == 0 || entry % cluster != 0 || entry.saturating_add(cluster) > file_len {
            return Err(bad(format!(
                "refcount table entry {i} is {entry:#x}: clusters in use have no refcount block \
                 (the image is corrupt; `qemu-img check -r all` repairs it)"
            )));
        }
    }
    Ok(())
}
