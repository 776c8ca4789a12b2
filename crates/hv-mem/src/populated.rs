//! Which parts of guest RAM can hold anything but zeroes.
//!
//! A page of anonymous private memory that the kernel has never populated (not present and
//! not swapped out) reads as zeroes. A migration's first full pass, or anything else that
//! copies RAM and skips zeroes, only needs to look at the rest: for a 256 MiB guest that
//! has touched 20 MiB, that is 20 MiB scanned instead of 256 (and no zero-page faults for
//! the 236 MiB never touched). The kernel says which pages are populated in
//! `/proc/self/pagemap` (`Documentation/admin-guide/mm/pagemap.rst`): one little-endian u64
//! per virtual page, bit 63 "present", bit 62 "swapped" (also set for migration entries).
//!
//! Only anonymous private RAM is narrowed so: a memfd's pages or a file's can hold data
//! while not mapped here, so those regions are reported whole, as is any region whose
//! pagemap cannot be read.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::{GuestRam, PAGE_SIZE};

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// Pagemap entries read per `pread` (512 KiB covers 256 MiB of RAM).
const BATCH: usize = 64 * 1024;

impl GuestRam {
    /// Guest-physical runs `(gpa, len)`, page-aligned and in address order, outside which
    /// every byte of RAM is zero right now. Pages written after this call are not covered:
    /// the caller tracks those (the dirty log) as it does for any page.
    pub fn populated_runs(&self) -> Vec<(u64, u64)> {
        let whole = || self.memory().iter().map(|r| (r.start_addr().0, r.len())).collect();
        if self.memfd().is_some() || self.is_file_mapped() {
            return whole();
        }
        let Ok(pagemap) = File::open("/proc/self/pagemap") else {
            return whole();
        };
        let mut runs = Vec::new();
        for region in self.memory().iter() {
            let (gpa, len) = (region.start_addr().0, region.len());
            let host = region.as_ptr() as u64;
            if populated(&pagemap, host, len, |off, n| push_run(&mut runs, gpa + off, n)).is_err() {
                // Unreadable: keep what was found and add the whole region; runs may overlap
                // and that only costs a second look at the same pages.
                runs.retain(|&(start, _)| start < gpa);
                runs.push((gpa, len));
            }
        }
        runs
    }
}

impl GuestRam {
    /// Reads the guest-physical `runs` (inside RAM, page-aligned) through one reused buffer of
    /// at most `max_chunk` bytes and calls `f(gpa, bytes)` for each piece, in order. A run
    /// outside RAM stops the walk with `outside(gpa, len)`. The buffer grows to the largest
    /// piece only: a migration's last pass over a few dirty pages (while the guest is paused)
    /// must not pay for zeroing megabytes it will not use.
    pub fn for_each_chunk<E>(
        &self,
        runs: impl IntoIterator<Item = (u64, u64)>,
        max_chunk: usize,
        outside: impl Fn(u64, usize) -> E,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let max_chunk = (max_chunk / PAGE_SIZE as usize).max(1) * PAGE_SIZE as usize;
        let mut buf = Vec::new();
        for (start, len) in runs {
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(max_chunk as u64) as usize;
                let gpa = start + off;
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                let chunk = &mut buf[..n];
                self.memory().read_slice(chunk, GuestAddress(gpa)).map_err(|_| outside(gpa, n))?;
                f(gpa, chunk)?;
                off += n as u64;
            }
        }
        Ok(())
    }

    /// Calls `send(gpa, bytes)` for every run of RAM pages that are not all zero, in address
    /// order, each run at most `max_run` bytes (rounded down to whole pages, at least one).
    /// Only the populated pages ([`populated_runs`](Self::populated_runs)) are read, so a
    /// large guest that touched little costs little. Pages written while this runs may or
    /// may not be seen: the caller tracks them (the dirty log).
    pub fn for_each_nonzero_run<E>(
        &self,
        max_run: usize,
        outside: impl Fn(u64, usize) -> E,
        mut send: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        const PAGE: usize = PAGE_SIZE as usize;
        self.for_each_chunk(self.populated_runs(), max_run, outside, |gpa, chunk| {
            let pages = chunk.len() / PAGE;
            let zero = |p: usize| is_zero(&chunk[p * PAGE..(p + 1) * PAGE]);
            let mut page = 0;
            while page < pages {
                if zero(page) {
                    page += 1;
                    continue;
                }
                let first = page;
                while page < pages && !zero(page) {
                    page += 1;
                }
                send(gpa + (first * PAGE) as u64, &chunk[first * PAGE..page * PAGE])?;
            }
            Ok(())
        })
    }
}

/// Whether `bytes` are all zero: whole words OR-ed together without an early exit, which the
/// compiler vectorizes (a byte-wise `any` runs at about a byte per cycle, ~100 ms over
/// 256 MiB).
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(16);
    let mut acc = 0u128;
    for w in &mut words {
        let mut b = [0u8; 16];
        b.copy_from_slice(w);
        acc |= u128::from_ne_bytes(b);
    }
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

/// Appends a run, joining it to the last one when they touch.
fn push_run(runs: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    match runs.last_mut() {
        Some((s, l)) if *s + *l == start => *l += len,
        _ => runs.push((start, len)),
    }
}

/// Calls `found(offset, len)` for each run of present or swapped pages of the `len` bytes
/// mapped at host address `host`.
fn populated(
    pagemap: &File,
    host: u64,
    len: u64,
    mut found: impl FnMut(u64, u64),
) -> std::io::Result<()> {
    let pages = len / PAGE_SIZE;
    let first = host / PAGE_SIZE;
    let mut buf = vec![0u8; BATCH * 8];
    let mut run: Option<u64> = None;
    let mut page = 0u64;
    while page < pages {
        let n = (pages - page).min(BATCH as u64) as usize;
        let bytes = &mut buf[..n * 8];
        pagemap.read_exact_at(bytes, (first + page) * 8)?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let mut e = [0u8; 8];
            e.copy_from_slice(entry);
            let used = u64::from_le_bytes(e) & (PRESENT | SWAPPED) != 0;
            let at = page + i as u64;
            match (used, run) {
                (true, None) => run = Some(at),
                (false, Some(start)) => {
                    found(start * PAGE_SIZE, (at - start) * PAGE_SIZE);
                    run = None;
                }
                _ => {}
            }
        }
        page += n as u64;
    }
    if let Some(start) = run {
        found(start * PAGE_SIZE, (pages - start) * PAGE_SIZE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use crate::{Backing, GuestRam, MemoryConfig};

    fn ram(backing: Backing) -> GuestRam {
        GuestRam::new(&MemoryConfig::new(16 << 20).backing(backing)).unwrap()
    }

    #[test]
    fn fresh_anonymous_ram_has_nothing_populated_and_writes_show_up_page_aligned() {
        let ram = ram(Backing::Anonymous);
        assert_eq!(ram.populated_runs(), vec![]);
        let mem = ram.memory();
        mem.write_slice(&[1u8; 10], GuestAddress(0x5000 + 100)).unwrap();
        mem.write_slice(&[2u8; 5000], GuestAddress(0x20_0000 - 10)).unwrap();
        let runs = ram.populated_runs();
        let covered = |gpa: u64| runs.iter().any(|&(s, l)| s <= gpa && gpa < s + l);
        for page in [0x5000, 0x1f_f000, 0x20_0000, 0x20_1000] {
            assert!(covered(page), "{page:#x} written but not reported in {runs:x?}");
        }
        assert!(runs.iter().all(|&(s, l)| s % 4096 == 0 && l % 4096 == 0));
        // Without transparent huge pages exactly the written pages; with them (the host's
        // "always" setting) at most the two 2 MiB pages around them.
        let total: u64 = runs.iter().map(|r| r.1).sum();
        assert!(total == 0x4000 || total <= 6 << 20, "{runs:x?}");
        assert!(!covered(0x10_0000) || total > 0x4000, "{runs:x?}");
        // Reading a page maps the zero page: present, so reported (never missed).
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(0x9000)).unwrap();
        assert!(ram.populated_runs().contains(&(0x9000, 0x1000)));
    }

    #[test]
    fn nonzero_runs_are_exactly_the_pages_with_data() {
        let ram = ram(Backing::Memfd);
        let mem = ram.memory();
        mem.write_slice(&[7u8; 3 * 4096], GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&[1u8], GuestAddress(0x10_4fff)).unwrap();
        mem.write_slice(&[0u8; 4096], GuestAddress(0x20_0000)).unwrap();
        let mut seen = Vec::new();
        ram.for_each_nonzero_run(
            2 * 4096,
            |_, _| (),
            |gpa, data| {
                assert!(data.iter().any(|&b| b != 0));
                seen.push((gpa, data.len()));
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![(0x10_0000, 0x2000), (0x10_2000, 0x1000), (0x10_4000, 0x1000)]);
        assert!(super::is_zero(&[0u8; 4096]));
        assert!(!super::is_zero(&[0, 0, 0, 1]));
        let mut page = [0u8; 4096];
        page[4095] = 1;
        assert!(!super::is_zero(&page));
    }

    #[test]
    fn memfd_ram_is_reported_whole() {
        let ram = ram(Backing::Memfd);
        let total: u64 = ram.populated_runs().iter().map(|r| r.1).sum();
        assert_eq!(total, ram.layout().ram_bytes());
    }
}
