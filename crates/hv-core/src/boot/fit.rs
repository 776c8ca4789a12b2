//! Checks that a kernel image fits in guest RAM, before the loader writes any of it.
//!
//! linux-loader writes each ELF segment's file bytes through checked guest-memory accessors,
//! so a hostile image cannot reach host memory; but it takes the extent of a segment
//! (`p_paddr + p_memsz`) and a bzImage's decompression window (`code32_start + init_size`) on
//! trust, and it stops half way through an image whose later segment does not fit, after
//! writing the earlier ones. Here every range the kernel will occupy is checked against the
//! guest's RAM first, with checked arithmetic, and the kernel's end is computed from the
//! checked ranges only.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use hv_mem::GuestMemory;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::bootparam::setup_header;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use super::{Error, Result};

/// The first boot protocol version whose header has `init_size` (2.10).
const BOOT_PROTOCOL_INIT_SIZE: u16 = 0x020a;

/// Checks that `[start, start + size)` is guest RAM, and returns its end.
fn check_in_ram(mem: &GuestMemory, path: &Path, start: u64, size: u64) -> Result<u64> {
    let outside = || Error::KernelOutsideRam { path: path.to_owned(), start, size };
    let end = start.checked_add(size).ok_or_else(outside)?;
    let len = usize::try_from(size).map_err(|_| outside())?;
    if size > 0 && !mem.check_range(GuestAddress(start), len) {
        return Err(outside());
    }
    Ok(end)
}

fn malformed(path: &Path, reason: &'static str) -> Error {
    Error::KernelMalformed { path: path.to_owned(), reason }
}

/// Checks every `PT_LOAD` segment of the ELF in `image` (loaded at its physical addresses, as
/// hv loads it) and returns one past the last byte the segments occupy.
///
/// A header that cannot be read, or that linux-loader refuses, is left for linux-loader to
/// report: it refuses those before it writes anything.
pub(super) fn elf_end<R: Read + Seek>(
    mem: &GuestMemory,
    path: &Path,
    image: &mut R,
) -> Result<u64> {
    let io = |source| Error::KernelFile { path: path.to_owned(), source };
    let file_len = image.seek(SeekFrom::End(0)).map_err(io)?;
    image.rewind().map_err(io)?;
    let mut ehdr = Elf64_Ehdr::default();
    if image.read_exact(ehdr.as_mut_slice()).is_err()
        || usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>()
    {
        return Ok(0);
    }
    image.seek(SeekFrom::Start(ehdr.e_phoff)).map_err(io)?;
    let mut end = 0;
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        if image.read_exact(phdr.as_mut_slice()).is_err() {
            return Ok(0);
        }
        if phdr.p_type != PT_LOAD {
            continue;
        }
        if phdr.p_filesz > phdr.p_memsz {
            return Err(malformed(path, "a PT_LOAD segment has more file bytes than memory bytes"));
        }
        let past_eof = phdr.p_offset.checked_add(phdr.p_filesz).is_none_or(|e| e > file_len);
        if past_eof {
            return Err(malformed(
                path,
                "a PT_LOAD segment's file bytes run past the end of the file",
            ));
        }
        if phdr.p_memsz == 0 {
            continue;
        }
        end = end.max(check_in_ram(mem, path, phdr.p_paddr, phdr.p_memsz)?);
    }
    Ok(end)
}

/// Checks that a bzImage's protected-mode kernel, and the memory it decompresses into
/// (`init_size` from its load address, boot protocol 2.10+), are guest RAM, and returns one
/// past their end. An image linux-loader refuses anyway (no header, old protocol, shorter
/// than its setup sectors) is left for it to report: it refuses those before it writes.
pub(super) fn bzimage_end(mem: &GuestMemory, path: &Path, image: &[u8]) -> Result<u64> {
    let Some(hdr) = super::bzimage::setup_header_of(image) else { return Ok(0) };
    let hdr: setup_header = hdr;
    let setup_sects = if hdr.setup_sects == 0 { 4 } else { u64::from(hdr.setup_sects) };
    let setup_size = (setup_sects + 1) * 512;
    let Some(kernel_size) = (image.len() as u64).checked_sub(setup_size) else { return Ok(0) };
    let init_size =
        if hdr.version >= BOOT_PROTOCOL_INIT_SIZE { u64::from(hdr.init_size) } else { 0 };
    check_in_ram(mem, path, u64::from(hdr.code32_start), kernel_size.max(init_size))
}

/// Checks that the entry point is in guest RAM.
pub(super) fn check_entry(mem: &GuestMemory, path: &Path, entry: u64) -> Result<()> {
    if mem.address_in_range(GuestAddress(entry)) {
        Ok(())
    } else {
        Err(Error::EntryOutsideRam { path: path.to_owned(), entry })
    }
}

#[cfg(test)]
mod tests {
    use hv_mem::{GuestRam, MemoryConfig};
    use vm_memory::Bytes;

    use super::super::{layout, load_kernel, EntryPoint};
    use super::*;

    const RAM: u64 = 32 << 20;

    /// A 64-bit little-endian ELF entering at `entry`, with one `PT_LOAD` per
    /// `(paddr, file bytes, memsz)`.
    fn elf(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * segments.len() as u64;
        let mut out = vec![0u8; 64];
        out[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (paddr, bytes, memsz) in segments {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            ph[4..8].copy_from_slice(&5u32.to_le_bytes());
            ph[8..16].copy_from_slice(&data_off.to_le_bytes());
            ph[16..24].copy_from_slice(&paddr.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            out.extend_from_slice(&ph);
            data_off += bytes.len() as u64;
        }
        for (_, bytes, _) in segments {
            out.extend_from_slice(bytes);
        }
        out
    }

    fn load(image: &[u8]) -> (GuestRam, Result<super::super::LoadedKernel>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel");
        std::fs::write(&path, image).unwrap();
        let ram = GuestRam::new(&MemoryConfig::new(RAM)).unwrap();
        let r = load_kernel(ram.memory(), &path);
        (ram, r)
    }

    fn first_bytes(ram: &GuestRam, at: u64) -> [u8; 4] {
        ram.memory().read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn the_fuzzers_elf_past_ram_is_refused() {
        // fuzz finding F3: one PT_LOAD of 16 file bytes with p_memsz = 64 GiB.
        let image = include_bytes!("../../../../fuzz/regressions/kernel_loader/elf-memsz-past-ram");
        let (ram, r) = load(image);
        let e = r.unwrap_err();
        assert!(matches!(e, Error::KernelOutsideRam { start: 0x10_0000, .. }), "{e}");
        assert_eq!(first_bytes(&ram, 0x10_0000), [0; 4], "written before the check");
    }

    #[test]
    fn nothing_is_written_when_a_later_segment_does_not_fit() {
        let code = [0xf4u8; 16];
        let image = elf(0x10_0000, &[(0x10_0000, &code, 16), (RAM - 0x1000, &[1, 2], 0x2000)]);
        let (ram, r) = load(&image);
        let e = r.unwrap_err();
        assert!(
            matches!(e, Error::KernelOutsideRam { start, size: 0x2000, .. } if start == RAM - 0x1000),
            "{e}"
        );
        assert_eq!(first_bytes(&ram, 0x10_0000), [0; 4]);
        // A segment that only overflows u64.
        let (_, r) = load(&elf(0x10_0000, &[(u64::MAX - 8, &[], 0x100)]));
        assert!(matches!(r, Err(Error::KernelOutsideRam { .. })), "{r:?}");
    }

    #[test]
    fn contradictory_segments_are_malformed() {
        let (_, r) = load(&elf(0x10_0000, &[(0x10_0000, &[0xf4; 32], 16)]));
        assert!(matches!(r, Err(Error::KernelMalformed { .. })), "{r:?}");
        let mut image = elf(0x10_0000, &[(0x10_0000, &[0xf4; 32], 32)]);
        image.truncate(image.len() - 8);
        let (_, r) = load(&image);
        assert!(matches!(r, Err(Error::KernelMalformed { .. })), "{r:?}");
    }

    #[test]
    fn a_kernel_that_fits_ends_after_its_bss() {
        // File bytes, then a BSS; and a BSS-only segment above it (linux-loader skips those).
        let image = elf(
            0x10_0000,
            &[(0x10_0000, &[0xf4; 16], 0x1000), (0x20_0000, &[], 0x3000), (0, &[], 0)],
        );
        let (ram, r) = load(&image);
        let k = r.unwrap();
        assert_eq!(k.end, 0x20_3000);
        assert!(matches!(k.entry, EntryPoint::Linux64 { entry: 0x10_0000, .. }));
        assert_eq!(first_bytes(&ram, 0x10_0000), [0xf4; 4]);
        // The same kernel entering past RAM.
        let (_, r) = load(&elf(RAM + 0x10, &[(0x10_0000, &[0xf4; 16], 0x1000)]));
        assert!(matches!(r, Err(Error::EntryOutsideRam { .. })), "{r:?}");
    }

    /// A bzImage (boot protocol 2.15, loaded high) whose protected-mode part is `kernel` bytes
    /// of gzip-like junk hv does not unpack.
    fn bzimage(code32_start: u32, kernel: usize, init_size: u32) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4; // setup_sects
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&code32_start.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        img.extend(std::iter::repeat_n(0x1f, kernel));
        img
    }

    #[test]
    fn a_bzimage_must_fit_with_its_decompression_window() {
        let start = layout::KERNEL_START as u32;
        let (ram, r) = load(&bzimage(start, 0x1000, 0x80_0000));
        let k = r.unwrap();
        assert_eq!(k.end, layout::KERNEL_START + 0x80_0000);
        assert_eq!(first_bytes(&ram, layout::KERNEL_START), [0x1f; 4]);
        // init_size past RAM, and a load address near the top of RAM.
        let (ram, r) = load(&bzimage(start, 0x1000, 64 << 20));
        assert!(
            matches!(r, Err(Error::KernelOutsideRam { size, .. }) if size == 64 << 20),
            "{r:?}"
        );
        assert_eq!(first_bytes(&ram, layout::KERNEL_START), [0; 4]);
        let (_, r) = load(&bzimage(RAM as u32 - 0x800, 0x1000, 0));
        assert!(matches!(r, Err(Error::KernelOutsideRam { .. })), "{r:?}");
    }
}
