r"""GPU check: a few bundled configs run on CUDA as a user runs them, ``vizoo run NAME --set device=cuda``, with short
SVI budgets; records each run's wall time and every method's ELBO (and held-out score), beside the same run on
the CPU when asked (``--devices cuda cpu``), so the two can be compared: the ELBOs agree up to the devices'
round-off and random draws, the wall times say what the GPU buys.

Each run is a subprocess (``vizoo run NAME --out TMP --no-progress --set device=D --set svi.steps=S
--set checkpoint.enabled=false``), interpreter start and imports included. Recorded per config and device: the
wall time, the child's CPU time, the exit status (and the error's last line), and from the run's metrics.json
each method's ELBO per point, steps and training wall time, the exact reference's objective and wall time, the
held-out metrics; plus the GPU's name, torch's version and CUDA's, the cores, and the 1-minute load average
before and after. Numbers are reported, never asserted.

Run:  benchmarks/gpu_check.sh   (or .venv/bin/python benchmarks/gpu_check.py [--steps S] [--devices cuda cpu]
      [--only NAME ...] [--out PATH]); results in benchmarks/results/gpu_check.json. Without a CUDA device it
      prints one line and exits 0. About 5 minutes on one GPU (the MNIST VAE's importance-sampled evaluation
      is most of it); add ``cpu`` to --devices for the comparison (some 20 minutes more on 2 cores).
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

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("gmm_faithful", "lda_news", "vae_mnist", "fhmm_chorales")
"""A GMM (exact EM beside SVI), LDA on 20 Newsgroups (sparse counts, minibatches, CAVI), the VAE on MNIST
(networks, minibatches, importance sampling) and the factorial HMM on the Bach chorales (sequences, GRUs)."""


def run_config(name: str, device: str, steps: int) -> dict:
    vizoo = str(Path(sys.executable).parent / "vizoo")
    sets = [f"device={json.dumps(device)}", f"svi.steps={steps}", "checkpoint.enabled=false"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([vizoo, "run", name, "--out", out, "--no-progress", *[a for s in sets for a in ("--set", s)]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics_files = sorted(Path(out).glob("*/metrics.json"))
        metrics = json.loads(metrics_files[-1].read_text()) if metrics_files else None
    row = {"device": device, "steps": steps, "wall_time_s": round(wall, 2),
           "cpu_time_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
           "exit_status": proc.returncode, "load_average_1min_before": round(load_before, 2),
           "load_average_1min_after": round(os.getloadavg()[0], 2)}
    if proc.returncode:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if metrics is not None:
        row["status"] = metrics.get("status")
        exact = metrics.get("exact") or {}
        if exact:
            key = "log_likelihood_per_point" if "log_likelihood_per_point" in exact else "elbo_per_point"
            row["exact"] = {"method": exact.get("method"), key: exact.get(key), "wall_time_s": exact.get("wall_time_s")}
        row["guides"] = {g: {"elbo_per_point": m.get("final_elbo_per_point"), "elbo_method": m.get("final_elbo_method"),
                             "log_likelihood_per_point": m.get("log_likelihood_per_point"), "steps": m.get("steps"),
                             "train_wall_time_s": m.get("wall_time_s")}
                         for g, m in metrics.get("guides", {}).items()}
        if metrics.get("heldout"):
            row["heldout"] = metrics["heldout"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="SVI steps per guide (default 200)")
    parser.add_argument("--devices", nargs="+", default=["cuda"], help="devices to run on (default: cuda)")
    parser.add_argument("--only", nargs="*", default=None, help=f"bundled config names (default: {' '.join(CONFIGS)})")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args()
    if any(d.startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device torch can use here (torch {torch.__version__}): nothing run")
        return 0
    results = {"machine": {"cores": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
               "settings": {"steps": args.steps, "devices": args.devices}, "configs": {}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or CONFIGS:
        results["configs"][name] = {}
        for device in args.devices:
            row = run_config(name, device, args.steps)
            results["configs"][name][device] = row
            elbos = ", ".join(f"{g} {m['elbo_per_point']:.4f}" for g, m in row.get("guides", {}).items()
                              if m.get("elbo_per_point") is not None)
            print(f"{name} on {device}: {row['wall_time_s']} s, exit {row['exit_status']}; ELBO/point {elbos or '-'}"
                  + (f"; {row['error']}" if row.get("error") else ""), flush=True)
            path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
