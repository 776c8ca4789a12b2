//! Dirty-page tracking: which 4 KiB guest pages changed since the last look.
//!
//! Two writers change guest RAM and each keeps its own log:
//!
//! - **the guest**, through its vCPUs: KVM logs these writes when a memslot has
//!   `KVM_MEM_LOG_DIRTY_PAGES`. hv-mem does not talk to KVM; hv-core sets the flag on each
//!   memslot (one memslot per [`GuestRam::regions`] entry) and, at each pass, calls
//!   `VmFd::get_dirty_log(slot, size)` and hands the words to
//!   [`DirtyBitmap::merge_kvm_log`]. KVM clears its log on that read.
//! - **the VMM**, through vm-memory (device emulation, DMA): every write through
//!   [`GuestRam::memory`] sets a bit in the region's `AtomicBitmap`, which KVM never sees.
//!   [`GuestRam::take_vmm_dirty`] reads and clears those bitmaps.
//!
//! A pass of a live migration or an incremental snapshot is then:
//!
//! ```
//! use hv_mem::{DirtyBitmap, GuestRam, MemoryConfig};
//! use hv_mem::vm_memory::{Bytes, GuestAddress};
//!
//! let ram = GuestRam::new(&MemoryConfig::new(16 << 20)).unwrap();
//! // A device writes into guest RAM.
//! ram.memory().write_slice(&[1u8; 10], GuestAddress(0x5000)).unwrap();
//! // hv-core reads KVM's log of the slot at guest address 0: say the guest wrote pages 0, 1.
//! let mut kvm_words = vec![0u64; (16 << 20) / 4096 / 64];
//! kvm_words[0] = 0b11;
//! let mut dirty = ram.take_vmm_dirty();
//! dirty.merge_kvm_log(0, &kvm_words).unwrap();
//! assert_eq!(dirty.runs().collect::<Vec<_>>(), vec![(0, 0x2000), (0x5000, 0x1000)]);
//! // Nothing dirty is left on the VMM side until the next write.
//! assert!(ram.take_vmm_dirty().is_empty());
//! ```
//!
//! Bitmaps are per RAM region (guest base, length), bit `i` of word `j` being page `j * 64 + i`
//! of the region, which is exactly KVM's layout of a memslot's log, so merging is a word-wise OR.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::{GuestMemory, GuestRam, PAGE_SIZE};

/// Errors from building or combining dirty bitmaps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirtyError {
    /// A region's base or length is not a multiple of 4 KiB, or the length is zero.
    #[error("dirty-tracked region {base:#x} ({len:#x} bytes) is empty or not 4 KiB aligned")]
    UnalignedRegion {
        /// Guest physical base of the region.
        base: u64,
        /// Length of the region in bytes.
        len: u64,
    },
    /// Two regions overlap, or one wraps past the end of the address space.
    #[error("dirty-tracked region {base:#x} ({len:#x} bytes) overlaps another or wraps")]
    OverlappingRegion {
        /// Guest physical base of the region.
        base: u64,
        /// Length of the region in bytes.
        len: u64,
    },
    /// No tracked region starts at this guest physical address.
    #[error("no dirty-tracked region starts at {base:#x}")]
    NoSuchRegion {
        /// The base that was asked for.
        base: u64,
    },
    /// A dirty log has a different number of 64-bit words than its region needs.
    #[error("dirty log for region {base:#x} has {got} words, expected {expected}")]
    LogSize {
        /// Guest physical base of the region.
        base: u64,
        /// Words the region needs: one bit per 4 KiB page, rounded up to 64 pages.
        expected: usize,
        /// Words given.
        got: usize,
    },
    /// Two bitmaps cover different regions and cannot be combined.
    #[error("dirty bitmaps cover different guest regions")]
    LayoutMismatch,
    /// A range to mark is not inside one tracked region.
    #[error("range {gpa:#x} ({len:#x} bytes) is not inside a dirty-tracked region")]
    OutOfRange {
        /// Guest physical start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
    },
}

/// Words of 64 pages needed for `len` bytes.
fn words_for(len: u64) -> usize {
    // A region is at most MAX_RAM (1 TiB) in practice; on 64-bit hosts this cannot truncate.
    (len / PAGE_SIZE).div_ceil(64) as usize
}

/// The dirty pages of one region.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RegionBitmap {
    base: u64,
    len: u64,
    /// Bit `i` of word `j` is page `j * 64 + i`. Bits past the last page are always clear.
    words: Vec<u64>,
}

impl RegionBitmap {
    fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }

    /// Clears the bits past the last page, which a caller's words may have set.
    fn trim(&mut self) {
        let tail = self.pages() % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// The first set bit at or after `from`.
    fn next_set(&self, from: u64) -> Option<u64> {
        let pages = self.pages();
        if from >= pages {
            return None;
        }
        let mut idx = (from / 64) as usize;
        let mut word = self.words[idx] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let bit = idx as u64 * 64 + u64::from(word.trailing_zeros());
                return (bit < pages).then_some(bit);
            }
            idx += 1;
            word = *self.words.get(idx)?;
        }
    }

    /// The first clear bit at or after `from`, or the page count when there is none.
    fn next_clear(&self, from: u64) -> u64 {
        let pages = self.pages();
        if from >= pages {
            return pages;
        }
        let mut idx = (from / 64) as usize;
        let mut word = !self.words[idx] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return (idx as u64 * 64 + u64::from(word.trailing_zeros())).min(pages);
            }
            idx += 1;
            match self.words.get(idx) {
                Some(w) => word = !w,
                None => return pages,
            }
        }
    }

    /// Coalesced runs of dirty pages as `(first page, page count)`.
    fn page_runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let start = self.next_set(at)?;
            let end = self.next_clear(start);
            at = end;
            Some((start, end - start))
        })
    }
}

/// Dirty 4 KiB pages of a guest's RAM, one bitmap per RAM region.
///
/// Build an empty one with [`DirtyBitmap::new`] or [`DirtyBitmap::for_ram`], fill it from KVM
/// ([`merge_kvm_log`](Self::merge_kvm_log)) and from the VMM's own writes
/// ([`GuestRam::take_vmm_dirty`], [`merge_atomic`](Self::merge_atomic)), then walk
/// [`pages`](Self::pages) or [`runs`](Self::runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// Sorted by base, non-overlapping.
    regions: Vec<RegionBitmap>,
}

impl DirtyBitmap {
    /// An empty bitmap over the given `(guest base, length)` regions. Each must be a non-empty
    /// multiple of 4 KiB at a 4 KiB aligned base; they must not overlap. Order does not matter.
    ///
    /// ```
    /// use hv_mem::DirtyBitmap;
    /// let mut d = DirtyBitmap::new([(0, 0x10000), (0x1_0000_0000, 0x4000)]).unwrap();
    /// d.mark(0x1_0000_1000, 1).unwrap();
    /// assert_eq!(d.pages().collect::<Vec<_>>(), vec![0x1_0000_1000]);
    /// ```
    pub fn new(regions: impl IntoIterator<Item = (u64, u64)>) -> Result<Self, DirtyError> {
        let mut out: Vec<RegionBitmap> = Vec::new();
        for (base, len) in regions {
            if len == 0 || base % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
                return Err(DirtyError::UnalignedRegion { base, len });
            }
            if base.checked_add(len).is_none() {
                return Err(DirtyError::OverlappingRegion { base, len });
            }
            out.push(RegionBitmap { base, len, words: vec![0; words_for(len)] });
        }
        out.sort_by_key(|r| r.base);
        for pair in out.windows(2) {
            if pair[0].base + pair[0].len > pair[1].base {
                return Err(DirtyError::OverlappingRegion { base: pair[1].base, len: pair[1].len });
            }
        }
        Ok(Self { regions: out })
    }

    /// A bitmap built from KVM's dirty logs, one `(slot guest base, slot length, words)` per
    /// memslot, as `VmFd::get_dirty_log` returned them. The slots must satisfy
    /// [`new`](Self::new)'s rules and each log must have one bit per 4 KiB page of its slot.
    ///
    /// ```
    /// use hv_mem::DirtyBitmap;
    /// let d = DirtyBitmap::from_kvm_logs([(0, 128 << 12, vec![1 << 63, 1])]).unwrap();
    /// assert_eq!(d.runs().collect::<Vec<_>>(), vec![(63 << 12, 2 << 12)]);
    /// ```
    pub fn from_kvm_logs(
        slots: impl IntoIterator<Item = (u64, u64, Vec<u64>)>,
    ) -> Result<Self, DirtyError> {
        let slots: Vec<_> = slots.into_iter().collect();
        let mut out = Self::new(slots.iter().map(|(base, len, _)| (*base, *len)))?;
        for (base, _, words) in &slots {
            out.merge_kvm_log(*base, words)?;
        }
        Ok(out)
    }

    /// An empty bitmap over the regions of `memory`.
    pub fn for_memory(memory: &GuestMemory) -> Self {
        Self {
            regions: memory
                .iter()
                .map(|r| RegionBitmap {
                    base: r.start_addr().0,
                    len: r.len(),
                    words: vec![0; words_for(r.len())],
                })
                .collect(),
        }
    }

    /// An empty bitmap over the RAM regions of `ram` (the regions of its KVM memslots).
    pub fn for_ram(ram: &GuestRam) -> Self {
        Self::for_memory(ram.memory())
    }

    /// The tracked regions as `(guest base, length)`, in address order.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions.iter().map(|r| (r.base, r.len))
    }

    /// The bitmap words of the region starting at `base` (bit `i` of word `j` is page
    /// `j * 64 + i` of the region), for writers that send bitmaps as they are.
    pub fn words(&self, base: u64) -> Option<&[u64]> {
        self.regions.iter().find(|r| r.base == base).map(|r| r.words.as_slice())
    }

    fn region_mut(&mut self, base: u64) -> Result<&mut RegionBitmap, DirtyError> {
        self.regions.iter_mut().find(|r| r.base == base).ok_or(DirtyError::NoSuchRegion { base })
    }

    /// ORs in KVM's dirty log of the memslot that covers the region starting at `slot_base`:
    /// the words `VmFd::get_dirty_log` returned, bit `i` of word `j` being page `j * 64 + i` of
    /// the slot. `words` must have exactly one bit per page, rounded up to a whole word.
    pub fn merge_kvm_log(&mut self, slot_base: u64, words: &[u64]) -> Result<(), DirtyError> {
        let region = self.region_mut(slot_base)?;
        if words.len() != region.words.len() {
            return Err(DirtyError::LogSize {
                base: slot_base,
                expected: region.words.len(),
                got: words.len(),
            });
        }
        for (mine, theirs) in region.words.iter_mut().zip(words) {
            *mine |= theirs;
        }
        region.trim();
        Ok(())
    }

    /// Reads and clears `bitmap`, vm-memory's record of VMM writes to the region starting at
    /// `base`, and ORs it in. The bitmap must track 4 KiB pages over the region's length, as
    /// [`GuestRam`]'s do. Each word is taken and reset atomically, so a write racing with this
    /// call is either in this bitmap or left for the next take, never lost.
    pub fn merge_atomic(&mut self, base: u64, bitmap: &AtomicBitmap) -> Result<(), DirtyError> {
        let region = self.region_mut(base)?;
        let expected = region.words.len();
        let fits = bitmap.len() as u64 == region.pages()
            && bitmap.byte_size() as u64 == region.len
            && bitmap.len().div_ceil(64) == expected;
        if !fits {
            return Err(DirtyError::LogSize { base, expected, got: bitmap.len().div_ceil(64) });
        }
        for (mine, theirs) in region.words.iter_mut().zip(bitmap.get_and_reset()) {
            *mine |= theirs;
        }
        region.trim();
        Ok(())
    }

    /// Reads and clears the VMM-write bitmaps of every region of `memory` into a new bitmap
    /// (see [`GuestRam::take_vmm_dirty`]).
    pub fn take_vmm_dirty(memory: &GuestMemory) -> Self {
        let mut out = Self::for_memory(memory);
        for (mine, region) in out.regions.iter_mut().zip(memory.iter()) {
            // Deref to the MmapRegion: its `bitmap()` is the whole AtomicBitmap, where the
            // GuestMemoryRegion method of the same name returns a slice view.
            let bitmap: &AtomicBitmap = vm_memory::MmapRegion::bitmap(region);
            for (word, theirs) in mine.words.iter_mut().zip(bitmap.get_and_reset()) {
                *word |= theirs;
            }
            mine.trim();
        }
        out
    }

    /// ORs `other` into `self`. Both must cover the same regions.
    pub fn merge(&mut self, other: &DirtyBitmap) -> Result<(), DirtyError> {
        let same = self.regions.len() == other.regions.len()
            && self
                .regions
                .iter()
                .zip(&other.regions)
                .all(|(a, b)| a.base == b.base && a.len == b.len);
        if !same {
            return Err(DirtyError::LayoutMismatch);
        }
        for (a, b) in self.regions.iter_mut().zip(&other.regions) {
            for (x, y) in a.words.iter_mut().zip(&b.words) {
                *x |= y;
            }
        }
        Ok(())
    }

    /// Marks every page that `[gpa, gpa + len)` touches as dirty. The range must lie inside
    /// one region; an empty range marks nothing.
    pub fn mark(&mut self, gpa: u64, len: u64) -> Result<(), DirtyError> {
        if len == 0 {
            return Ok(());
        }
        let out = DirtyError::OutOfRange { gpa, len };
        let last = gpa.checked_add(len - 1).ok_or(out.clone())?;
        let region =
            self.regions.iter_mut().find(|r| gpa >= r.base && last < r.base + r.len).ok_or(out)?;
        for page in (gpa - region.base) / PAGE_SIZE..=(last - region.base) / PAGE_SIZE {
            region.words[(page / 64) as usize] |= 1 << (page % 64);
        }
        Ok(())
    }

    /// Whether the page holding `gpa` is dirty. Addresses outside every region are clean.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        self.regions.iter().find(|r| gpa >= r.base && gpa - r.base < r.len).is_some_and(|r| {
            let page = (gpa - r.base) / PAGE_SIZE;
            r.words[(page / 64) as usize] & (1 << (page % 64)) != 0
        })
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        for r in &mut self.regions {
            r.words.fill(0);
        }
    }

    /// Number of dirty pages.
    pub fn dirty_pages(&self) -> u64 {
        self.regions.iter().flat_map(|r| &r.words).map(|w| u64::from(w.count_ones())).sum()
    }

    /// Number of dirty bytes (dirty pages times 4 KiB).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_pages() * PAGE_SIZE
    }

    /// Whether no page is dirty.
    pub fn is_empty(&self) -> bool {
        self.regions.iter().all(|r| r.words.iter().all(|&w| w == 0))
    }

    /// Guest physical address of each dirty page, ascending.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions.iter().flat_map(|r| {
            r.page_runs().flat_map(move |(first, count)| {
                (first..first + count).map(move |page| r.base + page * PAGE_SIZE)
            })
        })
    }

    /// Dirty memory as coalesced `(guest physical address, length in bytes)` runs, ascending.
    /// A run never spans two regions, so each run is contiguous in one host mapping too.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions.iter().flat_map(|r| {
            r.page_runs().map(move |(first, count)| (r.base + first * PAGE_SIZE, count * PAGE_SIZE))
        })
    }
}

impl GuestRam {
    /// Reads and clears the record of writes the VMM made through [`GuestRam::memory`] (and
    /// its clones), one bit per 4 KiB page. Guest writes are not in it: they are in KVM's
    /// log, which hv-core merges with [`DirtyBitmap::merge_kvm_log`].
    pub fn take_vmm_dirty(&self) -> DirtyBitmap {
        DirtyBitmap::take_vmm_dirty(self.memory())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryConfig;
    use proptest::prelude::*;
    use std::num::NonZeroUsize;
    use vm_memory::{Bytes, GuestAddress};

    const G: u64 = 0x1_0000_0000;

    #[test]
    fn regions_are_validated() {
        assert!(matches!(DirtyBitmap::new([(0, 0)]), Err(DirtyError::UnalignedRegion { .. })));
        assert!(matches!(DirtyBitmap::new([(1, 4096)]), Err(DirtyError::UnalignedRegion { .. })));
        assert!(matches!(DirtyBitmap::new([(0, 4097)]), Err(DirtyError::UnalignedRegion { .. })));
        assert!(matches!(
            DirtyBitmap::new([(0x2000, 0x2000), (0, 0x3000)]),
            Err(DirtyError::OverlappingRegion { base: 0x2000, .. })
        ));
        assert!(matches!(
            DirtyBitmap::new([(u64::MAX - 0xfff, 0x2000)]),
            Err(DirtyError::UnalignedRegion { .. }) | Err(DirtyError::OverlappingRegion { .. })
        ));
        let d = DirtyBitmap::new([(G, 0x1000), (0, 0x1000)]).unwrap();
        assert_eq!(d.regions().collect::<Vec<_>>(), vec![(0, 0x1000), (G, 0x1000)]);
    }

    #[test]
    fn kvm_log_bits_map_to_pages_and_runs_coalesce() {
        // 130 pages: three words, the last one partial.
        let mut d = DirtyBitmap::new([(0x10_0000, 130 * PAGE_SIZE), (G, 64 * PAGE_SIZE)]).unwrap();
        let mut words = vec![0u64; 3];
        words[0] = 0b1011 | (1 << 63);
        words[1] = 0b1 | (1 << 10);
        words[2] = u64::MAX; // bits past page 129 must be dropped
        d.merge_kvm_log(0x10_0000, &words).unwrap();
        d.merge_kvm_log(G, &[1 << 5]).unwrap();
        let base = 0x10_0000;
        let p = |n: u64| base + n * PAGE_SIZE;
        assert_eq!(
            d.pages().collect::<Vec<_>>(),
            vec![p(0), p(1), p(3), p(63), p(64), p(74), p(128), p(129), G + 5 * PAGE_SIZE]
        );
        assert_eq!(
            d.runs().collect::<Vec<_>>(),
            vec![
                (p(0), 2 * PAGE_SIZE),
                (p(3), PAGE_SIZE),
                (p(63), 2 * PAGE_SIZE),
                (p(74), PAGE_SIZE),
                (p(128), 2 * PAGE_SIZE),
                (G + 5 * PAGE_SIZE, PAGE_SIZE),
            ]
        );
        assert_eq!(d.dirty_pages(), 9);
        assert_eq!(d.dirty_bytes(), 9 * PAGE_SIZE);
        assert!(d.is_dirty(p(63) + 17));
        assert!(!d.is_dirty(p(2)));
        assert!(!d.is_dirty(0));
    }

    #[test]
    fn kvm_log_of_wrong_size_or_slot_is_refused() {
        let mut d = DirtyBitmap::new([(0, 128 * PAGE_SIZE)]).unwrap();
        assert_eq!(
            d.merge_kvm_log(0, &[0]),
            Err(DirtyError::LogSize { base: 0, expected: 2, got: 1 })
        );
        assert_eq!(
            d.merge_kvm_log(0x1000, &[0, 0]),
            Err(DirtyError::NoSuchRegion { base: 0x1000 })
        );
        assert!(matches!(
            DirtyBitmap::from_kvm_logs([(0, 64 * PAGE_SIZE, vec![0, 0])]),
            Err(DirtyError::LogSize { .. })
        ));
        let d =
            DirtyBitmap::from_kvm_logs([(G, 64 * PAGE_SIZE, vec![6]), (0, 4096, vec![1])]).unwrap();
        assert_eq!(d.words(G), Some(&[6u64][..]));
        assert_eq!(d.words(0), Some(&[1u64][..]));
        assert_eq!(d.words(0x1000), None);
        assert_eq!(d.dirty_pages(), 3);
    }

    #[test]
    fn full_region_is_one_run() {
        let mut d = DirtyBitmap::new([(0, 200 * PAGE_SIZE)]).unwrap();
        d.merge_kvm_log(0, &[u64::MAX; 4]).unwrap();
        assert_eq!(d.runs().collect::<Vec<_>>(), vec![(0, 200 * PAGE_SIZE)]);
        assert_eq!(d.dirty_pages(), 200);
        d.clear();
        assert!(d.is_empty());
        assert_eq!(d.runs().count(), 0);
    }

    #[test]
    fn merge_ors_and_checks_layout() {
        let mut a = DirtyBitmap::new([(0, 64 * PAGE_SIZE)]).unwrap();
        let mut b = a.clone();
        a.mark(0, 1).unwrap();
        b.mark(PAGE_SIZE, PAGE_SIZE + 1).unwrap(); // pages 1 and 2
        a.merge(&b).unwrap();
        assert_eq!(a.runs().collect::<Vec<_>>(), vec![(0, 3 * PAGE_SIZE)]);
        let other = DirtyBitmap::new([(0, 128 * PAGE_SIZE)]).unwrap();
        assert_eq!(a.merge(&other), Err(DirtyError::LayoutMismatch));
    }

    #[test]
    fn mark_refuses_ranges_outside_one_region() {
        let mut d = DirtyBitmap::new([(0, 0x4000), (0x4000, 0x4000)]).unwrap();
        assert!(matches!(d.mark(0x3000, 0x2000), Err(DirtyError::OutOfRange { .. })));
        assert!(matches!(d.mark(0x8000, 1), Err(DirtyError::OutOfRange { .. })));
        assert!(matches!(d.mark(u64::MAX, 2), Err(DirtyError::OutOfRange { .. })));
        d.mark(0x9000, 0).unwrap();
        assert!(d.is_empty());
    }

    #[test]
    fn vmm_writes_are_taken_and_reset() {
        let ram = GuestRam::new(&MemoryConfig::new(4 << 20)).unwrap();
        assert!(ram.take_vmm_dirty().is_empty());
        ram.memory().write_slice(&[7u8; 0x1800], GuestAddress(0x3800)).unwrap();
        ram.memory().write_obj(1u64, GuestAddress(0x20_0000)).unwrap();
        let clone = ram.memory().clone();
        clone.write_obj(1u8, GuestAddress(0x3f_f000)).unwrap();
        let d = ram.take_vmm_dirty();
        assert_eq!(
            d.runs().collect::<Vec<_>>(),
            vec![(0x3000, 0x2000), (0x20_0000, 0x1000), (0x3f_f000, 0x1000)]
        );
        assert!(ram.take_vmm_dirty().is_empty(), "take must reset");
        // Reads do not dirty.
        let _: u64 = ram.memory().read_obj(GuestAddress(0x9000)).unwrap();
        assert!(ram.take_vmm_dirty().is_empty());
    }

    #[test]
    fn vmm_and_kvm_logs_combine() {
        let ram = GuestRam::new(&MemoryConfig::new(4 << 20)).unwrap();
        ram.memory().write_obj(1u8, GuestAddress(0x1000)).unwrap();
        let mut d = ram.take_vmm_dirty();
        let mut words = vec![0u64; 16];
        words[0] = 0b101;
        d.merge_kvm_log(0, &words).unwrap();
        assert_eq!(d.runs().collect::<Vec<_>>(), vec![(0, 0x3000)]);
        assert_eq!(DirtyBitmap::for_ram(&ram).regions().collect::<Vec<_>>(), vec![(0, 4 << 20)]);
    }

    #[test]
    fn merge_atomic_checks_page_size_and_length() {
        let mut d = DirtyBitmap::new([(0, 64 * PAGE_SIZE)]).unwrap();
        let wrong = AtomicBitmap::new(64 * 4096, NonZeroUsize::new(8192).unwrap());
        assert!(matches!(d.merge_atomic(0, &wrong), Err(DirtyError::LogSize { .. })));
        let right = AtomicBitmap::new(64 * 4096, NonZeroUsize::new(4096).unwrap());
        right.set_addr_range(4096 * 3, 4096 * 2);
        d.merge_atomic(0, &right).unwrap();
        assert_eq!(d.runs().collect::<Vec<_>>(), vec![(3 * PAGE_SIZE, 2 * PAGE_SIZE)]);
        assert!(!right.is_bit_set(3));
    }

    proptest! {
        #[test]
        fn runs_and_pages_agree_with_the_bits(
            pages in 1u64..300,
            raw in proptest::collection::vec(any::<u64>(), 5),
        ) {
            let mut d = DirtyBitmap::new([(G, pages * PAGE_SIZE)]).unwrap();
            let words = &raw[..(pages as usize).div_ceil(64)];
            d.merge_kvm_log(G, words).unwrap();
            let expected: Vec<u64> = (0..pages)
                .filter(|&p| words[(p / 64) as usize] & (1 << (p % 64)) != 0)
                .map(|p| G + p * PAGE_SIZE)
                .collect();
            prop_assert_eq!(d.pages().collect::<Vec<_>>(), expected.clone());
            prop_assert_eq!(d.dirty_pages(), expected.len() as u64);
            let runs: Vec<(u64, u64)> = d.runs().collect();
            let from_runs: Vec<u64> = runs
                .iter()
                .flat_map(|&(gpa, len)| (0..len / PAGE_SIZE).map(move |i| gpa + i * PAGE_SIZE))
                .collect();
            prop_assert_eq!(from_runs, expected);
            for pair in runs.windows(2) {
                prop_assert!(pair[0].0 + pair[0].1 < pair[1].0, "runs must be maximal");
            }
        }
    }
}
