//! Unpacking a bzImage on the host.
//!
//! A bzImage is a small real-mode setup stub, a decompressor, and the compressed `vmlinux`
//! ELF (the payload, located by `payload_offset`/`payload_length` in the setup header).
//! Decompressing in the guest costs ~100 ms of guest time on hardware KVM, and minutes on a
//! host whose guest kernel mode is emulated (PVM): Debian's 14 MB LZ4 payload takes ~90 s
//! there. So hv unpacks the payload itself when it knows the format and boots the `vmlinux`
//! inside directly (through PVH when it has the PVH note), falling back to the image's own
//! decompressor for formats it does not unpack. The guest then gets no KASLR from the
//! decompressor, as under Firecracker, which boots `vmlinux` images only.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Offset of the setup header in a bzImage.
const SETUP_HEADER: usize = 0x1f1;
/// Magic of the LZ4 "legacy" frame format Linux uses.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest uncompressed chunk in a legacy LZ4 stream.
const LZ4_CHUNK: usize = 8 << 20;
/// Refuse payloads that claim to unpack beyond this (a corrupt or hostile image).
const MAX_VMLINUX: usize = 512 << 20;

/// The setup header of a bzImage, if `image` is long enough to hold one.
pub fn setup_header_of(image: &[u8]) -> Option<setup_header> {
    let end = SETUP_HEADER + std::mem::size_of::<setup_header>();
    setup_header::from_slice(image.get(SETUP_HEADER..end)?).copied()
}

/// The compressed payload of a bzImage.
fn payload(image: &[u8]) -> Option<&[u8]> {
    let hdr = setup_header_of(image)?;
    let setup_sects = if hdr.setup_sects == 0 { 4 } else { usize::from(hdr.setup_sects) };
    let start = (setup_sects + 1) * 512 + hdr.payload_offset as usize;
    image.get(start..start.checked_add(hdr.payload_length as usize)?)
}

/// Decompresses a legacy-frame LZ4 stream (as `lz4 -l` writes it) followed by Linux's 4-byte
/// uncompressed size.
fn unlz4_legacy(data: &[u8]) -> Option<Vec<u8>> {
    let magic = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    if magic != LZ4_LEGACY_MAGIC {
        return None;
    }
    let size_hint = data
        .len()
        .checked_sub(4)
        .and_then(|i| data.get(i..))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|&n| n <= MAX_VMLINUX)?;
    let mut out = Vec::with_capacity(size_hint);
    let mut pos = 4;
    let mut chunk = vec![0u8; LZ4_CHUNK];
    while out.len() < size_hint {
        let len = u32::from_le_bytes(data.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len == LZ4_LEGACY_MAGIC {
            continue; // concatenated streams
        }
        let block = data.get(pos..pos.checked_add(len as usize)?)?;
        pos += len as usize;
        let n = lz4_flex::block::decompress_into(block, &mut chunk).ok()?;
        out.extend_from_slice(&chunk[..n]);
        if out.len() > MAX_VMLINUX {
            return None;
        }
    }
    (out.len() == size_hint).then_some(out)
}

/// The `vmlinux` ELF inside a bzImage, when its payload is in a format hv unpacks (LZ4, as
/// Debian's kernels use) and holds an ELF; `None` otherwise.
pub fn extract_vmlinux(image: &[u8]) -> Option<Vec<u8>> {
    let vmlinux = unlz4_legacy(payload(image)?)?;
    vmlinux.starts_with(b"\x7fELF").then_some(vmlinux)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[SETUP_HEADER] = 4; // setup_sects
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(payload);
        img
    }

    fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for c in data.chunks(LZ4_CHUNK) {
            let block = lz4_flex::block::compress(c);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn unpacks_an_lz4_payload() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..9_000_000u32).map(|i| (i % 251) as u8));
        let img = fake_bzimage(&lz4_legacy(&elf));
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn refuses_what_it_cannot_unpack() {
        assert!(extract_vmlinux(&[]).is_none());
        assert!(extract_vmlinux(&fake_bzimage(b"\x1f\x8bgzip")).is_none());
        // Not an ELF inside.
        assert!(extract_vmlinux(&fake_bzimage(&lz4_legacy(b"plain data"))).is_none());
        // Truncated and corrupted streams.
        let good = lz4_legacy(b"\x7fELF and more");
        assert!(extract_vmlinux(&fake_bzimage(&good[..good.len() - 6])).is_none());
        let mut bad = good.clone();
        bad[4] = 0xff;
        assert!(extract_vmlinux(&fake_bzimage(&bad)).is_none());
        // A size claim beyond the limit.
        let mut huge = good;
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(extract_vmlinux(&fake_bzimage(&huge)).is_none());
    }
}
