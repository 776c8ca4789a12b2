#!/usr/bin/env python3
"""One VMM process per VM, driven over Cloud Hypervisor's REST API: the `hv-vmm` binary and
Cloud Hypervisor itself take the same flags and bodies, so one driver measures both on the
same test guest (`test=dirty`: it rewrites PAGES pages in a loop and checks them).

Prints one name=value line per figure:
  - snapshot_ms: vm.snapshot of the paused guest (file:///DIR on /dev/shm);
  - restore_resume_ms: vm.restore + vm.resume on a process already listening (VMM work only);
  - restore_launch_ms: from launching `--restore source_url=...` to vm.resume answered;
  - restore_to_output_ms: from that launch to the guest's next serial line;
  - migrate_total_ms: vm.send-migration over unix: to a process waiting in
    vm.receive-migration, until the source process has ended (it ends once the destination
    confirmed);
  - migrate_downtime_ms: the source's own figure from its log (both VMMs count from pausing
    the source to the destination's confirmation);
  - rss_beyond_guest_kib: resident memory of the running source outside guest RAM (smaps).

usage: vmstate_vmm.py NAME BINARY GUEST_ELF MEM_MIB PAGES WORKDIR
"""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

name, binary, guest, mib, pages, work = sys.argv[1:7]
mib = int(mib)


class UnixHttp(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)
        self.sock.connect(self.path)


def api(sock, method, endpoint, body=None):
    c = UnixHttp(sock)
    data = json.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    c.request(method, "/api/v1/" + endpoint, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode(errors="replace")
    c.close()
    if r.status >= 300:
        raise SystemExit(f"{name}: {method} {endpoint} -> {r.status} {text}")
    return text


# -v (info) by default; VMM_VERBOSE=-vv (or -vvv) for the debug timings of a migration.
VERBOSE = os.environ.get("VMM_VERBOSE", "-v").split()


def spawn(tag, extra=()):
    sock = os.path.join(work, f"{name}-{tag}.sock")
    log = os.path.join(work, f"{name}-{tag}.log")
    for p in (sock, log):
        if os.path.exists(p):
            os.unlink(p)
    cmd = [binary, "--api-socket", f"path={sock}", "--log-file", log, *VERBOSE, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, sock, log


def wait_api(sock, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name}: process ended with {proc.returncode}")
        try:
            api(sock, "GET", "vmm.ping")
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.0005)
    raise SystemExit(f"{name}: no API on {sock}")


def count(path, needle):
    try:
        with open(path, errors="replace") as f:
            return f.read().count(needle)
    except FileNotFoundError:
        return 0


def wait_line(path, needle, after=0, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if count(path, needle) > after:
            return
        time.sleep(0.0005)
    raise SystemExit(f"{name}: no {needle!r} in {path}")


def config(serial):
    return {
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": mib << 20},
        "payload": {"kernel": guest, "cmdline": f"test=dirty pages={pages} every=8"},
        "serial": {"mode": "File", "file": serial},
        "console": {"mode": "Off"},
    }


def booted(tag):
    proc, sock, log = spawn(tag)
    wait_api(sock, proc)
    serial = os.path.join(work, f"{name}-{tag}.serial")
    if os.path.exists(serial):
        os.unlink(serial)
    api(sock, "PUT", "vm.create", config(serial))
    api(sock, "PUT", "vm.boot")
    wait_line(serial, "dirty round 16 ok")
    return proc, sock, log, serial


def rss_beyond_guest(pid):
    """Resident KiB of every mapping except guest RAM (the mappings of at least MEM_MIB)."""
    total = 0
    size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                size = int(m.group(2), 16) - int(m.group(1), 16)
            elif line.startswith("Rss:") and size < (mib << 20):
                total += int(line.split()[1])
    return total


def end(proc, sock):
    try:
        api(sock, "PUT", "vmm.shutdown")
    except (OSError, SystemExit, http.client.HTTPException):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


snap = os.path.join(work, f"{name}-snap")
os.makedirs(snap, exist_ok=True)

# Snapshot of the paused guest.
proc, sock, log, serial = booted("snap")
print(f"rss_beyond_guest_kib={rss_beyond_guest(proc.pid)}")
api(sock, "PUT", "vm.pause")
t = time.time()
api(sock, "PUT", "vm.snapshot", {"destination_url": f"file://{snap}"})
print(f"snapshot_ms={(time.time() - t) * 1e3:.1f}")
end(proc, sock)

# Restore on a process already listening: vm.restore + vm.resume.
proc, sock, log = spawn("restore-api")
wait_api(sock, proc)
before = count(serial, "dirty round")
t = time.time()
api(sock, "PUT", "vm.restore", {"source_url": f"file://{snap}"})
api(sock, "PUT", "vm.resume")
print(f"restore_resume_ms={(time.time() - t) * 1e3:.1f}")
wait_line(serial, "dirty round", before)
end(proc, sock)

# Restore from launch: --restore, then vm.resume.
before = count(serial, "dirty round")
t = time.time()
proc, sock, log = spawn("restore-flag", ["--restore", f"source_url=file://{snap}"])
wait_api(sock, proc)
api(sock, "PUT", "vm.resume")
print(f"restore_launch_ms={(time.time() - t) * 1e3:.1f}")
wait_line(serial, "dirty round", before)
print(f"restore_to_output_ms={(time.time() - t) * 1e3:.1f}")
end(proc, sock)

# Live migration over a Unix socket.
mig = os.path.join(work, f"{name}-mig.sock")
if os.path.exists(mig):
    os.unlink(mig)
dst, dsock, dlog = spawn("dst")
wait_api(dsock, dst)
receiver = threading.Thread(
    target=api, args=(dsock, "PUT", "vm.receive-migration", {"receiver_url": f"unix:{mig}"}))
receiver.start()
src, ssock, slog, sserial = booted("src")
deadline = time.time() + 30
while not os.path.exists(mig):
    if time.time() > deadline:
        raise SystemExit(f"{name}: the receiver never listened")
    time.sleep(0.0005)
before = count(sserial, "dirty round")
t = time.time()
api(ssock, "PUT", "vm.send-migration", {"destination_url": f"unix:{mig}"})
src.wait(timeout=60)
print(f"migrate_total_ms={(time.time() - t) * 1e3:.1f}")
receiver.join()
with open(slog, errors="replace") as f:
    text = f.read()
m = re.search(r"downtime (\d+(?:\.\d+)?)(ms|µs|us|s)\b", text) or \
    re.search(r"with a downtime of (\d+)(ms)", text)
if m:
    v = float(m.group(1)) * {"ms": 1, "µs": 1e-3, "us": 1e-3, "s": 1e3}[m.group(2)]
    print(f"migrate_downtime_ms={v:.1f}")
info = json.loads(api(dsock, "GET", "vm.info"))
print(f"destination_state={info['state']}")
wait_line(sserial, "dirty round", before)
if count(sserial, "mismatch"):
    raise SystemExit(f"{name}: the guest found a bad page after migration")
end(dst, dsock)
