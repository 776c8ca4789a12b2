//! How much host memory a guest's RAM takes.
//!
//! Guest RAM is mapped whole at start but the host only backs a page once someone touches
//! it, so the mapped size ("reserved") says little about the real cost. [`GuestRam::usage`]
//! asks the kernel which pages of each mapping are resident with `mincore(2)`: for anonymous
//! memory that is the pages faulted in and not swapped out; for a memfd (shared or hugetlb)
//! it is the file's pages in memory, wherever they are mapped.
//!
//! ```
//! use hv_mem::{GuestRam, MemoryConfig};
//! use hv_mem::vm_memory::{Bytes, GuestAddress};
//!
//! let ram = GuestRam::new(&MemoryConfig::new(16 << 20)).unwrap();
//! ram.memory().write_obj(1u8, GuestAddress(0x8000)).unwrap();
//! let usage = ram.usage().unwrap();
//! assert_eq!(usage.reserved_bytes, 16 << 20);
//! assert!(usage.resident_bytes >= 4096);
//! ```
//!
//! KSM page sharing is only known host-wide: [`KsmStats::read_host`] reads it from sysfs.

use std::path::Path;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestRam;

/// Errors from measuring memory use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountingError {
    /// `mincore(2)` refused a guest RAM mapping.
    #[error("mincore on guest RAM at {gpa:#x} ({len:#x} bytes) failed: {source}")]
    Mincore {
        /// Guest physical start of the range asked about.
        gpa: u64,
        /// Length of the range.
        len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host page size could not be read.
    #[error("cannot read the host page size: {0}")]
    PageSize(#[source] std::io::Error),
}

/// Host memory use of a guest's RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Bytes of host address space mapped for guest RAM (the guest's RAM size).
    pub reserved_bytes: u64,
    /// Bytes of guest RAM actually in host memory now.
    pub resident_bytes: u64,
    /// The host page size `resident_bytes` is counted in (`mincore` granularity).
    pub host_page_size: u64,
}

impl MemoryUsage {
    /// Resident bytes as a share of reserved bytes, 0.0 to 1.0 (0.0 for no RAM).
    pub fn resident_fraction(&self) -> f64 {
        if self.reserved_bytes == 0 {
            0.0
        } else {
            self.resident_bytes as f64 / self.reserved_bytes as f64
        }
    }
}

/// Host-wide KSM counters from `/sys/kernel/mm/ksm` (not per VM: the kernel keeps no such
/// count for one mapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KsmStats {
    /// Shared pages in use (`pages_shared`): each stands for several guest pages.
    pub pages_shared: u64,
    /// Pages that point at a shared page (`pages_sharing`): roughly the pages saved.
    pub pages_sharing: u64,
}

impl KsmStats {
    /// Reads the host's KSM counters, or `None` when KSM is not built in or the files
    /// cannot be read.
    pub fn read_host() -> Option<Self> {
        Self::read_from(Path::new("/sys/kernel/mm/ksm"))
    }

    fn read_from(dir: &Path) -> Option<Self> {
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
        };
        Some(Self { pages_shared: read("pages_shared")?, pages_sharing: read("pages_sharing")? })
    }
}

/// How much of a mapping `mincore` is asked about at once: bounds the vector to 256 KiB.
const MINCORE_CHUNK: usize = 1 << 30;

impl GuestRam {
    /// Measures how much of the guest's RAM is mapped and how much is resident in host
    /// memory, with one `mincore(2)` pass over each mapping (cost: one byte per host page
    /// visited, in 1 GiB chunks).
    pub fn usage(&self) -> Result<MemoryUsage, AccountingError> {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| AccountingError::PageSize(std::io::Error::last_os_error()))?;
        let mut usage = MemoryUsage { host_page_size: page as u64, ..MemoryUsage::default() };
        let mut vec = Vec::new();
        for region in self.memory().iter() {
            let base = region.as_ptr();
            let len = region.len() as usize;
            usage.reserved_bytes += region.len();
            let mut offset = 0;
            while offset < len {
                let chunk = MINCORE_CHUNK.min(len - offset);
                vec.clear();
                vec.resize(chunk.div_ceil(page), 0u8);
                // SAFETY: [base + offset, + chunk) lies in one mapping this GuestRam owns and
                // keeps mapped for the call; `offset` is a multiple of 1 GiB, so the start is
                // page aligned like the mapping; `vec` has one byte per page of the chunk.
                // mincore only writes `vec`.
                let ret =
                    unsafe { libc::mincore(base.add(offset).cast(), chunk, vec.as_mut_ptr()) };
                if ret != 0 {
                    return Err(AccountingError::Mincore {
                        gpa: region.start_addr().0 + offset as u64,
                        len: chunk as u64,
                        source: std::io::Error::last_os_error(),
                    });
                }
                let resident = vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
                usage.resident_bytes += resident * page as u64;
                offset += chunk;
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backing, MemoryConfig};
    use vm_memory::{Bytes, GuestAddress};

    /// Turns off THP on the mapping so a touched page costs exactly one base page.
    fn no_thp(ram: &GuestRam) {
        for (_, len, host) in ram.regions() {
            // SAFETY: the range is one mapping `ram` owns; MADV_NOHUGEPAGE changes no contents.
            let ret = unsafe {
                libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_NOHUGEPAGE)
            };
            assert_eq!(ret, 0);
        }
    }

    fn touch_and_measure(ram: &GuestRam, pages: u64) -> (MemoryUsage, MemoryUsage) {
        let before = ram.usage().unwrap();
        for i in 0..pages {
            // Spread out, one write per page.
            ram.memory().write_obj(1u8, GuestAddress(0x10_0000 + i * 3 * 4096)).unwrap();
        }
        (before, ram.usage().unwrap())
    }

    #[test]
    fn touching_pages_grows_resident_by_that_much() {
        let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
        no_thp(&ram);
        let (before, after) = touch_and_measure(&ram, 100);
        assert_eq!(before.reserved_bytes, 64 << 20);
        assert_eq!(after.reserved_bytes, 64 << 20);
        let page = after.host_page_size;
        let grown = after.resident_bytes - before.resident_bytes;
        // Exactly 100 base pages on 4 KiB hosts; allow a little for anything else touching.
        assert!(grown >= 100 * 4096, "grew {grown} bytes");
        assert!(grown <= 100 * 4096 + 8 * page, "grew {grown} bytes");
        assert!(after.resident_fraction() > 0.0 && after.resident_fraction() < 0.1);
    }

    #[test]
    fn memfd_pages_count_once_written() {
        let ram = GuestRam::new(&MemoryConfig::new(8 << 20).backing(Backing::Memfd)).unwrap();
        let (before, after) = touch_and_measure(&ram, 10);
        assert!(after.resident_bytes - before.resident_bytes >= 10 * 4096);
    }

    #[test]
    fn fresh_ram_is_mostly_not_resident() {
        let ram = GuestRam::new(&MemoryConfig::new(32 << 20)).unwrap();
        let usage = ram.usage().unwrap();
        assert_eq!(usage.reserved_bytes, 32 << 20);
        assert!(usage.resident_bytes < 4 << 20, "{usage:?}");
    }

    #[test]
    fn ksm_counters_parse() {
        let dir = std::env::temp_dir().join(format!("hv-mem-ksm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pages_shared"), "12\n").unwrap();
        assert_eq!(KsmStats::read_from(&dir), None);
        std::fs::write(dir.join("pages_sharing"), "345\n").unwrap();
        assert_eq!(
            KsmStats::read_from(&dir),
            Some(KsmStats { pages_shared: 12, pages_sharing: 345 })
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // The host's may or may not exist; it must not panic.
        let _ = KsmStats::read_host();
    }
}
