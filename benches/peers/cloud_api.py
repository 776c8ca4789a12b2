#!/usr/bin/env python3
"""The OpenStack API under a real cloud: a real `hv-cloud serve` (a compute host) with SERVERS
ACTIVE servers (hv-vmm processes running the test guest, idle in `hlt`), then

  (a) `openstack server list` wall time per call (the real client), beside `openstack
      --version` (the client's own start-up) and `openstack flavor list` (start-up, token issue
      and one small request);
  (b) CLIENTS concurrent keep-alive HTTP clients doing `GET /compute/v2.1/servers/detail` for
      SECONDS: requests/s, p50 and p99.

benches/peers, not a test: nothing here asserts a speed.

    sudo python3 benches/peers/cloud_api.py [SERVERS] [CLIENTS] [SECONDS] [CALLS]

Defaults: 100 servers, 64 clients, 10 s, 5 client calls each. Binaries: $HV_CLOUD and $HV_VMM
(default: hv-cloud and hv-vmm in $CARGO_TARGET_DIR/release, else target/release); the guest:
$GUEST (default: built from guests/test-guest); the client: $HV_OPENSTACK (default
/opt/hv-venv/bin/openstack, made by .ci/setup). Root is needed (KVM, a network namespace for
the compute host's bridge and NAT). Everything it makes (servers, hv-vmm processes, `serve`,
the namespace, the state directory) is removed at the end, also on failure or Ctrl-C.
"""
import ctypes
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVERS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 64
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 10
CALLS = int(sys.argv[4]) if len(sys.argv) > 4 else 5
ADMIN_PASSWORD = "bench-admin-secret"
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HV_CLOUD = os.environ.get("HV_CLOUD", os.path.join(TARGET, "release", "hv-cloud"))
HV_VMM = os.environ.get("HV_VMM", os.path.join(TARGET, "release", "hv-vmm"))
OPENSTACK = os.environ.get("HV_OPENSTACK", "/opt/hv-venv/bin/openstack")
CLONE_NEWNET = 0x40000000


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def test_guest():
    if os.environ.get("GUEST"):
        return os.environ["GUEST"]
    tdir = os.path.join(ROOT, "target", "test-guest")
    env = {k: v for k, v in os.environ.items() if k not in ("RUSTFLAGS", "CARGO_TARGET_DIR")}
    subprocess.run(["cargo", "build", "-q", "--release", "--target-dir", tdir],
                   cwd=os.path.join(ROOT, "guests", "test-guest"), env=env, check=True)
    return os.path.join(tdir, "x86_64-unknown-linux-gnu", "release", "test-guest")


class Api:
    """A keep-alive HTTP/1.1 connection to `serve`, JSON in and out."""

    def __init__(self, addr, token=None):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        self.token = token

    def call(self, method, path, body=None, headers=None, raw=False):
        h = {"Content-Type": "application/json"}
        if self.token:
            h["X-Auth-Token"] = self.token
        h.update(headers or {})
        data = body if raw else (json.dumps(body).encode() if body is not None else None)
        self.conn.request(method, path, body=data, headers=h)
        r = self.conn.getresponse()
        payload = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {payload[:500]!r}")
        return r, (json.loads(payload) if payload and not raw else payload)


def token(addr, user, password, project):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    r, _ = Api(addr).call("POST", "/identity/v3/auth/tokens", body)
    return r.headers["X-Subject-Token"]


def vmm_pids(state):
    """hv-vmm processes whose command line names a path under `state`."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"hv-vmm" and any(
                state.encode() in a for a in argv):
            pids.append(int(p))
    return pids


def cpu_seconds(pid):
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd, env, check_out=None):
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr}")
    if check_out:
        check_out(out.stdout)
    return dt


def summary(xs):
    return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"


def bench(state, serve_addr, auth_url, guest):
    admin = Api(serve_addr, token(serve_addr, "admin", ADMIN_PASSWORD, "admin"))
    # A tenant with room for the servers.
    _, p = admin.call("POST", "/identity/v3/projects", {"project": {"name": "bench"}})
    pid = p["project"]["id"]
    _, u = admin.call("POST", "/identity/v3/users", {"user": {
        "name": "bench-user", "password": "pw-bench", "default_project_id": pid}})
    _, roles = admin.call("GET", "/identity/v3/roles?name=member")
    admin.call("PUT", f"/identity/v3/projects/{pid}/users/{u['user']['id']}/roles/"
                      f"{roles['roles'][0]['id']}")
    admin.call("PUT", f"/compute/v2.1/os-quota-sets/{pid}", {"quota_set": {
        "instances": SERVERS, "cores": SERVERS, "ram": SERVERS * 64}})
    admin.call("PUT", f"/network/v2.0/quotas/{pid}", {"quota": {"port": SERVERS + 10}})
    _, f = admin.call("POST", "/compute/v2.1/flavors", {"flavor": {
        "name": "m1.nano", "ram": 64, "vcpus": 1, "disk": 0}})
    flavor = f["flavor"]["id"]
    ttoken = token(serve_addr, "bench-user", "pw-bench", "bench")
    tenant = Api(serve_addr, ttoken)
    # The test guest as an AKI, idling in `hlt` (no CPU once booted).
    _, img = tenant.call("POST", "/image/v2/images", {
        "name": "guest", "disk_format": "aki", "container_format": "aki",
        "os_command_line": "test=hlt"})
    with open(guest, "rb") as g:
        tenant.call("PUT", f"/image/v2/images/{img['id']}/file", g.read(),
                    {"Content-Type": "application/octet-stream"}, raw=True)
    _, net = tenant.call("POST", "/network/v2.0/networks", {"network": {"name": "bench-net"}})
    net_id = net["network"]["id"]
    tenant.call("POST", "/network/v2.0/subnets", {"subnet": {
        "name": "bench-sub", "network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/22"}})

    # SERVERS servers; `POST /servers` answers once the build ended.
    def create(i):
        Api(serve_addr, ttoken).call("POST", "/compute/v2.1/servers", {"server": {
            "name": f"vm{i:03}", "imageRef": img["id"], "flavorRef": flavor,
            "networks": [{"uuid": net_id}]}})
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(create, range(SERVERS)))
    made = time.perf_counter() - t0
    _, detail = tenant.call("GET", "/compute/v2.1/servers/detail")
    states = [s["status"] for s in detail["servers"]]
    active = states.count("ACTIVE")
    vmms = vmm_pids(state)
    log(f"{SERVERS} servers made in {made:.1f} s ({1000 * made / SERVERS:.0f} ms each, 4 at a "
        f"time): {active} ACTIVE, {len(vmms)} hv-vmm processes")
    if active != SERVERS or len(vmms) != SERVERS:
        raise RuntimeError(f"expected {SERVERS} ACTIVE servers and hv-vmm processes: {states}")
    body_bytes = len(json.dumps(detail))
    results = {"servers": SERVERS, "create_s": made, "detail_bytes": body_bytes}

    # (a) The real client.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_URL=auth_url, OS_USERNAME="bench-user", OS_PASSWORD="pw-bench",
               OS_PROJECT_NAME="bench", OS_USER_DOMAIN_NAME="Default",
               OS_PROJECT_DOMAIN_NAME="Default", OS_IDENTITY_API_VERSION="3",
               OS_REGION_NAME="RegionOne", OS_INTERFACE="public", OS_AUTH_TYPE="password")

    def hundred(out):
        rows = [line for line in out.splitlines() if line.strip()]
        if len(rows) != SERVERS:
            raise RuntimeError(f"server list gave {len(rows)} rows, not {SERVERS}")

    version, flavors, lists = [], [], []
    for _ in range(CALLS):  # alternating, so load hits all three alike
        version.append(timed([OPENSTACK, "--version"], env))
        flavors.append(timed([OPENSTACK, "flavor", "list"], env))
        lists.append(timed([OPENSTACK, "server", "list", "-f", "value", "-c", "ID"], env, hundred))
    print(f"openstack --version: {summary(version)}")
    print(f"openstack flavor list: {summary(flavors)}")
    print(f"openstack server list ({SERVERS} servers): {summary(lists)}")
    results.update(version_s=version, flavor_list_s=flavors, server_list_s=lists)

    # (b) CLIENTS keep-alive clients on servers/detail.
    lat, errors, lock = [], [], threading.Lock()
    start = threading.Barrier(CLIENTS + 1)

    def worker():
        c = Api(serve_addr, ttoken)
        mine = []
        start.wait()
        stop = time.monotonic() + SECONDS
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                _, body = c.call("GET", "/compute/v2.1/servers/detail", raw=True)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))
                c = Api(serve_addr, ttoken)
                continue
            mine.append(time.monotonic() - t)
            if len(body) < body_bytes // 2:
                with lock:
                    errors.append(f"short body: {len(body)} bytes")
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    serve_cpu0, me0 = cpu_seconds(SERVE.pid), os.times()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    serve_cpu = cpu_seconds(SERVE.pid) - serve_cpu0
    me1 = os.times()
    me = (me1.user - me0.user) + (me1.system - me0.system)
    lat.sort()
    q = lambda x: 1000 * lat[min(len(lat) - 1, int(x * len(lat)))]  # noqa: E731
    rate = len(lat) / wall
    print(f"GET servers/detail ({SERVERS} servers, {body_bytes} bytes), {CLIENTS} keep-alive "
          f"clients, {wall:.1f} s: {rate:.1f}/s over {len(lat)} requests, p50 {q(0.5):.1f} ms, "
          f"p99 {q(0.99):.1f} ms, {len(errors)} errors; CPU: hv-cloud {serve_cpu:.1f} s, "
          f"the Python clients {me:.1f} s")
    if errors:
        print(f"  first error: {errors[0]}")
    results.update(detail_rps=rate, detail_p50_ms=q(0.5), detail_p99_ms=q(0.99),
                   detail_requests=len(lat), errors=len(errors), serve_cpu_s=serve_cpu,
                   client_cpu_s=me)
    return tenant, results


def delete_all(serve_addr):
    """Deletes every server of the tenant (as admin: all projects)."""
    api = Api(serve_addr, token(serve_addr, "admin", ADMIN_PASSWORD, "admin"))
    _, d = api.call("GET", "/compute/v2.1/servers?all_tenants=1")
    ids = [s["id"] for s in d["servers"]]

    def delete(i):
        Api(serve_addr, api.token).call("DELETE", f"/compute/v2.1/servers/{i}")
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(delete, ids))
    for _ in range(600):
        _, d = api.call("GET", "/compute/v2.1/servers?all_tenants=1")
        if not d["servers"]:
            return len(ids)
        time.sleep(0.5)
    raise RuntimeError(f"servers left: {d['servers']}")


SERVE = None


def main():
    global SERVE
    if os.geteuid() != 0:
        sys.exit("needs root (KVM, a network namespace)")
    for b in (HV_CLOUD, HV_VMM, OPENSTACK):
        if not os.path.exists(b):
            sys.exit(f"missing {b} (see the docstring)")
    guest = test_guest()
    ns = f"hvbench-{os.getpid()}"
    state = tempfile.mkdtemp(prefix="hv-cloud-bench-")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        # This process (one thread so far) and its children join the namespace.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        load0 = os.getloadavg()
        cmd = [HV_CLOUD, "serve", "--state-dir", state, "--listen", "127.0.0.1:0",
               "--vmm-binary", HV_VMM]
        if SERVERS > 16 * os.cpu_count():  # past Nova's default ratio of 16 vCPUs per CPU
            cmd += ["--cpu-allocation-ratio", str(SERVERS)]
        SERVE = subprocess.Popen(
            cmd,
            env=dict(os.environ, HV_ADMIN_PASSWORD=ADMIN_PASSWORD),
            stdout=subprocess.PIPE, text=True)
        words = SERVE.stdout.readline().split()  # "hv-cloud: serving URL on ADDR"
        if len(words) < 5 or words[3] != "on":
            raise RuntimeError(f"hv-cloud did not start: {words}")
        url, addr = words[2], words[4]
        log(f"hv-cloud {HV_CLOUD} serving {url}; {os.cpu_count()} CPUs, load {load0}")
        try:
            _, results = bench(state, addr, f"{url}/identity/v3", guest)
        finally:
            n = delete_all(addr)
            left = vmm_pids(state)
            log(f"deleted {n} servers; hv-vmm processes left: {len(left)}")
        load1 = os.getloadavg()
        results.update(load_before=load0, load_after=load1, cpus=os.cpu_count())
        print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after "
              f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} ({os.cpu_count()} CPUs)")
        print(json.dumps(results))
    finally:
        if SERVE is not None and SERVE.poll() is None:
            SERVE.send_signal(signal.SIGTERM)
            try:
                SERVE.wait(60)
            except subprocess.TimeoutExpired:
                SERVE.kill()
                SERVE.wait()
        for p in vmm_pids(state):  # left by a failed run: ours, by the state dir they name
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", ns])
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
