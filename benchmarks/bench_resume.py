r"""Benchmark: what checkpoints cost, and a kill-and-resume campaign.

Part 1, cost. For bundled configs of different state sizes (GMM mean field on Old Faithful; LDA's mean field
on the news articles, whose per-entry tables are the largest state any guide has; the VAE on MNIST), one
checkpoint of the first guide's state: its size on disk and the median time of ``Checkpointer.save``
(torch.save into memory, write, fsync, rename) and of ``Checkpointer.load`` (weights_only, all checks).

Part 2, campaign. ``--trials`` real processes per config, each SIGKILLed at a random moment while it
checkpoints every step (so many kills land mid-write): even trials anywhere from the creation of the run
folder to the end of the uninterrupted run's time, odd ones within training (after the first checkpoint,
within the guides' training time). Each is then resumed with ``vizoo run --resume``;
every resumed run folder is compared with an uninterrupted run: metrics.json (wall times aside) and every
saved tensor must be identical. The configs cover each kind of state: TraceEnum_ELBO with a pre-fitted
amortised guide (noisy_or_std), a decaying learning rate (gmm_synthetic), LDA's natural-gradient step on
minibatches (lda_reuters), the VAE on minibatches (vae_digits), Analytic_ELBO (fhmm_synthetic),
TraceGraph_ELBO with a network baseline in the param store (noisy_or_score) and a declared model
(diagnosis_std). Each at reduced sizes (below) so that a trial takes seconds.

Run:  .venv/bin/python benchmarks/bench_resume.py [--trials 10]; results in benchmarks/results/resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from vizoo.experiments import checkpoint as ck
from vizoo.experiments.config import bundled_configs, load_config
from vizoo.experiments.run import resume_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = {
    "gmm_synthetic": ["svi.steps=300", "em.max_iter=50"],
    "noisy_or_std": ["svi.steps=150", "em.max_iter=20"],
    "noisy_or_score": ["svi.steps=60", "em.max_iter=5", "data.num_points=300"],
    "lda_reuters": ["svi.steps=60", "em.max_iter=5", "eval.refit_steps=5"],
    "vae_digits": ["svi.steps=60", "eval.importance_samples=20", "eval.refit_steps=5", "data.subset=600"],
    "fhmm_synthetic": ["svi.steps=60", "em.max_iter=5", "data.num_points=10"],
    "diagnosis_std": ["svi.steps=100", "em.max_iter=20"],
}
COST = {"gmm_faithful": [], "lda_news": ["guides=['mean_field']", "guide_args.refine=0"], "vae_mnist": []}
TIMING = ("wall_time_s", "elbo_times")


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING}
    return [strip(v) for v in obj] if isinstance(obj, list) else obj


def same_run(a: Path, b: Path) -> bool:
    if strip(json.loads((a / "metrics.json").read_text())) != strip(json.loads((b / "metrics.json").read_text())):
        return False
    for sub in ("params", "guides"):
        for path in (a / sub).glob("*.pt"):
            ta, tb = ck.load_tensors(path), ck.load_tensors(b / sub / path.name)
            if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
                return False
    return True


def cost(name: str, extra: list[str], out: Path, repeats: int = 5) -> dict:
    """Size and save/load time of the first guide's state after a few steps."""
    cfg = load_config(bundled_configs()[name], [*extra, "svi.steps=3", "em.enabled=false", "progress=false",
                                                 "checkpoint.every_steps=0", "checkpoint.every_seconds=0",
                                                 f"output_dir={json.dumps(str(out))}"])
    run_dir = run_experiment(cfg, log=lambda *_: None).run_dir
    guide = cfg.guides[0]
    path = run_dir / "checkpoints" / f"{guide}.pt"
    state = ck.load_tensors(path)
    saver = ck.Checkpointer(path, {k: state[k] for k in ("config_sha256", "data_sha256", "guide")})
    body = {k: v for k, v in state.items() if k not in ("format", "config_sha256", "data_sha256", "guide")}
    saves, loads = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        saver.save(body)
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        saver.load(cfg.svi.steps)
        loads.append(time.perf_counter() - start)
    return {"config": name, "guide": guide, "megabytes": path.stat().st_size / 1e6,
            "save_s": statistics.median(saves), "load_s": statistics.median(loads)}


def campaign(name: str, extra: list[str], trials: int, rng: random.Random, out: Path) -> dict:
    sets = [a for item in [*extra, "checkpoint.every_steps=1", "checkpoint.every_seconds=0"] for a in ("--set", item)]
    ref_out = out / f"{name}-ref"
    cfg = load_config(bundled_configs()[name], [*extra, "progress=false", f"output_dir={json.dumps(str(ref_out))}"])
    start = time.perf_counter()
    ref = run_experiment(cfg, log=lambda *_: None).run_dir
    ref_time = time.perf_counter() - start
    metrics = json.loads((ref / "metrics.json").read_text())
    train_time = sum(g["wall_time_s"] for g in metrics["guides"].values())
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    results = []
    for trial in range(trials):
        trial_out = out / f"{name}-{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "vizoo.experiments.cli", "run", name, "--out", str(trial_out),
                                 "--no-progress", *sets], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        in_training = trial % 2 == 1  # odd trials: killed while training; even ones: anywhere in the run
        pattern = "*/checkpoints/*.pt" if in_training else "*/config.toml"
        while not (list(trial_out.glob(pattern)) or proc.poll() is not None):
            time.sleep(0.01)
        delay = rng.uniform(0.0, train_time if in_training else ref_time)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (run_dir,) = [p for p in trial_out.iterdir() if p.is_dir()]
        steps = {p.stem: ck.load_tensors(p)["step"] for p in (run_dir / "checkpoints").glob("*.pt")}
        finished = (run_dir / "metrics.json").exists()
        if not finished:
            resume_experiment(run_dir, progress=False, log=lambda *_: None)
        results.append({"when": "training" if in_training else "anywhere", "delay_s": delay, "checkpoint_steps_at_kill": steps, "finished_before_kill": finished,
                        "identical": same_run(ref, run_dir)})
        shutil.rmtree(trial_out)
    return {"config": name, "overrides": extra, "uninterrupted_s": ref_time, "training_s": train_time, "trials": results,
            "with_a_checkpoint_at_kill": sum(bool(r["checkpoint_steps_at_kill"]) for r in results),
            "identical": sum(r["identical"] for r in results), "killed_mid_run": sum(not r["finished_before_kill"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(ns.seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        costs = [cost(name, extra, out / "cost") for name, extra in COST.items()]
        for c in costs:
            print(f"{c['config']} {c['guide']}: {c['megabytes']:.2f} MB, save {c['save_s'] * 1e3:.1f} ms, load {c['load_s'] * 1e3:.1f} ms")
        runs = []
        for name, extra in CAMPAIGN.items():
            r = campaign(name, extra, ns.trials, rng, out)
            runs.append(r)
            print(f"{name}: {r['identical']}/{len(r['trials'])} identical after resume ({r['killed_mid_run']} killed "
                  f"mid-run, {r['with_a_checkpoint_at_kill']} with a checkpoint on disk; uninterrupted {r['uninterrupted_s']:.1f} s)",
                  flush=True)
    total = sum(len(r["trials"]) for r in runs)
    same = sum(r["identical"] for r in runs)
    print(f"all: {same}/{total} kill-and-resume trials identical to the uninterrupted run")
    result = {"threads": 1, "costs": costs, "campaign": runs, "trials": total, "identical": same}
    path = ROOT / "benchmarks" / "results" / "resume.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
