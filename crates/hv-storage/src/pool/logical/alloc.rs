//! Extent allocation: free runs of each PV, and first a best-fit contiguous run, else runs
//! taken in order.

use super::metadata::{SegMeta, VgMetadata};

/// A free run of extents on a PV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeRun {
    /// Index of the PV in the metadata.
    pub pv: usize,
    /// First free extent.
    pub start: u64,
    /// Number of extents.
    pub count: u64,
}

/// The free runs of the volume group, by PV then offset.
pub fn free_runs(meta: &VgMetadata) -> Vec<FreeRun> {
    let mut out = vec![];
    for (i, pv) in meta.pvs.iter().enumerate() {
        let mut used: Vec<(u64, u64)> = meta
            .lvs
            .iter()
            .flat_map(|lv| lv.segments.iter())
            .filter(|s| s.pv == i)
            .map(|s| (s.pv_start, s.count))
            .collect();
        used.sort();
        let mut next = 0;
        for (start, count) in used {
            if start > next {
                out.push(FreeRun { pv: i, start: next, count: start - next });
            }
            next = next.max(start + count);
        }
        if pv.pe_count > next {
            out.push(FreeRun { pv: i, start: next, count: pv.pe_count - next });
        }
    }
    out
}

/// Number of free extents.
pub fn free_extents(meta: &VgMetadata) -> u64 {
    free_runs(meta).iter().map(|r| r.count).sum()
}

/// Allocates `count` extents for LV extents `lv_start..`, or `None` if the VG has too few.
/// `prefer` is the PV and extent right after the LV's current end, extended in place if free.
pub fn allocate(
    meta: &VgMetadata,
    lv_start: u64,
    count: u64,
    prefer: Option<(usize, u64)>,
) -> Option<Vec<SegMeta>> {
    let mut runs = free_runs(meta);
    if runs.iter().map(|r| r.count).sum::<u64>() < count {
        return None;
    }
    if count == 0 {
        return Some(vec![]);
    }
    // Continue the last segment in place when possible.
    if let Some((pv, at)) = prefer {
        if let Some(r) = runs.iter().find(|r| r.pv == pv && r.start == at) {
            if r.count >= count {
                return Some(vec![SegMeta { lv_start, count, pv, pv_start: at }]);
            }
        }
    }
    // Best fit: the smallest single run that holds everything.
    if let Some(r) = runs.iter().filter(|r| r.count >= count).min_by_key(|r| r.count) {
        return Some(vec![SegMeta { lv_start, count, pv: r.pv, pv_start: r.start }]);
    }
    // Otherwise the largest runs first, to keep the segment count low.
    runs.sort_by_key(|r| std::cmp::Reverse(r.count));
    let mut segs = vec![];
    let mut left = count;
    let mut at = lv_start;
    for r in runs {
        let n = r.count.min(left);
        segs.push(SegMeta { lv_start: at, count: n, pv: r.pv, pv_start: r.start });
        at += n;
        left -= n;
        if left == 0 {
            break;
        }
    }
    Some(segs)
}

/// Appends `new` segments to `segs`, merging runs that continue each other on the same PV.
pub fn append(segs: &mut Vec<SegMeta>, new: Vec<SegMeta>) {
    for s in new {
        match segs.last_mut() {
            Some(l)
                if l.pv == s.pv
                    && l.pv_start + l.count == s.pv_start
                    && l.lv_start + l.count == s.lv_start =>
            {
                l.count += s.count
            }
            _ => segs.push(s),
        }
    }
}

/// Cuts `segs` down to the first `count` extents.
pub fn truncate(segs: &mut Vec<SegMeta>, count: u64) {
    segs.retain(|s| s.lv_start < count);
    if let Some(l) = segs.last_mut() {
        l.count = l.count.min(count - l.lv_start);
    }
}
