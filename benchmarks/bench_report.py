r"""Benchmark: ``make run`` (``vizoo report``): wall time, peak memory, and each model's comparison time.

Runs the report exactly as ``make run`` does, in a subprocess (``vizoo report --no-progress``), and records:

* the wall time of the whole report as seen from outside (interpreter start and imports included), its CPU time
  (user + system of the child, every thread) and its peak resident memory (``ru_maxrss`` of the child);
* the report's own total (the "N s in all" line of report.md: the work after the imports) and its CPU time;
* the machine: cores and the 1-minute load average just before the run (about 0 on an idle machine);
* from the report's ``report.json``: each model's ``vizoo compare`` time at the report's sizes
  (``experiments/report.toml``; 2 seeds, every guide, pictures and ArviZ) and each seed experiment's time;
* the report's overview table (one row per model: best guide, its gap split), as printed in report.md.

The contract: ``make run`` (install included) within 10 minutes on 2 CPU cores. The install is not timed here
(a fresh clone's ``make run`` adds about two minutes for it). Numbers are reported, never asserted.

Run:  .venv/bin/python benchmarks/bench_report.py; results in benchmarks/results/report.json
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "vizoo"), "report", "--out", out, "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mib = usage.ru_maxrss / 1024  # Linux: kilobytes
        numbers = json.loads(next(Path(out).glob("report-*/report.json")).read_text())
        text = next(Path(out).glob("report-*/report.md")).read_text(encoding="utf-8")
    overview = text.split("## Overview", 1)[-1].split("\n## ", 1)[0]  # the one-line-per-model table, as printed
    result = {
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(usage.ru_utime + usage.ru_stime, 1),
        "report_total_s": round(numbers["wall_time_s"], 1),
        "report_cpu_s": round(numbers["cpu_time_s"], 1),
        "peak_memory_mib": round(peak_mib),
        "machine": {"cores": os.cpu_count(), "load_average_1min_before": round(load_before, 2)},
        "compare_s": {name: round(m["wall_time_s"], 1) for name, m in numbers["models"].items()},
        "seed_experiments_s": {name: round(m.get("wall_time_s", float("nan")), 1) for name, m in numbers["seeds"].items()},
        "overview": [line for line in overview.splitlines() if line.startswith("| ") and not line.startswith("| model")],
    }
    path = ROOT / "benchmarks" / "results" / "report.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
