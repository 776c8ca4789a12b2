//! Split virtqueues that a test builds by hand in guest memory, for testing queue handlers
//! without KVM: the test plays the driver (writes descriptors, makes them available, reads the
//! used ring) and hands [`TestQueue::queue`] to the device code under test.
//!
//! Chains can be well-formed ([`TestQueue::add_chain`]) or anything a hostile guest could write
//! ([`TestQueue::add_raw`], [`TestQueue::push_avail`]): broken links, loops, out-of-range
//! addresses, odd flags.
//!
//! ```
//! use hv_test_support::virtq::{ram, TestQueue, R, W};
//!
//! let ram = ram(2 << 20);
//! let mut q = TestQueue::new(ram.memory(), 64, 0, 0x1_0000);
//! let (out, inb) = (q.alloc(16), q.alloc(512));
//! q.write_guest(out, b"request header..");
//! let head = q.add_chain(&[(out, 16, R), (inb, 512, W)]);
//! // ... the device under test processes `q.queue` here ...
//! assert_eq!(q.used_idx(), 0, "nothing processed yet");
//! assert_eq!(head, 0);
//! ```

use hv_mem::{GuestMemory, GuestRam, MemoryConfig};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Device-readable buffer: no descriptor flags.
pub const R: u16 = 0;
/// Device-writable buffer (`VRING_DESC_F_WRITE`).
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Chained to the descriptor in `next` (`VRING_DESC_F_NEXT`).
pub const N: u16 = VRING_DESC_F_NEXT as u16;

/// Each part of the queue (descriptor table, avail ring, used ring) starts on its own page.
const PART_ALIGN: u64 = 0x1000;
/// Default alignment of the buffers [`TestQueue::alloc`] hands out.
const DEFAULT_BUFFER_ALIGN: u64 = 64;

/// Anonymous guest RAM of `size` bytes (at least 2 MiB) starting at guest address 0.
pub fn ram(size: u64) -> GuestRam {
    GuestRam::new(&MemoryConfig::new(size)).expect("guest RAM")
}

/// Declares `pub struct $name<'a>(TestQueue<'a>)`: a [`TestQueue`] that a test module extends
/// with its device's helpers (constructors with its layout, request builders) as inherent
/// methods, and that dereferences to the shared queue for everything else.
///
/// ```
/// use hv_test_support::virtq::{self, ram, R};
///
/// hv_test_support::test_queue_wrapper!(
///     /// A queue with a helper for a made-up device.
///     MyQueue
/// );
///
/// impl<'a> MyQueue<'a> {
///     fn new(mem: &'a hv_mem::GuestMemory) -> Self {
///         Self(virtq::TestQueue::new(mem, 16, 0, 0x10_0000))
///     }
///
///     fn ping(&mut self) -> u16 {
///         let a = self.alloc(4);
///         self.write_guest(a, b"ping");
///         self.add_chain(&[(a, 4, R)])
///     }
/// }
///
/// let ram = ram(2 << 20);
/// let mut q = MyQueue::new(ram.memory());
/// assert_eq!(q.ping(), 0);
/// assert_eq!(q.size(), 16);
/// ```
#[macro_export]
macro_rules! test_queue_wrapper {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        pub struct $name<'a>(#[doc = "The shared queue."] pub $crate::virtq::TestQueue<'a>);

        impl<'a> ::std::ops::Deref for $name<'a> {
            type Target = $crate::virtq::TestQueue<'a>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name<'_> {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }
    };
}

/// A split virtqueue of `size` entries laid out in guest memory from `base`:
///
/// | part             | at                            | bytes used          |
/// |------------------|-------------------------------|---------------------|
/// | descriptor table | `base`                        | `16 * size`         |
/// | avail ring       | `base` + table, page-rounded  | `6 + 2 * size`      |
/// | used ring        | avail ring + its page-rounded | `6 + 8 * size`      |
///
/// Each part is sized for the queue size and rounded up to a page, so for the 64-entry queues
/// most tests use the avail ring is at `base + 0x1000` and the used ring at `base + 0x2000`,
/// and [`TestQueue::footprint`] is `0x3000`. (virtio-queue's `MockSplitQueue` is not used:
/// it places the used ring 64 bytes after the avail ring's start whatever the queue size, so
/// with a 64-entry queue more than ~30 avail entries overwrite used entries.)
///
/// Data buffers come from a bump allocator starting at `data_base` ([`TestQueue::alloc`]);
/// descriptors are written at consecutive table indices, wrapping at the queue size.
pub struct TestQueue<'a> {
    /// The guest memory holding the rings and the buffers.
    pub mem: &'a GuestMemory,
    /// The device side, set up for this layout and ready: what the code under test processes.
    pub queue: Queue,
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    /// The table index the next descriptor goes to.
    next_desc: u16,
    /// The driver's avail index (free-running).
    avail: u16,
    /// The next free data address.
    next_addr: u64,
    buffer_align: u64,
}

impl<'a> TestQueue<'a> {
    /// Bytes of the descriptor table, the avail ring and the used ring of a `size`-entry queue,
    /// each rounded up to a page as [`TestQueue`] lays them out.
    fn part_lens(size: u16) -> [u64; 3] {
        let n = u64::from(size);
        [16 * n, 6 + 2 * n, 6 + 8 * n].map(|len| len.next_multiple_of(PART_ALIGN))
    }

    /// How many bytes from its base a `size`-entry queue's rings take (`0x3000` for 64 entries):
    /// the spacing needed between the bases of several queues.
    pub fn footprint(size: u16) -> u64 {
        Self::part_lens(size).iter().sum()
    }

    /// A `size`-entry queue (a power of two up to 32768) with its rings at `base`, cleared,
    /// handing out buffers from `data_base` upwards (64-byte aligned, see
    /// [`TestQueue::align_buffers`]).
    ///
    /// Panics when the layout does not fit in `mem` or `data_base` lies inside the rings.
    pub fn new(mem: &'a GuestMemory, size: u16, base: u64, data_base: u64) -> Self {
        let [desc_len, avail_len, _] = Self::part_lens(size);
        let footprint = Self::footprint(size);
        assert!(
            !(base..base + footprint).contains(&data_base),
            "buffers at {data_base:#x} would overlap the rings at {base:#x}..{:#x}",
            base + footprint
        );
        let (desc_table, avail_ring) = (base, base + desc_len);
        let used_ring = avail_ring + avail_len;
        mem.write_slice(&vec![0u8; footprint as usize], GuestAddress(base))
            .expect("clear queue memory");
        let mut queue = Queue::new(size).expect("queue size");
        queue.set_size(size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(desc_table);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail_ring);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used_ring);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "test queue layout");
        Self {
            mem,
            queue,
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail: 0,
            next_addr: data_base,
            buffer_align: DEFAULT_BUFFER_ALIGN,
        }
    }

    /// Aligns the buffers [`TestQueue::alloc`] hands out from now on to `align` bytes (a power
    /// of two), e.g. 512 for backends that do direct I/O on guest buffers.
    pub fn align_buffers(mut self, align: u64) -> Self {
        assert!(align.is_power_of_two(), "buffer alignment {align} is not a power of two");
        self.next_addr = self.next_addr.next_multiple_of(align);
        self.buffer_align = align;
        self
    }

    /// Turns VIRTIO_F_EVENT_IDX on for the device side.
    pub fn event_idx(mut self) -> Self {
        self.queue.set_event_idx(true);
        self
    }

    /// The device side, for code that takes the queue by value (e.g. a device activation).
    pub fn into_queue(self) -> Queue {
        self.queue
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Guest address of the avail ring.
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Guest address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// Allocates `len` bytes of guest memory for a buffer (at least one alignment unit, so
    /// every call returns a distinct address); returns its address.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_addr;
        self.next_addr += len.max(1).next_multiple_of(self.buffer_align);
        a
    }

    /// Writes `(addr, len, flags, next)` descriptors as they are (no NEXT flag added) at table
    /// indices starting at the next free one, and makes `head` available; returns the table
    /// index of `head`.
    ///
    /// `head` and `next` fields below the queue size are relative to the first index written;
    /// `next` fields at or past the queue size are kept as they are (broken links).
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)], head: u16) -> u16 {
        let start = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let idx = self.index(u32::from(start) + i as u32);
            let next = if next >= self.size {
                next
            } else {
                self.index(u32::from(start) + u32::from(next))
            };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            let at = GuestAddress(self.desc_table + 16 * u64::from(idx));
            self.mem.write_obj(d, at).expect("store descriptor");
        }
        self.next_desc = self.index(u32::from(start) + descs.len() as u32);
        let head = self.index(u32::from(start) + u32::from(head));
        self.push_avail(head);
        head
    }

    /// `i` wrapped to a table index.
    fn index(&self, i: u32) -> u16 {
        (i % u32::from(self.size)) as u16
    }

    /// Adds a well-linked chain of `(addr, len, flags)` (NEXT set on all but the last);
    /// returns its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let last = descs.len().saturating_sub(1);
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(
                |(i, &(a, l, f))| {
                    if i < last {
                        (a, l, f | N, i as u16 + 1)
                    } else {
                        (a, l, f & !N, 0)
                    }
                },
            )
            .collect();
        self.add_raw(&raw, 0)
    }

    /// Makes table index `head` available without touching the table (any value, even one
    /// past the queue size) and publishes the new avail index.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail % self.size);
        let at = GuestAddress(self.avail_ring + 4 + 2 * slot);
        self.mem.write_obj(head.to_le(), at).expect("avail slot");
        self.avail = self.avail.wrapping_add(1);
        let idx = GuestAddress(self.avail_ring + 2);
        self.mem.write_obj(self.avail.to_le(), idx).expect("avail idx");
    }

    /// The used ring's index: how many chains the device has returned (free-running).
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used_ring + 2)).expect("used idx"))
    }

    /// Used element `i` (taken modulo the queue size): (descriptor head, bytes written).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (u32::from_le(id), u32::from_le(len))
    }

    /// Every used element so far (up to the used index, before any wrap-around).
    pub fn all_used(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx()).map(|i| self.used(i)).collect()
    }

    /// Sets the avail ring's flags (e.g. `VRING_AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags.to_le(), GuestAddress(self.avail_ring)).expect("avail flags");
    }

    /// Sets `used_event` (EVENT_IDX: interrupt me when the used index passes this), the field
    /// after the avail ring's entries.
    pub fn set_used_event(&self, v: u16) {
        let at = GuestAddress(self.avail_ring + 4 + 2 * u64::from(self.size));
        self.mem.write_obj(v.to_le(), at).expect("used_event");
    }

    /// `avail_event` (EVENT_IDX: the avail index at which the device wants a notification), the
    /// field after the used ring's entries.
    pub fn avail_event(&self) -> u16 {
        let at = GuestAddress(self.used_ring + 4 + 8 * u64::from(self.size));
        u16::from_le(self.mem.read_obj(at).expect("avail_event"))
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).expect("read guest");
        v
    }

    /// Writes `data` to guest memory at `addr`.
    pub fn write_guest(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).expect("write guest");
    }

    /// The first `used` bytes of a buffer scattered over pieces at `addrs` of `lens` bytes
    /// (what the device wrote into a chain, given the length of its used element).
    pub fn gather(&self, addrs: &[u64], lens: &[u32], used: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(used);
        for (&a, &l) in addrs.iter().zip(lens) {
            if out.len() == used {
                break;
            }
            let n = (l as usize).min(used - out.len());
            out.extend(self.read_guest(a, n));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_sized_for_the_queue_size() {
        assert_eq!(TestQueue::footprint(64), 0x3000);
        assert_eq!(TestQueue::footprint(256), 0x3000);
        // 512 entries: an 8 KiB table, a 1030-byte avail ring, a 4102-byte used ring.
        assert_eq!(TestQueue::footprint(512), 0x2000 + 0x1000 + 0x2000);
        let ram = ram(2 << 20);
        let q = TestQueue::new(ram.memory(), 64, 0x4000, 0x1_0000);
        assert_eq!((q.desc_table(), q.avail_ring(), q.used_ring()), (0x4000, 0x5000, 0x6000));
        let q = TestQueue::new(ram.memory(), 1024, 0, 0x1_0000);
        assert_eq!((q.avail_ring(), q.used_ring()), (0x4000, 0x5000));
    }

    #[test]
    fn a_full_avail_ring_leaves_the_used_ring_alone() {
        let ram = ram(2 << 20);
        let mut q = TestQueue::new(ram.memory(), 64, 0, 0x1_0000);
        for _ in 0..64 {
            let a = q.alloc(8);
            q.add_chain(&[(a, 8, W)]);
        }
        q.set_used_event(7);
        assert_eq!(q.used_idx(), 0);
        assert_eq!(q.all_used(), vec![]);
        assert_eq!(q.avail_event(), 0);
        let avail_idx: u16 = ram.memory().read_obj(GuestAddress(q.avail_ring() + 2)).unwrap();
        assert_eq!(avail_idx, 64);
    }

    #[test]
    fn raw_chains_keep_broken_links_and_wrap_indices() {
        let ram = ram(2 << 20);
        let mut q = TestQueue::new(ram.memory(), 4, 0, 0x1_0000);
        q.add_chain(&[(0x1_0000, 1, R), (0x1_0040, 1, R), (0x1_0080, 1, W)]);
        // Starts at index 3: its second descriptor wraps to 0, its link stays at 200.
        let head = q.add_raw(&[(0x2_0000, 4, N, 1), (0x2_0040, 4, W | N, 200)], 0);
        assert_eq!(head, 3);
        let d = |i: u64| -> RawDescriptor { ram.memory().read_obj(GuestAddress(16 * i)).unwrap() };
        assert_eq!(Descriptor::from(d(3)).next(), 0);
        assert_eq!(Descriptor::from(d(0)).next(), 200);
        assert_eq!(Descriptor::from(d(0)).addr(), GuestAddress(0x2_0040));
    }

    #[test]
    fn buffers_are_aligned_and_distinct() {
        let ram = ram(2 << 20);
        let mut q = TestQueue::new(ram.memory(), 64, 0, 0x1_0001).align_buffers(512);
        assert_eq!([q.alloc(0), q.alloc(513), q.alloc(1)], [0x1_0200, 0x1_0400, 0x1_0800]);
        q.write_guest(0x1_0400, b"abcdef");
        q.write_guest(0x1_0800, b"ghi");
        assert_eq!(q.gather(&[0x1_0400, 0x1_0800], &[4, 512], 6), b"abcdgh");
    }
}
