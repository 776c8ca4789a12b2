#!/usr/bin/env python3
"""QEMU 7.2's side of vmstate.sh: snapshot ("migrate exec:cat > file"), restore
("-incoming exec:cat file") and live migration ("migrate unix:" to "-incoming unix:") of the
test guest dirtying memory, driven over QMP. Prints one name=value line per figure.

usage: vmstate_qemu.py GUEST_ELF MEM_MIB PAGES WORKDIR
"""
import json
import os
import socket
import subprocess
import sys
import time

guest, mib, pages, work = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]


def qemu(name, extra):
    serial = os.path.join(work, name + ".serial")
    qmp = os.path.join(work, name + ".qmp")
    for p in (serial, qmp):
        if os.path.exists(p):
            os.unlink(p)
    cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "kvm", "-m", mib,
           "-smp", "1", "-display", "none", "-no-reboot", "-kernel", guest,
           "-append", f"test=dirty pages={pages} every=8",
           "-serial", "file:" + serial, "-qmp", f"unix:{qmp},server=on,wait=off"] + extra
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, serial, qmp


class Qmp:
    def __init__(self, path):
        deadline = time.time() + 30
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.002)
        self.f = self.s.makefile("rw")
        self.f.readline()
        # Asynchronous events seen so far, by name: the timestamp (s) of the last of each.
        self.events = {}
        self.cmd("qmp_capabilities")

    def read(self):
        r = json.loads(self.f.readline())
        if "event" in r:
            ts = r["timestamp"]
            self.events[r["event"]] = ts["seconds"] + ts["microseconds"] / 1e6
        return r

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = self.read()
            if "return" in r or "error" in r:
                return r

    def event(self, name, timeout=30):
        """The timestamp of event NAME, waiting for it if it has not come yet."""
        self.s.settimeout(timeout)
        while name not in self.events:
            self.read()
        self.s.settimeout(None)
        return self.events[name]


def wait_line(path, needle, after=0, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
            if text.count(needle) > after:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    raise SystemExit(f"no {needle!r} in {path}")


def wait_migrated(q):
    while True:
        r = q.cmd("query-migrate")["return"]
        if r.get("status") == "completed":
            return r
        if r.get("status") in ("failed", "cancelled"):
            raise SystemExit(f"migration {r}")
        time.sleep(0.001)


image = os.path.join(work, "qemu-state")

# Snapshot of the paused guest to a file.
proc, serial, qmp = qemu("snap", [])
q = Qmp(qmp)
wait_line(serial, "dirty round 16 ok")
q.cmd("stop")
t = time.time()
q.cmd("migrate", uri=f"exec:cat > {image}")
wait_migrated(q)
print(f"snapshot_ms={(time.time() - t) * 1e3:.1f}")
q.cmd("quit")
proc.wait()

# Restore from it: launch to running, and to the guest's next line.
t = time.time()
proc, serial, qmp = qemu("restore", ["-incoming", f"exec:cat {image}"])
q = Qmp(qmp)
# QEMU keeps the saved run state: the guest was paused, so it comes back paused.
while q.cmd("query-status")["return"]["status"] in ("inmigrate", "prelaunch"):
    time.sleep(0.001)
q.cmd("cont")
print(f"restore_ms={(time.time() - t) * 1e3:.1f}")
wait_line(serial, "dirty round")
print(f"restore_to_output_ms={(time.time() - t) * 1e3:.1f}")
q.cmd("quit")
proc.wait()

# Live migration over a Unix socket, downtime limit as hv's budget, no bandwidth cap.
sock = os.path.join(work, "mig.sock")
dst, _, dqmp = qemu("dst", ["-incoming", f"unix:{sock}"])
dq = Qmp(dqmp)
src, sserial, sqmp = qemu("src", [])
sq = Qmp(sqmp)
wait_line(sserial, "dirty round 16 ok")
sq.cmd("migrate-set-parameters", **{"downtime-limit": 100, "max-bandwidth": 10 << 30})
sq.cmd("migrate", uri=f"unix:{sock}")
r = wait_migrated(sq)
print(f"migrate_total_ms={r.get('total-time')}")
print(f"migrate_downtime_ms={r.get('downtime')}")
# QEMU's own figure ends when the source has sent the last byte. The guest is down until the
# destination runs it: the source's STOP event to the destination's RESUME event (QMP stamps
# both with the host's wall clock), which is what hv's figure counts (until the destination
# has resumed the guest and confirmed).
try:
    print(f"migrate_downtime_to_resumed_ms={(dq.event('RESUME') - sq.event('STOP')) * 1e3:.1f}")
except TimeoutError:
    print("migrate_downtime_to_resumed_ms=n/a (no STOP or RESUME event within 30 s)")
ram = r.get("ram", {})
print(f"migrate_rounds={ram.get('dirty-sync-count')}")
print(f"migrate_mib={ram.get('transferred', 0) >> 20}")
for qq in (sq, dq):
    qq.cmd("quit")
src.wait()
dst.wait()
