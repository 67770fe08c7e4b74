r"""Benchmark: every bundled config run as a user runs it, ``vizoo run NAME``: wall time, CPU time, peak memory.

Each config runs in its own subprocess (``vizoo run NAME --out TMP --no-progress``, interpreter start and
imports included), one after another, so the numbers are what a user waits for. Recorded per config: the wall
time, the child's CPU time (user + system, every thread), its peak resident memory, and the 1-minute load
average just before it started (about 0 on an idle machine; the docs quote only runs measured idle).

The timings in docs/configs.md are this file's last result. Numbers are reported, never asserted.

Run:  .venv/bin/python benchmarks/bench_configs.py [--only NAME ...] [--out PATH]
      results in benchmarks/results/configs.json (merged: --only updates those entries)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vizoo.experiments.config import bundled_configs

ROOT = Path(__file__).resolve().parents[1]


def time_config(name: str) -> dict:
    vizoo = str(Path(sys.executable).parent / "vizoo")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([vizoo, "run", name, "--out", out, "--no-progress"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1), "exit_status": proc.returncode,
           # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: a lower bound per config after the first
           "peak_memory_mib_so_far": round(after.ru_maxrss / 1024), "load_average_1min_before": round(load_before, 2)}
    if proc.returncode:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="bundled config names (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "configs.json"))
    args = parser.parse_args()
    names = args.only or list(bundled_configs())
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("configs", {})
    results["machine"] = {"cores": os.cpu_count()}
    for name in names:
        row = time_config(name)
        results["configs"][name] = row
        print(name, json.dumps(row), flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
