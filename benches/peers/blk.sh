#!/usr/bin/env bash
# Side-by-side virtio-blk throughput: the same test guest (guests/test-guest, `test=blk-bench`)
# under hv (examples/boot_linux --disk) and under QEMU (-M microvm, virtio-mmio v2 disk; with
# its defaults, and with aio=io_uring), on the same image file in /dev/shm (page cache: no
# device noise), raw and qcow2.
#
#   benches/peers/blk.sh                 # 3 runs of each case
#   RUNS=5 SIZE_MIB=1024 benches/peers/blk.sh
#
# Figures come from wall time: the host stamps each serial line as it arrives and takes the
# time from `hvtest: blk-bench start ...` to `hvtest: blk-bench done N`, so VMM start-up and
# guest boot are left out. Sequential read/write: 1 MiB requests (MiB/s); random read: 4 KiB
# requests (IOPS). The guest keeps up to 16 (1 MiB) or 32 (4 KiB) requests in flight and polls
# the used ring (no interrupts) from a CPL3 loop (native on PVM hosts, where CPL0 is emulated). The medians of RUNS runs are printed; every run is in the log.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-512}
WORK=${WORK:-/dev/shm/hv-blk-bench.$$}
LOG=${LOG:-$ROOT/target/peers-blk.log}
QEMU=${QEMU:-qemu-system-x86_64}
SEQ_COUNT=${SEQ_COUNT:-8192}      # 1 MiB requests per sequential run
RAND_COUNT=${RAND_COUNT:-400000}  # 4 KiB requests per random-read run

for tool in "$QEMU" qemu-img cargo; do
    command -v "$tool" >/dev/null || { echo "blk.sh: $tool is not installed" >&2; exit 2; }
done
[ -r /dev/kvm ] || { echo "blk.sh: /dev/kvm is not usable" >&2; exit 2; }

echo "building boot_linux (release) and the test guest..." >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build -q --release --example boot_linux)
(cd "$ROOT/guests/test-guest" && env -u RUSTFLAGS cargo build -q --release \
    --target-dir "$TARGET/test-guest")
HV="$TARGET/release/examples/boot_linux"
GUEST="$TARGET/test-guest/x86_64-unknown-linux-gnu/release/test-guest"

mkdir -p "$WORK" "$(dirname "$LOG")"
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"
echo "making a ${SIZE_MIB} MiB raw image of random bytes and a qcow2 copy in $WORK..." >&2
dd if=/dev/urandom of="$WORK/disk.raw" bs=1M count="$SIZE_MIB" status=none
qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"

# Prints "<epoch seconds with microseconds> <line>" for each line of stdin.
stamp() {
    while IFS= read -r line; do
        printf '%s %s\n' "$EPOCHREALTIME" "${line%$'\r'}"
    done
}

# run VMM FORMAT ARGS -> prints the seconds between the start and done lines (or FAIL).
run() {
    local vmm=$1 fmt=$2 args=$3 out
    local cmdline="test=blk-bench $args"
    local aio=""
    [ "$vmm" = qemu-uring ] && aio=",aio=io_uring"
    if [ "$vmm" = hv ] || [ "$vmm" = hv-uring ]; then
        local engine=sync
        [ "$vmm" = hv-uring ] && engine=uring
        out=$(timeout 300 "$HV" --kernel "$GUEST" --mem-mib 128 --cmdline "$cmdline" \
            --disk "$WORK/disk.$fmt,format=$fmt,engine=$engine" 2>&1 | stamp) || true
    else
        out=$(timeout 300 "$QEMU" -M microvm,acpi=on -accel kvm -m 128 -smp 1 -nographic \
            -no-reboot -nodefaults -serial stdio -kernel "$GUEST" -append "$cmdline" \
            -global virtio-mmio.force-legacy=false \
            -drive "id=d0,file=$WORK/disk.$fmt,format=$fmt,if=none$aio" \
            -device virtio-blk-device,drive=d0 2>&1 | stamp) || true
    fi
    printf '=== %s %s %s\n%s\n' "$vmm" "$fmt" "$args" "$out" >>"$LOG"
    local t0 t1
    t0=$(awk '/hvtest: blk-bench start/ {print $1; exit}' <<<"$out")
    t1=$(awk '/hvtest: blk-bench done/ {print $1; exit}' <<<"$out")
    if [ -z "$t0" ] || [ -z "$t1" ] || ! grep -q 'hvtest: blk-bench errors=0 ' <<<"$out"; then
        echo FAIL
    else
        awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f\n", b - a}'
    fi
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else print v[int((NR+1)/2)]}'; }

declare -A RESULT
CASES=("seqread:mode=seqread bs=1048576 count=$SEQ_COUNT:$SEQ_COUNT:1048576"
       "seqwrite:mode=seqwrite bs=1048576 count=$SEQ_COUNT:$SEQ_COUNT:1048576"
       "randread:mode=randread bs=4096 count=$RAND_COUNT:$RAND_COUNT:4096")
for fmt in raw qcow2; do
    for case in "${CASES[@]}"; do
        IFS=: read -r name args count bs <<<"$case"
        for vmm in hv hv-uring qemu qemu-uring; do
            # qcow2 goes through imago's engine whatever the raw engine is.
            [ "$vmm" = hv-uring ] && [ "$fmt" = qcow2 ] && continue
            vals=()
            for ((i = 0; i < RUNS; i++)); do
                t=$(run "$vmm" "$fmt" "$args")
                if [ "$t" = FAIL ]; then
                    echo "blk.sh: $vmm $fmt $name failed; see $LOG" >&2
                    continue
                fi
                if [ "$name" = randread ]; then
                    vals+=("$(awk -v n="$count" -v t="$t" 'BEGIN {printf "%.0f", n / t}')")
                else
                    vals+=("$(awk -v n="$count" -v b="$bs" -v t="$t" \
                        'BEGIN {printf "%.0f", n * b / 1048576 / t}')")
                fi
            done
            RESULT[$vmm,$fmt,$name]=$(printf '%s\n' "${vals[@]}" | median)
            echo "$vmm $fmt $name: ${vals[*]}" >&2
        done
    done
done

printf '\n%-7s %-22s %10s %10s %10s %10s %9s %9s %9s\n' format metric hv hv-uring qemu \
    qemu-uring hv/qemu hv/uring hv-uring/uring
ratio() { awk -v h="$1" -v q="$2" 'BEGIN {if (h != "-" && q + 0 > 0) printf "%.2f", h / q; else print "-"}'; }
for fmt in raw qcow2; do
    for name in seqread seqwrite randread; do
        case $name in
            seqread) metric="seq read 1M (MiB/s)" ;;
            seqwrite) metric="seq write 1M (MiB/s)" ;;
            randread) metric="rand read 4K (IOPS)" ;;
        esac
        h=${RESULT[hv,$fmt,$name]} q=${RESULT[qemu,$fmt,$name]} u=${RESULT[qemu-uring,$fmt,$name]}
        hu=${RESULT[hv-uring,$fmt,$name]:--}
        printf '%-7s %-22s %10s %10s %10s %10s %9s %9s %9s\n' "$fmt" "$metric" "$h" "$hu" "$q" \
            "$u" "$(ratio "$h" "$q")" "$(ratio "$h" "$u")" "$(ratio "$hu" "$u")"
    done
done
echo "(medians of $RUNS runs; ${SIZE_MIB} MiB image in /dev/shm; log: $LOG)"
