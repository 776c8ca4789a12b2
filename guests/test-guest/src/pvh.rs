//! The PVH boot information (`struct hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`).
//!
//! Fields used: magic, version, cmdline_paddr, rsdp_paddr and, from version 1,
//! memmap_paddr/memmap_entries. Everything is copied out at boot, because the AP trampoline
//! and the tests may overwrite low memory later.

const MAGIC: u32 = 0x336e_c578;
const MAX_CMDLINE: usize = 1024;
/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

/// What the guest keeps from the start info.
pub struct BootInfo {
    /// The command line, copied (cut at 1023 bytes).
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Physical address of the ACPI RSDP, 0 when the VMM gave none.
    pub rsdp_paddr: u64,
    /// Sum of the RAM entries of the memory map; `None` when there is no map.
    pub ram_bytes: Option<u64>,
    /// False when the magic did not match (then everything else is empty).
    pub valid: bool,
}

impl BootInfo {
    /// The command line.
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }
}

fn read<T: Copy>(paddr: u64) -> T {
    // SAFETY: callers pass addresses from the start info, which the VMM placed in guest RAM
    // below 4 GiB (identity-mapped); unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(paddr as *const T) }
}

/// Reads the start info at `paddr` (from `ebx` at entry).
pub fn parse(paddr: u64) -> BootInfo {
    let mut info = BootInfo {
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp_paddr: 0,
        ram_bytes: None,
        valid: false,
    };
    if paddr == 0 || paddr >= 1 << 32 || read::<u32>(paddr) != MAGIC {
        return info;
    }
    info.valid = true;
    let version = read::<u32>(paddr + 4);
    let cmdline_paddr = read::<u64>(paddr + 24);
    info.rsdp_paddr = read::<u64>(paddr + 32);
    if cmdline_paddr != 0 && cmdline_paddr < 1 << 32 {
        while info.cmdline_len < MAX_CMDLINE - 1 {
            let b = read::<u8>(cmdline_paddr + info.cmdline_len as u64);
            if b == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = b;
            info.cmdline_len += 1;
        }
    }
    if version >= 1 {
        let memmap_paddr = read::<u64>(paddr + 40);
        let entries = read::<u32>(paddr + 48);
        if memmap_paddr != 0 && memmap_paddr < 1 << 32 && entries != 0 {
            let mut total = 0u64;
            for i in 0..u64::from(entries.min(128)) {
                // struct hvm_memmap_table_entry { u64 addr; u64 size; u32 type; u32 reserved; }
                let entry = memmap_paddr + i * 24;
                if read::<u32>(entry + 16) == E820_RAM {
                    total = total.saturating_add(read::<u64>(entry + 8));
                }
            }
            info.ram_bytes = Some(total);
        }
    }
    info
}

/// The `key=value` words of a command line this guest understands.
pub struct Args<'a> {
    /// `test=NAME` (empty when absent).
    pub test: &'a [u8],
    /// `count=N`, when given and a valid number.
    pub count: Option<u64>,
}

impl<'a> Args<'a> {
    /// Picks `test=` and `count=` out of a command line; other words are ignored.
    pub fn parse(cmdline: &'a [u8]) -> Self {
        let mut args = Args { test: &[], count: None };
        for word in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
            if let Some(v) = word.strip_prefix(b"test=") {
                args.test = v;
            } else if let Some(v) = word.strip_prefix(b"count=") {
                args.count = parse_u64(v);
            }
        }
        args
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}
