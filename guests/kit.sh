#!/usr/bin/env bash
# Builds the guest kit into guests/cache/ (gitignored), from Debian packages only:
#   vmlinuz-debian   Debian's stock cloud kernel (linux-image-cloud-amd64), unmodified
#   debian-modules/  that kernel's virtio modules (virtio_mmio, virtio_pci, virtio_blk, virtio_net...)
#   vmlinux-mini     a minimal PVH kernel from linux-source-6.1 + guests/linux-mini.config
#   initramfs.cpio   uncompressed newc cpio: busybox-static, /dev/console, /init
#   initramfs-debian.cpio  the same plus debian-modules/ (its /init loads them)
#   initramfs-tiny.cpio    /dev/console and a 1 KB /init (C, no libc): HV-INIT-OK, power off
#
# Idempotent and cached: each artifact carries a stamp keyed on a hash of the code that builds
# it, its inputs (the config fragment, the package versions); a second run only checks stamps.
# Usage: guests/kit.sh [--force]   (HV_GUEST_KIT=DIR overrides the cache directory)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HV_GUEST_KIT:-$HERE/cache}
FRAGMENT=$HERE/linux-mini.config
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

log() { printf 'kit: %s\n' "$*" >&2; }
die() { printf 'kit: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one kit build at a time (parallel test runs may call this script)

# --- helpers ---------------------------------------------------------------------------------

# Installs the Debian packages given that are not installed yet.
need_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=900)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" \
        || { apt-get -q -o DPkg::Lock::Timeout=900 update \
            && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}"; } \
        || die "cannot install ${missing[*]}"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# The cache key of an artifact: a hash of the named function's source and any extra inputs.
key_of() {
    local fn=$1
    shift
    { declare -f "$fn"; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1
}

# True when artifact $1 exists and its stamp holds key $2.
fresh() {
    ((FORCE == 0)) && [[ -e $CACHE/$1 && -f $CACHE/.stamp-$1 && $(<"$CACHE/.stamp-$1") == "$2" ]]
}

stamp() { printf '%s' "$2" >"$CACHE/.stamp-$1"; }

# --- Debian's stock cloud kernel ---------------------------------------------------------------

# The stock kernel's virtio modules, in load order (each after those it depends on).
VIRTIO_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
virtio_mmio virtio_blk failover net_failover virtio_net"

build_debian() {
    local pkg=$1 tmp
    tmp=$(mktemp -d "$CACHE/.debian.XXXXXX")
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
    dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
    cp "$tmp"/root/boot/vmlinuz-* "$CACHE/vmlinuz-debian.new"
    # Keep only the virtio modules (with what they depend on) and the kernel's module lists.
    local moddir kver m pattern=()
    moddir=$(echo "$tmp"/root/lib/modules/*)
    kver=$(basename "$moddir")
    rm -rf "$CACHE/debian-modules"
    mkdir -p "$CACHE/debian-modules/$kver"
    for m in $VIRTIO_MODULES; do pattern+=(-o -name "$m.ko*"); done
    (cd "$moddir" && find kernel \( "${pattern[@]:1}" \) -print0 \
        | cpio -0 -pdm --quiet "$CACHE/debian-modules/$kver")
    cp "$moddir"/modules.{order,builtin} "$CACHE/debian-modules/$kver/" 2>/dev/null || true
    printf '%s\n' $VIRTIO_MODULES >"$CACHE/debian-modules/load-order"
    mv "$CACHE/vmlinuz-debian.new" "$CACHE/vmlinuz-debian"
    rm -rf "$tmp"
}

debian_kernel() {
    # linux-image-cloud-amd64 is a metapackage: resolve the real image package it depends on.
    local pkg key
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [[ -z $pkg ]]; then
        apt-get -q update >&2 || true
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [[ -n $pkg ]] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
    key=$(key_of build_debian "$pkg" "$VIRTIO_MODULES" "$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')")
    fresh vmlinuz-debian "$key" && return 0
    log "fetching $pkg"
    build_debian "$pkg"
    stamp vmlinuz-debian "$key"
}

# --- the minimal kernel ----------------------------------------------------------------------

build_mini() {
    local build=$CACHE/build src
    rm -rf "$build"
    mkdir -p "$build"
    log "unpacking /usr/src/linux-source-6.1.tar.xz"
    tar -C "$build" -xf /usr/src/linux-source-6.1.tar.xz
    src=$(echo "$build"/linux-source-*)
    (
        cd "$src"
        nice make -s tinyconfig >&2
        # tinyconfig is 32-bit: the fragment turns on 64BIT and everything we need, and its
        # `is not set` lines keep out what olddefconfig would pull in.
        ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null
        nice make -s olddefconfig >&2
        local line missing=0
        while read -r line; do
            grep -qx "$line" .config || { log "config lacks $line"; missing=1; }
        done < <(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$FRAGMENT")
        ((missing == 0)) || die "Kconfig dropped options of $FRAGMENT (see above)"
        log "make -j2 vmlinux (a few minutes)"
        nice make -s -j2 vmlinux >&2
        readelf -n vmlinux | grep -q 'Xen.*0x00000012' || die "vmlinux has no PVH entry note"
        cp vmlinux "$CACHE/vmlinux-mini.new"
        cp .config "$CACHE/vmlinux-mini.config"
    )
    mv "$CACHE/vmlinux-mini.new" "$CACHE/vmlinux-mini"
    rm -rf "$build"
}

mini_kernel() {
    local key
    key=$(key_of build_mini "$(<"$FRAGMENT")" "$(pkg_version linux-source-6.1)" "$(pkg_version gcc)")
    fresh vmlinux-mini "$key" && return 0
    build_mini
    stamp vmlinux-mini "$key"
}

# --- the initramfs ---------------------------------------------------------------------------

# The /init of the initramfs. On this host (PVM) guest user space cannot run, so a Linux guest
# stops at "Run /init"; on a hardware-KVM host it runs this.
INIT_SCRIPT='#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo HV-INIT-OK
# initramfs-debian.cpio carries the stock kernel'"'"'s virtio modules: load them, in order.
if [ -f /lib/modules/load-order ]; then
    for m in $(cat /lib/modules/load-order); do
        f=$(find /lib/modules -name "$m.ko*" | head -n 1)
        [ -n "$f" ] && insmod "$f"
    done
    echo HV-MODULES-LOADED
    sleep 1
fi
if [ -b /dev/vda ]; then
    # The sector to write: hv.disk_sector=N on the kernel command line, else the last one.
    sector=$(sed -n "s/.*hv\.disk_sector=\([0-9]*\).*/\1/p" /proc/cmdline)
    [ -n "$sector" ] || sector=$(($(cat /sys/block/vda/size) - 1))
    echo "HV-DISK-SECTOR $sector"
    dd if=/dev/urandom of=/tmp/pattern bs=512 count=1 2>/dev/null
    if dd if=/tmp/pattern of=/dev/vda bs=512 seek="$sector" count=1 conv=fsync 2>/dev/null \
        && blockdev --flushbufs /dev/vda \
        && dd if=/dev/vda of=/tmp/back bs=512 skip="$sector" count=1 2>/dev/null \
        && cmp -s /tmp/pattern /tmp/back; then
        echo HV-DISK-OK
    else
        echo HV-DISK-FAIL
    fi
fi
# No address from the kernel (ip=dhcp)? Ask for one from user space.
if [ -e /sys/class/net/eth0 ] && ! ip -o -4 addr show dev eth0 | grep -q inet; then
    ip link set eth0 up
    if udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1; then
        echo "HV-DHCP-OK $(ip -o -4 addr show dev eth0 | sed -n "s/.* inet \([0-9.]*\).*/\1/p")"
    else
        echo HV-DHCP-FAIL
    fi
fi
echo HV-NET-BEGIN
ip -o link
ip -o addr
echo HV-NET-END
poweroff -f
'

# udhcpc's hook: applies the lease it got.
UDHCPC_SCRIPT='#!/bin/busybox sh
case "$1" in
bound | renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
'

# Builds initramfs file $1; with $2, a directory of kernel modules to put in /lib/modules.
build_initramfs() {
    local out=$1 modules=${2:-} root
    root=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,root}
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in $("$root/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    printf '%s' "$INIT_SCRIPT" >"$root/init"
    printf '%s' "$UDHCPC_SCRIPT" >"$root/etc/udhcpc.script"
    chmod 755 "$root/init" "$root/etc/udhcpc.script"
    if [[ -n $modules ]]; then
        mkdir -p "$root/lib"
        cp -a "$modules" "$root/lib/modules"
    fi
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        >"$CACHE/$out.new"
    mv "$CACHE/$out.new" "$CACHE/$out"
    rm -rf "$root"
}

initramfs() {
    local key
    key=$(key_of build_initramfs "$INIT_SCRIPT" "$UDHCPC_SCRIPT" "$(pkg_version busybox-static)")
    fresh initramfs.cpio "$key" && return 0
    log "building initramfs.cpio"
    build_initramfs initramfs.cpio
    stamp initramfs.cpio "$key"
}

# A tiny /init in C without libc: says HV-INIT-OK and powers off. Its initramfs unpacks at
# once, where the busybox one takes the emulated kernel of a PVM host most of a minute.
TINY_INIT_C='/* /init of initramfs-tiny.cpio (built by guests/kit.sh). */
static long sys(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

void _start(void)
{
    static const char msg[] = "HV-INIT-OK\n";
    sys(1, 1, (long)msg, sizeof msg - 1);                 /* write(1, ...) */
    sys(162, 0, 0, 0);                                    /* sync() */
    sys(169, 0xfee1dead, 672274793, 0x4321fedc);          /* reboot(POWER_OFF) */
    for (;;)
        sys(60, 0, 0, 0);                                 /* exit(0) */
}
'

build_initramfs_tiny() {
    local root
    root=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
    mkdir -p "$root/dev"
    mknod -m 600 "$root/dev/console" c 5 1
    printf '%s' "$TINY_INIT_C" >"$root/init.c"
    gcc -static -nostdlib -Os -fno-stack-protector -fno-asynchronous-unwind-tables \
        -Wl,--build-id=none -s -o "$root/init" "$root/init.c"
    rm "$root/init.c"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        >"$CACHE/initramfs-tiny.cpio.new"
    mv "$CACHE/initramfs-tiny.cpio.new" "$CACHE/initramfs-tiny.cpio"
    rm -rf "$root"
}

initramfs_tiny() {
    local key
    key=$(key_of build_initramfs_tiny "$TINY_INIT_C" "$(pkg_version gcc)")
    fresh initramfs-tiny.cpio "$key" && return 0
    log "building initramfs-tiny.cpio"
    build_initramfs_tiny
    stamp initramfs-tiny.cpio "$key"
}

# The same initramfs plus the stock kernel's virtio modules (after debian_kernel).
initramfs_debian() {
    local key
    key=$(key_of build_initramfs "$INIT_SCRIPT" "$UDHCPC_SCRIPT" "$(pkg_version busybox-static)" \
        "$(<"$CACHE/.stamp-vmlinuz-debian")")
    fresh initramfs-debian.cpio "$key" && return 0
    log "building initramfs-debian.cpio"
    build_initramfs initramfs-debian.cpio "$CACHE/debian-modules"
    stamp initramfs-debian.cpio "$key"
}

# --- main ------------------------------------------------------------------------------------

need_pkgs busybox-static cpio xz-utils linux-source-6.1 make gcc flex bison bc libelf-dev binutils

initramfs
initramfs_tiny
debian_kernel
initramfs_debian
mini_kernel

for f in vmlinuz-debian vmlinux-mini initramfs.cpio initramfs-tiny.cpio initramfs-debian.cpio \
    debian-modules; do
    printf '%s\n' "$CACHE/$f"
done
