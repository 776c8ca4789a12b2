//! Linux boot: loading the kernel (bzImage, ELF vmlinux, or a PVH ELF), the initrd and the
//! command line into guest memory, and writing what the kernel reads at entry (PVH
//! `hvm_start_info` or the `boot_params` zero page, each with the e820 map).
//!
//! The format is probed from the file's bytes, never from its name. An ELF with a PVH note
//! boots through PVH (32-bit entry, paging off), like QEMU's `-kernel` of a PVH image; a
//! bzImage or an ELF without the note enters 64-bit code with the zero page, like Firecracker.

pub mod bzimage;
mod fit;
pub mod params;
pub mod regs;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use hv_mem::GuestMemory;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest physical addresses of the boot data hv writes below 1 MiB.
pub mod layout {
    /// The boot GDT.
    pub const GDT_START: u64 = 0x500;
    /// The boot IDT (empty).
    pub const IDT_START: u64 = 0x580;
    /// PVH `hvm_start_info`, followed by the module list and the memory map.
    pub const PVH_INFO_START: u64 = 0x6000;
    /// The Linux zero page (`boot_params`).
    pub const ZERO_PAGE_START: u64 = 0x7000;
    /// The boot stack top for a 64-bit entry.
    pub const BOOT_STACK_TOP: u64 = 0x8ff0;
    /// Level-4 page table; the PDPT and four page directories follow at 4 KiB steps.
    pub const PML4_START: u64 = 0x9000;
    /// The kernel command line.
    pub const CMDLINE_START: u64 = 0x2_0000;
    /// Longest command line we accept (Linux x86's COMMAND_LINE_SIZE).
    pub const CMDLINE_MAX: usize = 2048;
    /// Where the kernel is loaded when the image does not say.
    pub const KERNEL_START: u64 = 0x10_0000;
}

/// Errors loading a kernel or initrd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    KernelFile {
        /// The kernel path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an ELF nor a bzImage.
    #[error("{path} is not a kernel: neither an ELF image nor a bzImage (no \"HdrS\" magic)")]
    UnknownFormat {
        /// The kernel path.
        path: PathBuf,
    },
    /// The loader rejected the image (corrupt, truncated, or does not fit in guest RAM).
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A part of the kernel image would lie outside guest RAM (past its end, or in a hole).
    #[error("kernel {path} does not fit in guest RAM: {size:#x} bytes at {start:#x}")]
    KernelOutsideRam {
        /// The kernel path.
        path: PathBuf,
        /// Guest physical address of the part.
        start: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// The image's headers contradict themselves.
    #[error("kernel {path} is malformed: {reason}")]
    KernelMalformed {
        /// The kernel path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The kernel's entry point is not in guest RAM.
    #[error("kernel {path} enters at {entry:#x}, outside guest RAM")]
    EntryOutsideRam {
        /// The kernel path.
        path: PathBuf,
        /// The entry address.
        entry: u64,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdFile {
        /// The initrd path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit in guest RAM below the kernel's limit.
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM")]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is too long or has a NUL byte.
    #[error("invalid kernel command line: {0}")]
    Cmdline(&'static str),
    /// Writing boot data into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The kind of kernel image, probed from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelFormat {
    /// An ELF executable (a vmlinux, or a PVH bare-metal program).
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// Probes a kernel's format from its bytes.
pub fn probe_format(path: &Path) -> Result<KernelFormat> {
    let mut f =
        File::open(path).map_err(|source| Error::KernelFile { path: path.to_owned(), source })?;
    let mut head = [0u8; 0x206];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(source) => return Err(Error::KernelFile { path: path.to_owned(), source }),
        }
    }
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(Error::UnknownFormat { path: path.to_owned() })
    }
}

/// How the loaded kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh(u64),
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64 {
        /// The 64-bit entry address.
        entry: u64,
        /// The bzImage setup header, when there was one.
        header: Option<setup_header>,
    },
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The image format.
    pub format: KernelFormat,
    /// How to enter it.
    pub entry: EntryPoint,
    /// One past the last byte the kernel occupies.
    pub end: u64,
}

/// Loads the kernel at `path` into `mem`.
///
/// Every range the kernel occupies (each ELF `PT_LOAD` segment's `p_paddr + p_memsz`, a
/// bzImage's `code32_start + init_size`) is checked against guest RAM before anything is
/// written: an image that does not fit is [`Error::KernelOutsideRam`], and
/// [`LoadedKernel::end`] is always inside RAM.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel> {
    let format = probe_format(path)?;
    let mut file =
        File::open(path).map_err(|source| Error::KernelFile { path: path.to_owned(), source })?;
    let loaded = match format {
        KernelFormat::Elf => load_elf(mem, path, &mut file, None)?,
        KernelFormat::BzImage => {
            let mut image = Vec::new();
            file.read_to_end(&mut image)
                .map_err(|source| Error::KernelFile { path: path.to_owned(), source })?;
            if let Some(vmlinux) = bzimage::extract_vmlinux(&image) {
                let header = bzimage::setup_header_of(&image);
                let mut cursor = std::io::Cursor::new(vmlinux);
                LoadedKernel { format, ..load_elf(mem, path, &mut cursor, header)? }
            } else {
                let end = fit::bzimage_end(mem, path, &image)?;
                let mut cursor = std::io::Cursor::new(image);
                let r =
                    BzImage::load(mem, None, &mut cursor, Some(GuestAddress(layout::KERNEL_START)))
                        .map_err(|source| Error::Load { path: path.to_owned(), source })?;
                // The 64-bit entry is 0x200 past the protected-mode code start.
                let entry = r.kernel_load.raw_value() + 0x200;
                LoadedKernel {
                    format,
                    entry: EntryPoint::Linux64 { entry, header: r.setup_header },
                    end: end.max(r.kernel_end),
                }
            }
        }
    };
    let entry = match loaded.entry {
        EntryPoint::Pvh(entry) | EntryPoint::Linux64 { entry, .. } => entry,
    };
    fit::check_entry(mem, path, entry)?;
    Ok(loaded)
}

/// Loads an ELF kernel (a vmlinux, a PVH image, or the vmlinux unpacked from a bzImage whose
/// setup header is `header`) at its physical addresses.
fn load_elf<R: Read + Seek + vm_memory::ReadVolatile>(
    mem: &GuestMemory,
    path: &Path,
    image: &mut R,
    header: Option<setup_header>,
) -> Result<LoadedKernel> {
    let end = fit::elf_end(mem, path, image)?;
    let r = Elf::load(mem, None, image, Some(GuestAddress(layout::KERNEL_START)))
        .map_err(|source| Error::Load { path: path.to_owned(), source })?;
    let entry = match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr.raw_value()),
        _ => EntryPoint::Linux64 { entry: r.kernel_load.raw_value(), header },
    };
    // linux-loader's end counts only segments with file bytes; ours every PT_LOAD.
    Ok(LoadedKernel { format: KernelFormat::Elf, entry, end: end.max(r.kernel_end) })
}

/// Where an initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads an initrd as high as possible in RAM below `max_addr` (and below the first RAM
/// range's end), page aligned, above `kernel_end`.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<LoadedInitrd> {
    let mut file =
        File::open(path).map_err(|source| Error::InitrdFile { path: path.to_owned(), source })?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|s| file.seek(SeekFrom::Start(0)).map(|_| s))
        .map_err(|source| Error::InitrdFile { path: path.to_owned(), source })?;
    let too_large = || Error::InitrdTooLarge { path: path.to_owned(), size };
    let low_end = mem.iter().next().map(|r| r.start_addr().raw_value() + r.len()).unwrap_or(0);
    let top = low_end.min(max_addr.saturating_add(1));
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end || size == 0 && addr == 0 {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len).map_err(|e| {
        Error::InitrdFile { path: path.to_owned(), source: std::io::Error::other(e.to_string()) }
    })?;
    Ok(LoadedInitrd { addr, size })
}

/// Writes the NUL-terminated command line at [`layout::CMDLINE_START`].
pub fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<()> {
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(Error::Cmdline("longer than 2047 bytes"));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::Cmdline("contains a NUL byte"));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|source| Error::GuestMemory { what: "command line", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_formats_from_bytes() {
        let dir = std::env::temp_dir().join(format!("hv-boot-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf = dir.join("k.bin");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01rest").unwrap();
        assert_eq!(probe_format(&elf).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzp = dir.join("vmlinuz.elf");
        std::fs::write(&bzp, &bz).unwrap();
        assert_eq!(probe_format(&bzp).unwrap(), KernelFormat::BzImage);
        let junk = dir.join("vmlinuz");
        std::fs::write(&junk, b"not a kernel").unwrap();
        assert!(matches!(probe_format(&junk), Err(Error::UnknownFormat { .. })));
        assert!(matches!(probe_format(&dir.join("missing")), Err(Error::KernelFile { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
