//! hv-mem: guest memory for hv virtual machines, on `vm-memory`.
//!
//! - [`layout`]: where RAM, the 32-bit MMIO hole, ACPI tables and boot data sit in the guest
//!   physical address space of an x86_64 machine.
//! - [`backing`]: what host memory backs guest RAM (anonymous, memfd, hugetlbfs, THP, KSM) and
//!   the [`GuestRam`] that owns the mappings.
//! - [`dirty`]: which guest pages changed, from KVM's log and the VMM's own writes.
//! - [`translate`]: guest virtual to guest physical (walking the guest's page tables) to host.
//! - [`accounting`]: how much of the guest's RAM is reserved and how much is resident.
//!
//! ```
//! use hv_mem::{GuestRam, MemoryConfig};
//! let ram = GuestRam::new(&MemoryConfig::new(64 << 20)).unwrap();
//! assert_eq!(ram.layout().ram_bytes(), 64 << 20);
//! ```

pub mod accounting;
pub mod backing;
pub mod dirty;
pub mod layout;
pub mod populated;
pub mod translate;

pub use accounting::{AccountingError, KsmStats, MemoryUsage};
pub use backing::{Backing, GuestRam, HugePageSize, MemoryConfig};
pub use dirty::{DirtyBitmap, DirtyError};
pub use layout::{MemoryLayout, RamRange, ReservedKind, ReservedRange};
pub use translate::{PageSize, PagingMode, TranslateError, Translation, Translator};

/// The guest memory type every hv crate uses: mmap-backed regions with a dirty bitmap that
/// records writes made by the VMM itself (device DMA), beside KVM's log of guest writes.
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Re-export of the `vm-memory` crate so embedders use the same version.
pub use vm_memory;

/// Errors from building guest memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The requested RAM size is zero, not page aligned, or too large for the layout.
    #[error("invalid guest RAM size {size:#x}: {reason}")]
    InvalidSize {
        /// The size asked for, in bytes.
        size: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Creating the host backing (memfd, hugetlb) failed.
    #[error("cannot create {what} backing for guest RAM: {source}")]
    Backing {
        /// Which backing was being created.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping a region into the VMM failed.
    #[error("cannot map guest RAM region at {gpa:#x} ({len:#x} bytes): {source}")]
    Mmap {
        /// Guest physical start of the region.
        gpa: u64,
        /// Length of the region.
        len: u64,
        /// The mapping error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions could not be assembled into one guest address space.
    #[error("cannot assemble guest memory: {0}")]
    Collection(#[from] vm_memory::GuestRegionCollectionError),
    /// A RAM image file (a snapshot's memory) does not have the size of the RAM it backs.
    #[error("RAM image file holds {actual} bytes, the guest's RAM needs exactly {expected}")]
    ImageSize {
        /// Bytes the RAM layout needs.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// An `madvise` hint (THP, KSM) was refused by the host kernel.
    #[error("madvise({advice}) on guest RAM failed: {source}")]
    Madvise {
        /// The advice name.
        advice: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Size of a guest page (x86_64 base pages).
pub const PAGE_SIZE: u64 = 4096;
