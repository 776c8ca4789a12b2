#!/usr/bin/env python3
"""Launch-to-first-line: starts COMMAND RUNS times, measures the wall time from spawn to the
first output line containing NEEDLE, kills the process, and prints min/median/max in ms.

usage: first_line.py RUNS NEEDLE COMMAND [ARGS...]
"""
import statistics
import subprocess
import sys
import time


def once(needle, cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    buf = b""
    try:
        while needle not in buf:
            chunk = p.stdout.read(4096)
            if not chunk:
                raise SystemExit(f"{cmd[0]} ended before printing {needle!r}")
            buf += chunk
        return (time.perf_counter() - t0) * 1000
    finally:
        p.kill()
        p.wait()


def main():
    runs, needle, cmd = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3:]
    once(needle, cmd)  # warm-up
    t = sorted(once(needle, cmd) for _ in range(runs))
    print(f"min {t[0]:.1f} ms  median {statistics.median(t):.1f} ms  max {t[-1]:.1f} ms")


main()
