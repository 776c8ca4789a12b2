#!/usr/bin/env bash
# VM state side by side, hv vs QEMU 7.2 (microvm), on the same test guest (`test=dirty`:
# it rewrites PAGES pages in a loop and checks them) in a MEM_MIB guest:
#   - snapshot of the paused guest to a file (hv: Vm::snapshot; QEMU: migrate "exec:cat > F");
#   - restore to running, and to the guest's next serial line (hv: VmBuilder::restore, RAM
#     mapped private from the file; QEMU: -incoming "exec:cat F", which reads it all);
#   - live migration over a Unix socket while the guest dirties memory: total time and
#     downtime (hv: pre-copy, 100 ms budget; QEMU: migrate unix: with downtime-limit 100 ms
#     and no bandwidth cap).
# Then the same through the processes, side by side: the `hv-vmm` binary and Cloud Hypervisor
# (same flags, same REST API, one driver: vmstate_vmm.py): vm.snapshot, vm.restore + vm.resume,
# --restore from launch, vm.send-migration/vm.receive-migration over unix:, and each process's
# resident memory outside guest RAM.
# Files go to /dev/shm (page cache, so the figures are the VMMs', not a disk's).
# Needs: qemu-system-x86 (Debian's 7.2), python3, /dev/kvm. Run from anywhere.
# CH=/path/to/cloud-hypervisor adds Cloud Hypervisor (a local build: see README.md, "VM state").
set -euo pipefail
cd "$(dirname "$0")/../.."
MEM_MIB=${MEM_MIB:-256}
PAGES=${PAGES:-4096}
RUNS=${RUNS:-3}
WORK=$(mktemp -d /dev/shm/hv-vmstate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

(cd guests/test-guest && cargo build -q --release)
guest=$PWD/guests/test-guest/target/x86_64-unknown-linux-gnu/release/test-guest
cargo build -q --release --example vmstate_bench
hv=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/vmstate_bench
cargo build -q --release --bin hv-vmm
hv_vmm=${CARGO_TARGET_DIR:-$PWD/target}/release/hv-vmm

for i in $(seq "$RUNS"); do
    echo "== run $i: hv"
    rm -rf "$WORK/hv-snap"
    "$hv" "$guest" "$MEM_MIB" "$PAGES" "$WORK/hv-snap"
    echo "== run $i: qemu"
    python3 benches/peers/vmstate_qemu.py "$guest" "$MEM_MIB" "$PAGES" "$WORK"
    echo "== run $i: hv-vmm (process, REST API)"
    python3 benches/peers/vmstate_vmm.py hv-vmm "$hv_vmm" "$guest" "$MEM_MIB" "$PAGES" "$WORK"
    if [ -n "${CH:-}" ]; then
        echo "== run $i: cloud-hypervisor (process, REST API)"
        python3 benches/peers/vmstate_vmm.py ch "$CH" "$guest" "$MEM_MIB" "$PAGES" "$WORK"
    fi
    rm -rf "$WORK"/*-snap
done
