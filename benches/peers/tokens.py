#!/usr/bin/env python3
"""Token issue and validation throughput and latency of a Keystone v3 endpoint: hv-cloud and
Debian's Keystone side by side (benches/peers, not a test).

    python3 benches/peers/tokens.py URL PASSWORD [CLIENTS] [SECONDS]

URL is the identity root, e.g. http://127.0.0.1:8080/identity (hv-cloud) or
http://127.0.0.1:5000 (Keystone from shared/peers/keystone-setup.sh). CLIENTS threads each
run requests back to back for SECONDS: first POST /v3/auth/tokens (password, project scope),
then GET /v3/auth/tokens of one token. Prints requests/s, p50 and p99 in ms.
"""
import json, sys, threading, time, urllib.request

url, password = sys.argv[1].rstrip("/"), sys.argv[2]
clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
body = json.dumps({"auth": {"identity": {"methods": ["password"], "password": {"user": {
    "name": "admin", "domain": {"name": "Default"}, "password": password}}},
    "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).encode()

def issue():
    r = urllib.request.urlopen(urllib.request.Request(
        url + "/v3/auth/tokens", data=body, headers={"Content-Type": "application/json"}))
    r.read()
    return r.headers["X-Subject-Token"]

def run(name, fn):
    lat, stop = [], time.monotonic() + seconds
    def worker():
        mine = []
        while time.monotonic() < stop:
            t = time.monotonic(); fn(); mine.append(time.monotonic() - t)
        lat.extend(mine)
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.monotonic()
    for t in ts: t.start()
    for t in ts: t.join()
    wall = time.monotonic() - t0
    lat.sort()
    p = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"{name}: {len(lat) / wall:.1f}/s over {len(lat)} requests, {clients} clients, "
          f"p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")

tok = issue()
def validate():
    r = urllib.request.urlopen(urllib.request.Request(
        url + "/v3/auth/tokens", headers={"X-Auth-Token": tok, "X-Subject-Token": tok}))
    r.read()
run("token issue", issue)
run("token validation", validate)
