#!/usr/bin/env python3
"""Density: how many idle 64 MiB test-guest domains one hvd runs, and what each costs beyond
its guest's pages.

Starts hvd on a fresh state directory, then defines and starts domains (the test guest with
`test=hlt`: it says so and halts with interrupts off, so its vCPU sleeps in KVM; the
`power-button` mode polls a port and is not idle) one after another until COUNT run or a start
fails.
Reports hvd's RSS, and per domain the hv-vmm process's RSS split into the guest RAM mapping's
resident pages and everything else (the VMM's own memory), from /proc/PID/smaps_rollup and
/proc/PID/smaps.

usage: density.py COUNT HVD HVCTL GUEST_ELF
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

GUEST_MIB = 64


def kib(status_path, field):
    with open(status_path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def private_kib(pid):
    """Private_Clean + Private_Dirty of the whole process (pages no other process shares)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def guest_rss_kib(pid):
    """Resident KiB of the mappings sized like guest RAM (the guest's pages)."""
    total, size, rss = 0, None, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "Size:":
                size = int(parts[1])
            elif parts[0] == "Rss:" and size == GUEST_MIB * 1024:
                total += int(parts[1])
    return total


def main():
    count, hvd, hvctl, guest = int(sys.argv[1]), sys.argv[2], sys.argv[3], os.path.abspath(sys.argv[4])
    work = tempfile.mkdtemp(prefix="density-bench-")
    state = os.path.join(work, "hv")
    os.makedirs(state)
    d = subprocess.Popen([hvd, "--state-dir", state, "--log-file", os.path.join(work, "hvd.log")])
    sock = os.path.join(state, "hvd.sock")
    while not os.path.exists(sock):
        time.sleep(0.01)
    ctl = [hvctl, "-c", f"hv+unix://{sock}"]
    started = 0
    t0 = time.perf_counter()
    try:
        for i in range(count):
            name = f"d{i}"
            serial = os.path.join(work, f"{name}.serial")
            path = os.path.join(work, f"{name}.xml")
            with open(path, "w") as f:
                f.write(f"""<domain type='kvm'><name>{name}</name><memory unit='MiB'>{GUEST_MIB}</memory>
<vcpu>1</vcpu><os><type>hvm</type><kernel>{guest}</kernel><cmdline>test=hlt</cmdline></os>
<devices><serial type='file'><source path='{serial}'/></serial></devices></domain>""")
            subprocess.run(ctl + ["define", path], check=True, stdout=subprocess.DEVNULL)
            r = subprocess.run(ctl + ["start", name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                print(f"start of domain {i + 1} failed: {r.stderr.decode().strip()}")
                break
            started += 1
        elapsed = time.perf_counter() - t0
        time.sleep(2)  # let the last guests reach their idle loop
        pids = []
        for i in range(started):
            with open(os.path.join(state, "run", f"d{i}.json")) as f:
                import json
                pids.append(json.load(f)["process"]["pid"])
        running = [p for p in pids if os.path.exists(f"/proc/{p}")]
        rss = [kib(f"/proc/{p}/status", "VmRSS") for p in running]
        guest_rss = [guest_rss_kib(p) for p in running]
        beyond = [r - g for r, g in zip(rss, guest_rss)]
        private = [private_kib(p) - g for p, g in zip(running, guest_rss)]
        hvd_rss = kib(f"/proc/{d.pid}/status", "VmRSS")
        print(f"domains started: {started} of {count} in {elapsed:.1f} s; running now: {len(running)}")
        print(f"hvd RSS: {hvd_rss / 1024:.1f} MiB")
        print(f"per domain: hv-vmm RSS median {statistics.median(rss) / 1024:.1f} MiB, "
              f"guest pages resident median {statistics.median(guest_rss) / 1024:.1f} MiB, "
              f"beyond guest pages median {statistics.median(beyond) / 1024:.2f} MiB "
              f"(min {min(beyond) / 1024:.2f} max {max(beyond) / 1024:.2f}); "
              f"private beyond guest pages median {statistics.median(private) / 1024:.2f} MiB "
              f"(binary text and libraries are shared between the VMMs)")
        with open("/proc/meminfo") as f:
            avail = next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:"))
        print(f"host MemAvailable with them running: {avail / 1024 / 1024:.1f} GiB")
    finally:
        for i in range(started):
            subprocess.run(ctl + ["destroy", f"d{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d.terminate()
        d.wait()


main()
