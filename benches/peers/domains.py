#!/usr/bin/env python3
"""Domain operations side by side: hvd + hvctl against libvirtd + virsh (QEMU), the same test
guest booted by direct kernel boot, runs alternating between the two so load hits both.

For each run: `define` + `start` until the guest's first serial line is in its file, then
`suspend`/`resume`, `save` to a file and `restore` from it, then `destroy`, then `undefine`;
prints min/median/max per operation and the median ratio hv/libvirt.

usage: domains.py RUNS HVCTL GUEST_ELF
Needs libvirtd running with qemu:///system (see benches/peers/README.md) and root.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

NEEDLE = b"hvtest: boot"


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_line(path, deadline_s=60):
    t_end = time.perf_counter() + deadline_s
    while time.perf_counter() < t_end:
        try:
            with open(path, "rb") as f:
                if NEEDLE in f.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    raise SystemExit(f"no {NEEDLE!r} in {path}")


def xml(name, guest, serial, libvirt):
    emulator = "<emulator>/usr/bin/qemu-system-x86_64</emulator>" if libvirt else ""
    return f"""<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type><kernel>{guest}</kernel><cmdline>test=power-button</cmdline></os>
<devices>{emulator}<serial type='file'><source path='{serial}'/><target port='0'/></serial></devices>
</domain>"""


def once(tool, name, guest, work, libvirt):
    serial = os.path.join(work, f"{name}.serial")
    if os.path.exists(serial):
        os.unlink(serial)
    path = os.path.join(work, f"{name}.xml")
    with open(path, "w") as f:
        f.write(xml(name, guest, serial, libvirt))
    t = {}
    t0 = time.perf_counter()
    run(tool + ["define", path])
    run(tool + ["start", name])
    wait_line(serial)
    t["define+start -> first line"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(tool + ["suspend", name])
    t["suspend"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(tool + ["resume", name])
    t["resume"] = time.perf_counter() - t0
    state = os.path.join(work, f"{name}.save")
    t0 = time.perf_counter()
    run(tool + ["save", name, state])
    t["save"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(tool + ["restore", state])
    t["restore"] = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", state], check=True)
    t0 = time.perf_counter()
    run(tool + ["destroy", name])
    t["destroy"] = time.perf_counter() - t0
    run(tool + ["undefine", name])
    return t


def main():
    runs, hvctl, guest = int(sys.argv[1]), sys.argv[2], os.path.abspath(sys.argv[3])
    work = tempfile.mkdtemp(prefix="domains-bench-")
    os.chmod(work, 0o755)
    hv = [hvctl, "--state-dir", os.path.join(work, "hv")]
    lv = ["virsh", "-q", "-c", "qemu:///system"]
    res = {"hv": {}, "libvirt": {}}
    for i in range(runs + 1):
        for label, tool, lib in (("hv", hv, False), ("libvirt", lv, True)):
            t = once(tool, f"bench{i}", guest, work, lib)
            if i == 0:
                continue  # warm-up
            for k, v in t.items():
                res[label].setdefault(k, []).append(v * 1000)
    for k in res["hv"]:
        h, l = res["hv"][k], res["libvirt"][k]
        hm, lm = statistics.median(h), statistics.median(l)
        print(f"{k:28} hv {hm:8.1f} ms (min {min(h):.1f} max {max(h):.1f})   "
              f"libvirt {lm:8.1f} ms (min {min(l):.1f} max {max(l):.1f})   hv/libvirt {hm / lm:.3f}")


main()
