//! Host backing for guest RAM and the [`GuestRam`] that owns it.
//!
//! Anonymous private memory is the default (what Firecracker uses). A memfd makes the RAM
//! shareable with another process (a vhost-user backend, a snapshot writer); hugetlb pages
//! come from a hugetlb memfd, so no hugetlbfs mount is needed. Transparent huge pages and
//! KSM page sharing are `madvise` hints on top of any backing.

use std::fs::File;
use std::os::fd::OwnedFd;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::layout::MemoryLayout;
use crate::{Error, GuestMemory, Result, PAGE_SIZE};

/// Size of the huge pages backing guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HugePageSize {
    /// 2 MiB pages.
    Size2M,
    /// 1 GiB pages.
    Size1G,
}

impl HugePageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            HugePageSize::Size2M => 2 << 20,
            HugePageSize::Size1G => 1 << 30,
        }
    }
}

/// What host memory backs guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backing {
    /// Private anonymous memory (the default).
    #[default]
    Anonymous,
    /// A memfd mapped shared, so another process can map the same pages.
    Memfd,
    /// A hugetlb memfd with pages of the given size (the host must have them reserved in
    /// `/proc/sys/vm/nr_hugepages` or the hugepages sysfs).
    HugeTlb(HugePageSize),
}

/// How to build a guest's RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// RAM size in bytes.
    pub size: u64,
    /// Host backing.
    pub backing: Backing,
    /// Ask for transparent huge pages (`MADV_HUGEPAGE`).
    pub transparent_hugepages: bool,
    /// Offer the pages to KSM for sharing between guests (`MADV_MERGEABLE`).
    pub mergeable: bool,
}

impl MemoryConfig {
    /// Anonymous RAM of `size` bytes with no hints.
    pub fn new(size: u64) -> Self {
        Self { size, backing: Backing::Anonymous, transparent_hugepages: false, mergeable: false }
    }

    /// Sets the backing.
    pub fn backing(mut self, backing: Backing) -> Self {
        self.backing = backing;
        self
    }

    /// Asks for transparent huge pages.
    pub fn transparent_hugepages(mut self, on: bool) -> Self {
        self.transparent_hugepages = on;
        self
    }

    /// Offers the RAM to KSM.
    pub fn mergeable(mut self, on: bool) -> Self {
        self.mergeable = on;
        self
    }
}

/// A guest's RAM: the layout, the host mappings, and the backing file when there is one.
#[derive(Debug)]
pub struct GuestRam {
    layout: MemoryLayout,
    memory: GuestMemory,
    config: MemoryConfig,
    memfd: Option<File>,
    from_file: bool,
}

impl GuestRam {
    /// Lays out and maps RAM as `config` says.
    pub fn new(config: &MemoryConfig) -> Result<Self> {
        let layout = MemoryLayout::x86_64(config.size)?;
        if let Backing::HugeTlb(size) = config.backing {
            if !config.size.is_multiple_of(size.bytes()) {
                return Err(Error::InvalidSize {
                    size: config.size,
                    reason: "hugetlb-backed RAM must be a multiple of the huge page size",
                });
            }
        }
        let memfd: Option<File> = match config.backing {
            Backing::Anonymous => None,
            Backing::Memfd => Some(new_memfd(config.size, MFdFlags::MFD_CLOEXEC, "memfd")?),
            Backing::HugeTlb(size) => {
                let page = match size {
                    HugePageSize::Size2M => MFdFlags::MFD_HUGE_2MB,
                    HugePageSize::Size1G => MFdFlags::MFD_HUGE_1GB,
                };
                let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB | page;
                Some(new_memfd(config.size, flags, "hugetlb memfd")?)
            }
        };
        Self::map(config, layout, memfd, false)
    }

    /// Maps the RAM image `file` (RAM range `i` at the sum of the lengths of ranges `0..i`, as
    /// a snapshot's memory file holds it) **private**: pages fault in from the file on first
    /// touch and guest writes go to private copies, never to the file (what Firecracker does
    /// on restore). The file must be exactly as long as the RAM `config` describes; the
    /// config's backing is ignored (hints still apply).
    pub fn from_file(config: &MemoryConfig, file: File) -> Result<Self> {
        let layout = MemoryLayout::x86_64(config.size)?;
        let len = file
            .metadata()
            .map_err(|source| Error::Backing { what: "RAM image file", source })?
            .len();
        if len != layout.ram_bytes() {
            return Err(Error::ImageSize { expected: layout.ram_bytes(), actual: len });
        }
        Self::map(config, layout, Some(file), true)
    }

    fn map(
        config: &MemoryConfig,
        layout: MemoryLayout,
        memfd: Option<File>,
        from_file: bool,
    ) -> Result<Self> {
        let mut regions = Vec::new();
        let mut file_offset = 0u64;
        for range in layout.ram() {
            let len = usize::try_from(range.len).map_err(|_| Error::InvalidSize {
                size: config.size,
                reason: "RAM range does not fit the host address space",
            })?;
            let mut builder = MmapRegionBuilder::<AtomicBitmap>::new_with_bitmap(
                len,
                AtomicBitmap::new(len, std::num::NonZeroUsize::new(PAGE_SIZE as usize).unwrap()),
            )
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
            builder = match &memfd {
                None => builder
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
                Some(file) if from_file => {
                    let file = file
                        .try_clone()
                        .map_err(|source| Error::Backing { what: "RAM image file", source })?;
                    builder
                        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                        .with_file_offset(FileOffset::new(file, file_offset))
                }
                Some(file) => {
                    let file = file
                        .try_clone()
                        .map_err(|source| Error::Backing { what: "memfd", source })?;
                    builder
                        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
                        .with_file_offset(FileOffset::new(file, file_offset))
                        .with_hugetlbfs(matches!(config.backing, Backing::HugeTlb(_)))
                }
            };
            let mapping = builder.build().map_err(|source| Error::Mmap {
                gpa: range.start,
                len: range.len,
                source,
            })?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(range.start)).ok_or(
                Error::InvalidSize {
                    size: config.size,
                    reason: "RAM range overflows the address space",
                },
            )?;
            regions.push(region);
            file_offset += range.len;
        }
        let memory = GuestMemory::from_regions(regions)?;
        let memfd = if from_file { None } else { memfd };
        let ram = Self { layout, memory, config: config.clone(), memfd, from_file };
        if config.transparent_hugepages {
            ram.advise(libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
        }
        if config.mergeable {
            ram.advise(libc::MADV_MERGEABLE, "MADV_MERGEABLE")?;
        }
        Ok(ram)
    }

    fn advise(&self, advice: libc::c_int, name: &'static str) -> Result<()> {
        for region in self.memory.iter() {
            let ptr = region.as_ptr();
            // SAFETY: the range is exactly one mapping this GuestRam owns; madvise with these
            // advices changes no memory contents.
            let ret = unsafe { libc::madvise(ptr.cast(), region.len() as usize, advice) };
            if ret != 0 {
                return Err(Error::Madvise {
                    advice: name,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// The guest physical layout.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// The mapped memory, for reads and writes by the VMM and its devices.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The configuration this RAM was built from.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// The memfd behind the RAM, when the backing is a memfd (for sharing with another
    /// process). RAM range `i` starts at the sum of the lengths of ranges `0..i` in the file.
    pub fn memfd(&self) -> Option<&File> {
        self.memfd.as_ref()
    }

    /// Whether the RAM is a private mapping of an image file ([`GuestRam::from_file`]), whose
    /// pages are read from the file on demand.
    pub fn is_file_mapped(&self) -> bool {
        self.from_file
    }

    /// `(guest physical start, length, host address)` of each region, for KVM memslots.
    pub fn regions(&self) -> Vec<(u64, u64, u64)> {
        self.memory.iter().map(|r| (r.start_addr().0, r.len(), r.as_ptr() as u64)).collect()
    }
}

fn new_memfd(size: u64, flags: MFdFlags, what: &'static str) -> Result<File> {
    let fd: OwnedFd = memfd_create(c"hv-guest-ram", flags)
        .map_err(|e| Error::Backing { what, source: e.into() })?;
    let file = File::from(fd);
    file.set_len(size).map_err(|source| Error::Backing { what, source })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn anonymous_ram_reads_back_what_was_written() {
        let ram = GuestRam::new(&MemoryConfig::new(16 << 20)).unwrap();
        ram.memory().write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(ram.memory().read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
        assert!(ram.memory().read_obj::<u32>(GuestAddress(16 << 20)).is_err());
        assert!(ram.memfd().is_none());
    }

    #[test]
    fn memfd_ram_is_visible_through_the_file() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(&MemoryConfig::new(8 << 20).backing(Backing::Memfd)).unwrap();
        ram.memory().write_slice(b"shared", GuestAddress(0x2000)).unwrap();
        let mut buf = [0u8; 6];
        ram.memfd().unwrap().read_exact_at(&mut buf, 0x2000).unwrap();
        assert_eq!(&buf, b"shared");
    }

    #[test]
    fn a_ram_image_maps_private_and_faults_in_from_the_file() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::FileExt;
        let cfg = MemoryConfig::new(8 << 20);
        let mut file = tempfile_in_tmp();
        file.set_len(8 << 20).unwrap();
        file.seek(SeekFrom::Start(0x3000)).unwrap();
        file.write_all(b"image").unwrap();
        let ram = GuestRam::from_file(&cfg, file.try_clone().unwrap()).unwrap();
        assert!(ram.is_file_mapped());
        let mut buf = [0u8; 5];
        ram.memory().read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert_eq!(&buf, b"image");
        // Guest writes stay private: the file keeps what it had.
        ram.memory().write_slice(b"guest", GuestAddress(0x3000)).unwrap();
        file.read_exact_at(&mut buf, 0x3000).unwrap();
        assert_eq!(&buf, b"image");
        // A file of another size is refused with both sizes.
        file.set_len(4 << 20).unwrap();
        match GuestRam::from_file(&cfg, file) {
            Err(Error::ImageSize { expected, actual }) => {
                assert_eq!((expected, actual), (8 << 20, 4 << 20))
            }
            other => panic!("expected ImageSize, got {other:?}"),
        }
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("hv-mem-image-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn hints_are_applied() {
        let cfg = MemoryConfig::new(8 << 20).transparent_hugepages(true).mergeable(true);
        let ram = GuestRam::new(&cfg).unwrap();
        assert_eq!(ram.regions().len(), 1);
    }

    #[test]
    fn hugetlb_size_must_be_whole_pages() {
        let cfg = MemoryConfig::new(3 << 20).backing(Backing::HugeTlb(HugePageSize::Size2M));
        assert!(matches!(GuestRam::new(&cfg), Err(Error::InvalidSize { .. })));
    }
}
