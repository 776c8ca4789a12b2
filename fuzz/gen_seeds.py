#!/usr/bin/env python3
"""Writes the seed corpora of hv's fuzz targets into fuzz/seeds/<target>/: small, valid inputs
(virtio-blk and virtio-net descriptor chains, virtio-mmio driver bring-ups, port I/O sequences,
DHCP conversations, lease files, ELF/PVH kernels, bzImages with an LZ4 payload, qcow2 images
made by qemu-img) from which the fuzzers start past the first checks.

Each target's input layout is described at the top of its fuzz_targets/<target>.rs; this file
builds exactly those layouts. Needs python3, and qemu-img/qemu-io for the disk images.
Run: python3 fuzz/gen_seeds.py   (rewrites fuzz/seeds/ in place; the output is deterministic
except for the qcow2 images, whose bytes qemu-img decides)."""

import os
import shutil
import struct
import subprocess
import tempfile

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def chunk(b):
    return u16(len(b)) + b


# virtio ring descriptor flags
NEXT, WRITE, INDIRECT = 1, 2, 4


def desc(addr, length, flags, nxt):
    return u64(addr) + u32(length) + u16(flags) + u16(nxt)


# --- virtio-blk requests -------------------------------------------------------------------
# Layout: flags u8 (bit 0 read-only), descriptor count u16, descriptors, memory image at 0x1000.
HDR, SEGS, DATA, STATUS = 0x1000, 0x1100, 0x10000, 0x20000
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13


def blk(descs, req_type, sector, segments=b"", read_only=False):
    mem = bytearray(0x100)
    mem[0:16] = u32(req_type) + u32(0) + u64(sector)
    mem += segments
    body = b"".join(desc(*d) for d in descs)
    return u8(1 if read_only else 0) + u16(len(descs)) + body + bytes(mem)


def seg(sector, n, flags=0):
    return u64(sector) + u32(n) + u32(flags)


def blk_seeds():
    t = "blk_request"
    put(t, "read-1", blk([(HDR, 16, NEXT, 1), (DATA, 512, NEXT | WRITE, 2), (STATUS, 1, WRITE, 0)],
                         T_IN, 0))
    put(t, "read-last-sectors", blk(
        [(HDR, 16, NEXT, 1), (DATA, 1024, NEXT | WRITE, 2), (DATA + 0x1000, 512, NEXT | WRITE, 3),
         (STATUS, 1, WRITE, 0)], T_IN, 2045))
    put(t, "write-2", blk([(HDR, 16, NEXT, 1), (DATA, 512, NEXT, 2), (DATA + 0x200, 512, NEXT, 3),
                           (STATUS, 1, WRITE, 0)], T_OUT, 8))
    put(t, "write-read-only", blk([(HDR, 16, NEXT, 1), (DATA, 512, NEXT, 2), (STATUS, 1, WRITE, 0)],
                                  T_OUT, 8, read_only=True))
    put(t, "flush", blk([(HDR, 16, NEXT, 1), (STATUS, 1, WRITE, 0)], T_FLUSH, 0xdeadbeef))
    put(t, "get-id", blk([(HDR, 16, NEXT, 1), (DATA, 20, NEXT | WRITE, 2), (STATUS, 1, WRITE, 0)],
                         T_GET_ID, 0))
    put(t, "discard-2", blk([(HDR, 16, NEXT, 1), (SEGS, 32, NEXT, 2), (STATUS, 1, WRITE, 0)],
                            T_DISCARD, 0, seg(0, 8) + seg(100, 1024)))
    put(t, "write-zeroes-unmap", blk([(HDR, 16, NEXT, 1), (SEGS, 16, NEXT, 2), (STATUS, 1, WRITE, 0)],
                                     T_WRITE_ZEROES, 0, seg(2040, 8, 1)))
    put(t, "unsupported", blk([(HDR, 16, NEXT, 1), (STATUS, 1, WRITE, 0)], 99, 0))


# --- virtio-net queues ---------------------------------------------------------------------
# Layout: features byte, flags byte, u16-prefixed backend frames, memory image at 0.
# RX queue: desc 0x000, avail 0x100, used 0x200; TX queue: 0x300, 0x400, 0x500; 16 entries.
F_MRG, F_CSUM, F_GCSUM, F_HTSO4, F_HTSO6, F_GTSO4, F_GTSO6, F_EVENT_IDX = (1 << i for i in range(8))
NET_HDR = 12


def net_hdr(flags=0, gso=0, hdr_len=0, gso_size=0, csum_start=0, csum_off=0, nbuf=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, csum_start, csum_off, nbuf)


def eth_frame(n, proto=0x0800):
    base = bytes.fromhex("525400123456525400abcdef") + struct.pack(">H", proto)
    return base + bytes((i * 7) & 0xff for i in range(n - len(base)))


def avail(heads, used_event=0):
    ring = list(heads) + [0] * (16 - len(heads))
    return u16(0) + u16(len(heads)) + b"".join(u16(h) for h in ring) + u16(used_event)


def net(features, vnet_hdr, frames, rx_descs, rx_heads, tx_descs, tx_heads, tx_data):
    mem = bytearray(0x600)
    for i, d in enumerate(rx_descs):
        mem[i * 16:(i + 1) * 16] = desc(*d)
    a = avail(rx_heads)
    mem[0x100:0x100 + len(a)] = a
    for i, d in enumerate(tx_descs):
        mem[0x300 + i * 16:0x300 + (i + 1) * 16] = desc(*d)
    a = avail(tx_heads)
    mem[0x400:0x400 + len(a)] = a
    mem += tx_data
    fr = b"".join(chunk(f) for f in frames)
    return u8(features) + u8(1 if vnet_hdr else 0) + chunk(fr) + bytes(mem)


def net_seeds():
    t = "net_queue"
    frame = eth_frame(60)
    # TX: header at 0x600, frame at 0x610; RX: 2048-byte buffers at 0x10000 + i * 0x1000.
    tx_two = [(0x600, NET_HDR, NEXT, 1), (0x610, len(frame), 0, 0)]
    tx_data = net_hdr() + bytes(4) + frame
    rx = [(0x10000 + i * 0x1000, 2048, WRITE, 0) for i in range(4)]
    put(t, "tx-rx-plain", net(0, False, [frame, eth_frame(100)], rx, [0, 1], tx_two, [0], tx_data))
    put(t, "tx-rx-vnet", net(0, True, [net_hdr() + frame], rx, [0, 1, 2], tx_two, [0], tx_data))
    # One descriptor for header and frame together, event index on.
    tx_one = [(0x600, NET_HDR + 4 + len(frame), 0, 0)]
    put(t, "tx-one-desc-event-idx", net(F_EVENT_IDX, False, [frame], rx, [0], tx_one, [0], tx_data))
    # Mergeable RX buffers: a 3000-byte frame over 1526-byte buffers.
    small = [(0x10000 + i * 0x1000, 1526, WRITE, 0) for i in range(4)]
    big = eth_frame(3000)
    put(t, "rx-mergeable", net(F_MRG, True, [net_hdr() + big], small, [0, 1, 2, 3], [], [], b""))
    # RX chain of two writable descriptors.
    rx_chain = [(0x10000, 12, WRITE | NEXT, 1), (0x11000, 1514, WRITE, 0)]
    put(t, "rx-chained", net(0, False, [frame], rx_chain, [0], [], [], b""))
    # TX with checksum and TSO offload asked in the header (negotiated).
    tso = net_hdr(flags=1, gso=1, hdr_len=54, gso_size=1448, csum_start=34, csum_off=16)
    tcp = eth_frame(1514)
    tx_tso = [(0x600, NET_HDR, NEXT, 1), (0x610, len(tcp), 0, 0)]
    put(t, "tx-tso", net(F_CSUM | F_HTSO4 | F_GCSUM, True, [], [], [], tx_tso, [0],
                         tso + bytes(4) + tcp))
    # TX through an indirect table at 0x700 (two entries).
    ind = desc(0x600, NET_HDR, NEXT, 1) + desc(0x610, len(frame), 0, 0)
    tx_ind = [(0x680, len(ind), INDIRECT, 0)]
    data = bytearray(tx_data) + bytes(0x80 - len(tx_data)) + ind
    put(t, "tx-indirect", net(0, False, [], [], [], tx_ind, [0], bytes(data)))


# --- virtio-mmio register accesses ---------------------------------------------------------
# Operations of 7 bytes: kind (bit 0 write, bits 1-2 log2 width), offset u16, value u32.
def w(off, v):
    return u8(1 | (2 << 1)) + u16(off) + u32(v)


def r(off):
    return u8(2 << 1) + u16(off) + u32(0)


def mmio_queue(sel, size, base):
    return (w(0x30, sel) + r(0x34) + w(0x38, size) + w(0x80, base) + w(0x84, 0)
            + w(0x90, base + 0x1000) + w(0x94, 0) + w(0xa0, base + 0x2000) + w(0xa4, 0)
            + w(0x44, 1) + r(0x44))


def mmio_seeds():
    t = "mmio_transport"
    hello = r(0x00) + r(0x04) + r(0x08) + r(0x0c)
    feats = (w(0x70, 1) + w(0x70, 3) + w(0x14, 0) + r(0x10) + w(0x14, 1) + r(0x10)
             + w(0x24, 0) + w(0x20, 1 << 5) + w(0x24, 1) + w(0x20, 1) + w(0x70, 0xb) + r(0x70))
    up = w(0x70, 0xf) + r(0x70)
    put(t, "bring-up-one-queue", hello + feats + mmio_queue(0, 16, 0x10000) + up
        + w(0x50, 0) + r(0x60) + w(0x64, 1) + r(0x100) + r(0xfc) + w(0x70, 0) + r(0x70))
    put(t, "bring-up-two-queues", hello + feats + mmio_queue(0, 16, 0x10000)
        + mmio_queue(1, 256, 0x20000) + up + w(0x50, 1) + w(0x70, 0))
    put(t, "queue-outside-ram", hello + feats + mmio_queue(0, 8, 0xfff000) + up + r(0x70))
    put(t, "bad-features", hello + w(0x70, 3) + w(0x24, 0) + w(0x20, 1 << 7) + w(0x70, 0xb)
        + r(0x70) + up)
    put(t, "config-space", hello + w(0x104, 0x11223344) + r(0x104) + r(0x1fc) + r(0xfc))


# --- port I/O devices ----------------------------------------------------------------------
# Clock u64, then operations: kind (bit 0 write, bits 1-2 log2 width, bit 3 serial input of
# kind >> 4 bytes), device index (0 serial, 1 i8042, 2 CMOS, 3 ACPI PM, 4 pvpanic, 5 nobody),
# offset within the device, data (width bytes, writes only).
def pw(dev, off, v, width=1):
    lg = {1: 0, 2: 1, 4: 2, 8: 3}[width]
    return u8(1 | (lg << 1)) + u8(dev) + u8(off) + v.to_bytes(width, "little")


def pr(dev, off, width=1):
    lg = {1: 0, 2: 1, 4: 2, 8: 3}[width]
    return u8(lg << 1) + u8(dev) + u8(off)


def serial_in(b):
    return u8(8 | (len(b) << 4)) + u8(0) + u8(0) + b


def pio_seeds():
    t = "pio_devices"
    clock = u64(1_795_600_000)
    serial = (pw(0, 3, 0x80) + pw(0, 0, 1) + pw(0, 1, 0) + pw(0, 3, 0x03) + pw(0, 1, 0x0f)
              + pw(0, 4, 0x0b) + b"".join(pw(0, 0, c) for c in b"hi\n") + pr(0, 5) + pr(0, 2)
              + serial_in(b"ok\r") + pr(0, 5) + pr(0, 0) + pr(0, 0) + pr(0, 2) + pr(0, 6))
    put(t, "serial", clock + serial)
    cmos = b"".join(pw(2, 0, reg) + pr(2, 1) for reg in [0, 2, 4, 6, 7, 8, 9, 0x0a, 0x0b,
                                                          0x0c, 0x0d, 0x32, 0x7f, 0x8f])
    cmos += pw(2, 0, 0x0b) + pw(2, 1, 0x06) + pw(2, 0, 0) + pr(2, 1)
    put(t, "cmos", clock + cmos)
    put(t, "i8042-reset", clock + pr(1, 4) + pw(1, 4, 0x20) + pr(1, 0) + pw(1, 4, 0xfe))
    pm = (pr(3, 0, 2) + pw(3, 2, 0x0100, 2) + pr(3, 2, 2) + pr(3, 8, 4) + pr(3, 9)
          + pw(3, 0, 0xffff, 2) + pr(3, 4, 2) + pw(3, 4, (5 << 10) | (1 << 13), 2))
    put(t, "acpi-pm-poweroff", clock + pm)
    put(t, "pvpanic", clock + pr(4, 0) + pw(4, 0, 2) + pw(4, 0, 1))
    put(t, "unowned-wide", clock + pr(5, 3, 4) + pw(5, 0, 0x1234, 2) + pr(0, 7, 8) + pr(3, 11, 4))


# --- DHCP ----------------------------------------------------------------------------------
# u16-prefixed packets, handled in order by one server on 10.0.0.1/24, range .10-.13.
def ip(s):
    return bytes(int(x) for x in s.split("."))


def dhcp(msg_type, mac, xid, opts=b"", ciaddr="0.0.0.0", flags=0x8000):
    chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
    p = (u8(1) + u8(1) + u8(6) + u8(0) + struct.pack(">IHH", xid, 0, flags) + ip(ciaddr)
         + ip("0.0.0.0") * 3 + chaddr + bytes(64) + bytes(128) + bytes.fromhex("63825363"))
    p += bytes([53, 1, msg_type]) + opts + bytes([255])
    return p


def opt(code, data):
    return bytes([code, len(data)]) + data


MAC = "52:54:00:12:34:56"
PARAMS = opt(55, bytes([1, 3, 6, 12, 15, 28, 51, 54]))


def dhcp_seeds():
    t = "dhcp_request"
    disc = dhcp(1, MAC, 1, PARAMS + opt(12, b"guest1") + opt(61, b"\x01"
                                                                  + bytes.fromhex("525400123456")))
    req = dhcp(3, MAC, 1, opt(50, ip("10.0.0.10")) + opt(54, ip("10.0.0.1")) + PARAMS)
    renew = dhcp(3, MAC, 2, PARAMS, ciaddr="10.0.0.10", flags=0)
    release = dhcp(7, MAC, 3, opt(54, ip("10.0.0.1")), ciaddr="10.0.0.10", flags=0)
    decline = dhcp(4, MAC, 4, opt(50, ip("10.0.0.10")) + opt(54, ip("10.0.0.1")))
    inform = dhcp(8, MAC, 5, PARAMS, ciaddr="10.0.0.77", flags=0)
    reserved = dhcp(1, "52:54:00:00:00:99", 6, PARAMS)
    wrong = dhcp(3, MAC, 7, opt(50, ip("10.0.1.10")) + opt(54, ip("10.0.0.1")))
    put(t, "discover", chunk(disc))
    put(t, "discover-request", chunk(disc) + chunk(req))
    put(t, "request-renew-release", chunk(disc) + chunk(req) + chunk(renew) + chunk(release))
    put(t, "decline", chunk(disc) + chunk(req) + chunk(decline) + chunk(disc))
    put(t, "inform", chunk(inform))
    put(t, "reserved-mac", chunk(reserved) + chunk(dhcp(3, "52:54:00:00:00:99", 6,
                                                          opt(50, ip("10.0.0.50")))))
    put(t, "request-wrong-subnet", chunk(wrong))
    many = b"".join(chunk(dhcp(1, "52:54:00:00:01:%02x" % i, 10 + i, PARAMS)) for i in range(6))
    put(t, "pool-exhausted", many)


def lease_seeds():
    t = "dhcp_leases"
    head = "# hv-dhcp leases v1\n"
    put(t, "three", (head + "1795600600 52:54:00:12:34:56 192.168.100.10 guest1\n"
                     "1795600042 52:54:00:12:34:57 192.168.100.11 *\n"
                     "1795603600 52:54:00:12:34:58 192.168.100.20 web-2\n").encode())
    put(t, "expired-outside-comments", (head + "# a comment\n\n"
                                        "1000 52:54:00:12:34:56 192.168.100.10 old\n"
                                        "1795600600 52:54:00:12:34:57 10.1.1.1 outside\n"
                                        "  1795600600 52:54:00:12:34:59 192.168.100.12 x  \n"
                                        ).encode())
    put(t, "duplicates", (head + "1795600600 52:54:00:12:34:56 192.168.100.10 a\n"
                          "1795600700 52:54:00:12:34:56 192.168.100.11 a\n"
                          "1795600800 52:54:00:12:34:57 192.168.100.10 b\n").encode())
    put(t, "header-only", head.encode())
    put(t, "bad-line", (head + "1795600600 52:54:00:12:34:56 192.168.100.10\n").encode())


# --- kernels -------------------------------------------------------------------------------
def elf64(entry=0x100000, pvh_entry=None, payload=b"\xf4" * 16, paddr=0x100000):
    """A minimal x86-64 ELF executable: one PT_LOAD, and a PT_NOTE with the Xen PVH entry."""
    phnum = 2 if pvh_entry is not None else 1
    ehsize, phentsize = 64, 56
    note = b""
    if pvh_entry is not None:
        # XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen".
        note = u32(4) + u32(4) + u32(18) + b"Xen\0" + u32(pvh_entry)
    off_load = ehsize + phentsize * phnum
    off_note = off_load + len(payload)
    eh = (b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + u16(2) + u16(62) + u32(1) + u64(entry)
          + u64(ehsize) + u64(0) + u32(0) + u16(ehsize) + u16(phentsize) + u16(phnum) + u16(64)
          + u16(0) + u16(0))
    ph = (u32(1) + u32(5) + u64(off_load) + u64(paddr) + u64(paddr) + u64(len(payload))
          + u64(len(payload) + 0x1000) + u64(0x1000))
    if pvh_entry is not None:
        ph += (u32(4) + u32(4) + u64(off_note) + u64(0) + u64(0) + u64(len(note)) + u64(len(note))
               + u64(4))
    return eh + ph + payload + note


def lz4_literals(data):
    """An LZ4 block holding `data` as literals only (valid LZ4; no compression needed)."""
    n = len(data)
    if n < 15:
        return bytes([n << 4]) + data
    rest, out = n - 15, bytearray([0xf0])
    while rest >= 255:
        out.append(255)
        rest -= 255
    out.append(rest)
    return bytes(out) + data


def lz4_legacy(data):
    block = lz4_literals(data)
    return u32(0x184C2102) + u32(len(block)) + block + u32(len(data))


def bzimage(payload, setup_sects=1, with_payload_fields=True):
    img = bytearray(512 * (setup_sects + 1))
    img[0x1f1] = setup_sects
    img[0x1fe:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    img[0x206:0x208] = u16(0x020f)  # boot protocol version
    img[0x211] = 0x01  # loadflags: LOADED_HIGH
    img[0x214:0x218] = u32(0x100000)  # code32_start
    img[0x230:0x234] = u32(0x200000)  # kernel_alignment
    img[0x234] = 1  # relocatable
    img[0x236:0x238] = u16(0x3)  # xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    if with_payload_fields:
        img[0x248:0x24c] = u32(16)  # payload_offset (from the protected-mode code)
        img[0x24c:0x250] = u32(len(payload))
    img[0x260:0x264] = u32(0x400000)  # init_size
    return bytes(img) + bytes(16) + payload


def kernel_seeds():
    vmlinux = elf64()
    pvh = elf64(pvh_entry=0x100000)
    put("kernel_loader", "elf-vmlinux", vmlinux)
    put("kernel_loader", "elf-pvh", pvh)
    put("kernel_loader", "bzimage-lz4-pvh", bzimage(lz4_legacy(pvh)))
    put("kernel_loader", "bzimage-gzip", bzimage(b"\x1f\x8b\x08\x00" + bytes(60)))
    put("bzimage", "lz4-pvh", bzimage(lz4_legacy(pvh)))
    put("bzimage", "lz4-vmlinux-setup4", bzimage(lz4_legacy(vmlinux), setup_sects=4))
    put("bzimage", "lz4-two-streams", bzimage(
        u32(0x184C2102) + u32(len(lz4_literals(vmlinux[:100]))) + lz4_literals(vmlinux[:100])
        + u32(0x184C2102) + u32(len(lz4_literals(vmlinux[100:]))) + lz4_literals(vmlinux[100:])
        + u32(len(vmlinux))))
    put("bzimage", "gzip", bzimage(b"\x1f\x8b\x08\x00" + bytes(60)))


# --- disk images ---------------------------------------------------------------------------
def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, stdout=subprocess.DEVNULL)


def qemu_io(path, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    subprocess.run(args + [path], check=True, stdout=subprocess.DEVNULL)


def disk_seeds():
    ops_rw = (u8(7) + b"".join([
        u8(0) + u32(0) + u16(8) + u8(0),     # read 4 KiB at 0
        u8(1) + u32(16) + u16(4) + u8(0xab),  # write 2 KiB at 8 KiB
        u8(0) + u32(16) + u16(4) + u8(0),    # read it back
        u8(2) + u32(0) + u16(16) + u8(0),    # discard 8 KiB
        u8(3) + u32(32) + u16(8) + u8(0),    # write zeroes
        u8(4) + u32(40) + u16(8) + u8(0),    # write zeroes, unmap
        u8(5) + u32(0) + u16(0) + u8(0),     # flush
    ]))
    with tempfile.TemporaryDirectory() as tmp:
        def image(name, *create_opts, size="1M", writes=()):
            p = os.path.join(tmp, name)
            qemu_img("create", "-f", "qcow2", *create_opts, p, size)
            if writes:
                qemu_io(p, *writes)
            with open(p, "rb") as f:
                return f.read()

        small = ["-o", "cluster_size=512"]
        images = {
            "v3-empty": image("a", *small),
            "v3-data": image("b", *small, writes=["write -P 0xab 0 4k", "write -P 0xcd 64k 1k"]),
            "v2-data": image("c", "-o", "cluster_size=512,compat=0.10",
                             writes=["write -P 0x11 512 2k"]),
            "v3-lazy-refcounts": image("d", "-o", "cluster_size=512,lazy_refcounts=on",
                                       writes=["write -P 0x22 0 1k"]),
            "v3-refcount-bits-1": image("e", "-o", "cluster_size=1024,refcount_bits=1",
                                        writes=["write -P 0x33 3k 1k"]),
            "v3-zero-clusters": image("f", *small, writes=["write -P 0x44 0 4k",
                                                            "write -z 1k 2k"]),
        }
        # A backing chain: the overlay names "base.qcow2" (opened read-only by the targets).
        base = os.path.join(tmp, "base.qcow2")
        qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", base, "1M")
        ov = os.path.join(tmp, "overlay.qcow2")
        qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", "-b", "base.qcow2",
                 "-F", "qcow2", ov)
        with open(ov, "rb") as f:
            images["v3-backing"] = f.read()
    # qemu-img writes a feature-name table only with 64 KiB clusters (a 196 KiB file); put one
    # (the dirty, corrupt and lazy-refcounts names QEMU writes) into the small v3 image.
    names = [(0, 0, b"dirty bit"), (0, 1, b"corrupt bit"), (2, 0, b"lazy refcounts")]
    table = b"".join(bytes([k, bit]) + n.ljust(46, b"\0") for k, bit, n in names)
    ext = struct.pack(">II", 0x6803F857, len(table)) + table + bytes(8)
    header_len = struct.unpack(">I", images["v3-empty"][100:104])[0]
    img = bytearray(images["v3-empty"])
    img[header_len:header_len + len(ext)] = ext
    images["v3-feature-table"] = bytes(img)
    for name, data in images.items():
        assert len(data) <= 16 << 10, (name, len(data))
        put("disk_image", name, data)
        put("qcow2_io", name, ops_rw + data)
    put("disk_image", "raw", bytes(512) + b"\x55\xaa" * 8)


def main():
    if os.path.isdir(SEEDS):
        shutil.rmtree(SEEDS)
    blk_seeds()
    net_seeds()
    mmio_seeds()
    pio_seeds()
    dhcp_seeds()
    lease_seeds()
    kernel_seeds()
    disk_seeds()
    for t in sorted(os.listdir(SEEDS)):
        files = os.listdir(os.path.join(SEEDS, t))
        size = sum(os.path.getsize(os.path.join(SEEDS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")


if __name__ == "__main__":
    main()
