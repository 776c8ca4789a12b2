#!/usr/bin/env bash
# Side-by-side VMM figures on this host, in one run:
#   - the raw-ioctl floor (raw_kvm.c) vs hv's criterion benches: VM create+destroy, PIO and
#     MMIO exit round trips (the same 4-instruction guest loop in both);
#   - launch to the test guest's first serial line and peak RSS, hv's boot_linux vs QEMU
#     microvm running the very same PVH binary.
# Needs: gcc, python3, qemu-system-x86 (Debian's), /dev/kvm. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-15}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

(cd guests/test-guest && cargo build -q --release)
guest=$PWD/guests/test-guest/target/x86_64-unknown-linux-gnu/release/test-guest
cargo build -q --release --example boot_linux
hv=$PWD/target/release/examples/boot_linux
cc -O2 -o "$OUT/raw_kvm" benches/peers/raw_kvm.c

echo "== raw-ioctl floor"
"$OUT/raw_kvm" create 50
"$OUT/raw_kvm" pio 100000
"$OUT/raw_kvm" mmio 100000
echo "== hv (criterion)"
cargo bench -q --bench vmm -- --noplot 2>/dev/null | grep -E "^[a-z_]+ +time:|^ +time:" || true
echo "== raw-ioctl floor again (drift check)"
"$OUT/raw_kvm" create 50
"$OUT/raw_kvm" pio 100000
"$OUT/raw_kvm" mmio 100000

echo "== launch to first serial line ($RUNS runs each)"
printf 'hv:   '
python3 benches/peers/first_line.py "$RUNS" "hvtest: boot" \
    "$hv" --kernel "$guest" --mem-mib 128 --cmdline test=poweroff
printf 'qemu: '
python3 benches/peers/first_line.py "$RUNS" "hvtest: boot" \
    qemu-system-x86_64 -M microvm,acpi=on -accel kvm -m 128 -nographic -no-reboot \
    -kernel "$guest" -append test=poweroff

echo "== peak RSS, launch to power-off (KiB, includes the guest's touched pages)"
for i in 1 2 3; do
    /usr/bin/time -f "hv   %M" "$hv" --kernel "$guest" --mem-mib 128 --cmdline test=poweroff \
        2>&1 >/dev/null | tail -1
    /usr/bin/time -f "qemu %M" qemu-system-x86_64 -M microvm,acpi=on -accel kvm -m 128 \
        -nographic -no-reboot -kernel "$guest" -append test=poweroff 2>&1 >/dev/null | tail -1
done
