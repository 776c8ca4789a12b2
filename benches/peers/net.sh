#!/usr/bin/env bash
# Side-by-side virtio-net: the same test guest (guests/test-guest, `test=net-bench`) under hv (examples/boot_linux --net tap=NAME) and under QEMU (-M microvm, virtio-mmio
# v2 virtio-net-device on a TAP netdev, vhost=off: vhost-net is absent here), on a TAP inside a
# network namespace this script creates and removes. Needs root.
#
#   benches/peers/net.sh                    # 3 runs of each case
#   RUNS=5 COUNT_SMALL=2000000 benches/peers/net.sh
#
# The guest fills its TX ring (256 entries) with one frame per slot, addressed to a MAC nobody
# has with EtherType 0x88b5 (the host's stack drops it on arrival), and keeps the ring full,
# re-queueing each slot as it comes back, with EVENT_IDX so it notifies only an idle device; the
# loop runs at CPL3 (native on PVM hosts, where guest CPL0 is emulated). Frames and bytes are
# counted on the host side of the TAP (/sys/class/net/NAME/statistics/rx_packets, rx_bytes)
# over the run; time is wall time between the guest's `net-bench start` and `net-bench done`
# lines, stamped by the host as they arrive (VMM start-up and guest boot are left out).
# Mbit/s counts Ethernet frame bytes (no preamble, no FCS). Runs alternate between the VMMs.
#
# Host -> guest (RX): net_gen.c (built here with cc) sends COUNT_RX 64-byte frames to the
# guest's MAC out of the TAP's host side as fast as it can (AF_PACKET, sendmmsg); the TAP drops
# what the VMM does not read in time. The guest (`mode=rx`, also at CPL3) counts what arrives;
# the figure is frames delivered per second of the generator's run, beside what it offered.
# On 2 cores the generator, the guest's polling vCPU and the VMM's device thread share the
# CPUs, so this is a loaded figure for both VMMs.
#
# The medians of RUNS runs are printed; every run is in the log.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-3}
COUNT_SMALL=${COUNT_SMALL:-1000000}  # 64-byte frames per run
COUNT_LARGE=${COUNT_LARGE:-300000}   # 1514-byte frames per run
COUNT_RX=${COUNT_RX:-1000000}        # 64-byte frames the generator sends per RX run
GUEST_MAC=52:54:00:12:34:56          # QEMU's default; hv is given the same
LOG=${LOG:-$ROOT/target/peers-net.log}
QEMU=${QEMU:-qemu-system-x86_64}
NS=hvnb-$$
TAP=hvnb0

for tool in "$QEMU" cargo ip cc; do
    command -v "$tool" >/dev/null || { echo "net.sh: $tool is not installed" >&2; exit 2; }
done
[ -r /dev/kvm ] || { echo "net.sh: /dev/kvm is not usable" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "net.sh: needs root (network namespace, TAP)" >&2; exit 2; }

echo "building boot_linux (release) and the test guest..." >&2
(cd "$ROOT" && cargo build -q --release --example boot_linux)
(cd "$ROOT/guests/test-guest" && env -u RUSTFLAGS cargo build -q --release \
    --target-dir "$ROOT/target/test-guest")
HV="$ROOT/target/release/examples/boot_linux"
GUEST="$ROOT/target/test-guest/x86_64-unknown-linux-gnu/release/test-guest"

WORK=$(mktemp -d)
trap 'ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cc -O2 -o "$WORK/net_gen" "$ROOT/benches/peers/net_gen.c"
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
# A persistent TAP both VMMs open by name; IPv6 off so the host sends the guest nothing.
in_ns ip tuntap add dev "$TAP" mode tap vnet_hdr
in_ns sh -c "echo 1 > /proc/sys/net/ipv6/conf/$TAP/disable_ipv6"
in_ns ip link set "$TAP" up

# Prints "<epoch seconds with microseconds> <line>" for each line of stdin.
stamp() {
    while IFS= read -r line; do
        printf '%s %s\n' "$EPOCHREALTIME" "${line%$'\r'}"
    done
}

stat() { in_ns cat "/sys/class/net/$TAP/statistics/$1"; }

# vmm VMM CMDLINE: runs the test guest under VMM with one NIC on the TAP (in the namespace).
vmm() {
    if [ "$1" = hv ]; then
        in_ns timeout 300 "$HV" --kernel "$GUEST" --mem-mib 128 --cmdline "$2" \
            --net "tap=$TAP,mac=$GUEST_MAC"
    else
        # acpi=on: the guest powers off through the FADT (with acpi=off microvm has no way
        # to), and finds the virtio-mmio windows by scanning microvm's range.
        in_ns timeout 300 "$QEMU" -M microvm,acpi=on -accel kvm -m 128 -smp 1 \
            -nographic -no-reboot -nodefaults -serial stdio -kernel "$GUEST" \
            -append "$2" -global virtio-mmio.force-legacy=false \
            -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=off" \
            -device "virtio-net-device,netdev=n0,mac=$GUEST_MAC"
    fi
}

# run VMM SIZE COUNT -> prints "<seconds> <frames> <bytes>" (or FAIL).
run() {
    local vmm=$1 size=$2 count=$3 out p0 b0 p1 b1
    local cmdline="test=net-bench mode=tx size=$size count=$count"
    p0=$(stat rx_packets) b0=$(stat rx_bytes)
    out=$(vmm "$vmm" "$cmdline" 2>&1 | stamp) || true
    p1=$(stat rx_packets) b1=$(stat rx_bytes)
    printf '=== %s %s\n%s\n(tap rx_packets +%s rx_bytes +%s)\n' "$vmm" "$cmdline" "$out" \
        $((p1 - p0)) $((b1 - b0)) >>"$LOG"
    local t0 t1
    t0=$(awk '/hvtest: net-bench start/ {print $1; exit}' <<<"$out")
    t1=$(awk '/hvtest: net-bench done/ {print $1; exit}' <<<"$out")
    if [ -z "$t0" ] || [ -z "$t1" ] || ! grep -q "hvtest: net-bench done $count" <<<"$out"; then
        echo FAIL
    else
        awk -v a="$t0" -v b="$t1" -v p=$((p1 - p0)) -v by=$((b1 - b0)) \
            'BEGIN {printf "%.6f %d %d\n", b - a, p, by}'
    fi
}

# run_rx VMM -> prints "<frames delivered> <generator seconds> <frames sent>" (or FAIL).
run_rx() {
    local vmm=$1 out="$WORK/rx.out" pid gen i
    vmm "$vmm" "test=net-bench mode=rx count=$COUNT_RX idle=2" >"$out" 2>&1 &
    pid=$!
    for ((i = 0; i < 600; i++)); do
        grep -qs 'hvtest: net-bench start' "$out" && break
        sleep 0.05
    done
    gen=$(in_ns "$WORK/net_gen" "$TAP" "$GUEST_MAC" 64 "$COUNT_RX" 2>&1) || true
    wait "$pid" || true
    printf '=== %s rx\n%s\n(generator: %s)\n' "$vmm" "$(cat "$out")" "$gen" >>"$LOG"
    local got
    got=$(awk '/hvtest: net-bench done/ {print $4; exit}' "$out")
    if [ -z "$got" ] || [[ "$gen" != sent* ]]; then
        echo FAIL
    else
        echo "$got $(awk '{print $3, $2}' <<<"$gen")"
    fi
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else print v[int((NR+1)/2)]}'; }

# Runs alternate between the VMMs (hv, QEMU, hv, ...) so that a change in the machine's load
# during the script hits both alike.
declare -A PPS MBPS
for case in "64:$COUNT_SMALL" "1514:$COUNT_LARGE"; do
    IFS=: read -r size count <<<"$case"
    declare -A pps=() mbps=()
    for ((i = 0; i < RUNS; i++)); do
        for vmm in hv qemu; do
            r=$(run "$vmm" "$size" "$count")
            if [ "$r" = FAIL ]; then
                echo "net.sh: $vmm size $size failed; see $LOG" >&2
                continue
            fi
            read -r t frames bytes <<<"$r"
            if [ "$frames" -lt "$count" ]; then
                echo "net.sh: $vmm size $size: the TAP saw $frames of $count frames" >&2
            fi
            pps[$vmm]+="$(awk -v n="$frames" -v t="$t" 'BEGIN {printf "%.0f", n / t}') "
            mbps[$vmm]+="$(awk -v b="$bytes" -v t="$t" 'BEGIN {printf "%.0f", b * 8 / t / 1e6}') "
        done
    done
    for vmm in hv qemu; do
        PPS[$vmm,$size]=$(tr ' ' '\n' <<<"${pps[$vmm]:-}" | grep . | median)
        MBPS[$vmm,$size]=$(tr ' ' '\n' <<<"${mbps[$vmm]:-}" | grep . | median)
        echo "$vmm ${size}B: pps ${pps[$vmm]:-}; Mbit/s ${mbps[$vmm]:-}" >&2
    done
    unset pps mbps
done

declare -A RX OFFERED rx=() offered=()
for ((i = 0; i < RUNS; i++)); do
    for vmm in hv qemu; do
        r=$(run_rx "$vmm")
        if [ "$r" = FAIL ]; then
            echo "net.sh: $vmm rx failed; see $LOG" >&2
            continue
        fi
        read -r got secs sent <<<"$r"
        rx[$vmm]+="$(awk -v n="$got" -v t="$secs" 'BEGIN {printf "%.0f", n / t}') "
        offered[$vmm]+="$(awk -v n="$sent" -v t="$secs" 'BEGIN {printf "%.0f", n / t}') "
    done
done
for vmm in hv qemu; do
    RX[$vmm]=$(tr ' ' '\n' <<<"${rx[$vmm]:-}" | grep . | median)
    OFFERED[$vmm]=$(tr ' ' '\n' <<<"${offered[$vmm]:-}" | grep . | median)
    echo "$vmm rx 64B: delivered pps ${rx[$vmm]:-}; offered pps ${offered[$vmm]:-}" >&2
done

ratio() { awk -v h="$1" -v q="$2" 'BEGIN {if (q + 0 > 0) printf "%.2f", h / q; else print "-"}'; }
printf '\n%-34s %12s %12s %8s\n' "guest -> host (TX)" hv qemu hv/qemu
for size in 64 1514; do
    printf '%-34s %12s %12s %8s\n' "${size}-byte frames, packets/s" "${PPS[hv,$size]}" \
        "${PPS[qemu,$size]}" "$(ratio "${PPS[hv,$size]}" "${PPS[qemu,$size]}")"
    printf '%-34s %12s %12s %8s\n' "${size}-byte frames, Mbit/s" "${MBPS[hv,$size]}" \
        "${MBPS[qemu,$size]}" "$(ratio "${MBPS[hv,$size]}" "${MBPS[qemu,$size]}")"
done
printf '%-34s %12s %12s %8s\n' "host -> guest (RX)" hv qemu hv/qemu
printf '%-34s %12s %12s %8s\n' "64-byte frames delivered, pkts/s" "${RX[hv]}" "${RX[qemu]}" \
    "$(ratio "${RX[hv]}" "${RX[qemu]}")"
printf '%-34s %12s %12s\n' "  (offered by the generator)" "${OFFERED[hv]}" "${OFFERED[qemu]}"
echo "(medians of $RUNS runs; TX: $COUNT_SMALL 64-byte / $COUNT_LARGE 1514-byte frames per" \
    "run, counted on the host TAP; RX: $COUNT_RX frames offered; log: $LOG)"
