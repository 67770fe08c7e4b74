"""Factorial HMM benchmark: Ghahramani & Jordan's table, the chorales, and how exact and structured inference scale.

Part 1 (synthetic, Ghahramani & Jordan's sizes): M=3 chains, L=2 and L=3 states, D=5, 20 training and 20 test
  sequences of 20 steps from known parameters (models.fhmm.synthetic, seed 0). From the same random start
  (one per seed), each method learns the parameters; every method is scored by the exact log-likelihood per
  time step of its parameters on the training and test sequences (forward-backward):
    exact EM (Baum-Welch), variational EM with the structured and the completely factorised fixed points
    (Ghahramani & Jordan's algorithm), and SVI (Analytic_ELBO, Adam) with the three guides.
  Time per iteration: an EM / variational-EM iteration, or an SVI step.
Part 2 (chorales): the Bach chorale rolls (328 train, 81 test, fixed split), Bernoulli emissions, M=3, L=4
  (64 joint states): exact EM, structured variational EM, SVI structured and amortised, against an
  unconstrained HMM with L^M = 64 states (EM). Test log p(y) per time step, exact, and wall time.
Part 3 (scaling): one sequence of T=10,000 steps, L=4, D=5, Gaussian: exact forward-backward for M=1..5
  (L^M = 4..1,024 joint states) and one structured mean-field sweep (M chain forward-backwards), timed
  as half the difference between 3 sweeps and 1 (set-up excluded; each sweep includes its ELBO), M=1..8.

    python benchmarks/bench_fhmm.py [--parts 1,2,3] [--seeds 3] [--out benchmarks/results/fhmm.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _ll(ex, y, params) -> float:
    return float(ex.log_evidence(y, params)) / int(ex.sequence_lengths(y).sum())


def _learners(ex, args, svi_steps: int):
    """name -> fn(y, init) -> (params, iterations)."""
    import pyro
    from vizoo.experiments.config import SVIConfig
    from vizoo.experiments.registry import MODELS
    from vizoo.experiments.train import train_svi

    pyro.settings.set(module_local_params=True)
    spec = MODELS["fhmm"]

    def svi(guide_name):
        def fit(y, init):
            guide = spec.guides[guide_name].build(y, init)
            model = spec.learnable(init, args)
            cfg = SVIConfig(elbo="Analytic_ELBO", lr=0.05, lr_final=0.005, steps=svi_steps)
            train_svi(model, guide, y, cfg, seed=0, progress=False)
            return model.params.detach(), svi_steps
        return fit

    def vem(family):
        def fit(y, init):
            r = ex.fit_variational_em(y, init, family, max_iter=100, tol=1e-8)
            return r.params, r.num_iters
        return fit

    def em(y, init):
        r = ex.fit_em(y, init, max_iter=100, tol=1e-8)
        return r.params, max(r.num_iters, 1)

    return {
        "exact EM": em,
        "structured MF, fixed point (variational EM)": vem("structured"),
        "factorised MF, fixed point (variational EM)": vem("factorised"),
        "SVI structured_mean_field": svi("structured_mean_field"),
        "SVI mean_field (factorised)": svi("mean_field"),
        "SVI amortised": svi("amortised"),
    }


def part_synthetic(seeds: int, svi_steps: int) -> list[dict]:
    from vizoo.models import fhmm
    from vizoo.models.datasets import DataOptions
    from vizoo.models.exact import fhmm as ex

    rows = []
    for l in (2, 3):
        args = fhmm.FHMMArgs(3, l, "gaussian")
        data = fhmm.synthetic(DataOptions(name="synthetic", num_points=20, num_steps=20, dim=5), args, 0)
        y, y_test = data.x, data.x_test
        rows.append({"L": l, "method": "true parameters", "train": _ll(ex, y, data.truth), "test": _ll(ex, y_test, data.truth)})
        print(f"M=3 L={l}  true parameters: train {rows[-1]['train']:.3f}  test {rows[-1]['test']:.3f}", flush=True)
        for method, fit in _learners(ex, args, svi_steps).items():
            train, test, per_iter = [], [], []
            for seed in range(seeds):
                init = fhmm.init_params(y, args, seed)
                start = time.perf_counter()
                params, iters = fit(y, init)
                per_iter.append((time.perf_counter() - start) / iters)
                train.append(_ll(ex, y, params))
                test.append(_ll(ex, y_test, params))
            row = {"L": l, "method": method, "train": statistics.mean(train), "train_sd": statistics.pstdev(train),
                   "test": statistics.mean(test), "test_sd": statistics.pstdev(test), "best_train": max(train),
                   "time_per_iter_ms": 1000 * statistics.mean(per_iter), "seeds": seeds}
            rows.append(row)
            print(f"M=3 L={l}  {method:45s} train {row['train']:.3f} ± {row['train_sd']:.3f} (best {row['best_train']:.3f})  "
                  f"test {row['test']:.3f} ± {row['test_sd']:.3f}  {row['time_per_iter_ms']:.2f} ms/iter", flush=True)
    return rows


def part_chorales(em_iters: int, svi_steps: int) -> list[dict]:
    import pyro
    from vizoo.experiments.config import SVIConfig
    from vizoo.experiments.registry import MODELS
    from vizoo.experiments.train import train_svi
    from vizoo.models import fhmm
    from vizoo.models.datasets import DataOptions
    from vizoo.models.exact import fhmm as ex

    pyro.settings.set(module_local_params=True)
    spec = MODELS["fhmm"]
    rows = []
    for m, l in ((3, 4), (1, 64)):
        args = fhmm.FHMMArgs(m, l, "bernoulli")
        data = spec.load(DataOptions(name="chorales"), args, 0)
        y, y_test = data.x, data.x_test
        init = fhmm.init_params(y, args, 0)
        runs = {"exact EM": lambda: ex.fit_em(y, init, max_iter=em_iters, tol=1e-7).params}
        if m > 1:
            runs["structured MF, fixed point (variational EM)"] = lambda: ex.fit_variational_em(y, init, "structured", max_iter=em_iters, tol=1e-7).params
            for g in ("structured_mean_field", "amortised"):
                def svi(g=g):
                    guide = spec.guides[g].build(y, init)
                    model = spec.learnable(init, args)
                    train_svi(model, guide, y, SVIConfig(elbo="Analytic_ELBO", lr=0.05, lr_final=0.005, steps=svi_steps), seed=0, progress=False)
                    return model.params.detach()
                runs[f"SVI {g}"] = svi
        for method, run in runs.items():
            start = time.perf_counter()
            params = run()
            wall = time.perf_counter() - start
            row = {"model": f"FHMM M={m} L={l}" if m > 1 else f"HMM {l} states", "method": method,
                   "train": _ll(ex, y, params), "test": _ll(ex, y_test, params), "wall_s": wall}
            rows.append(row)
            print(f"{row['model']:16s} {method:45s} train {row['train']:.4f}  test {row['test']:.4f}  {wall:7.1f} s", flush=True)
    return rows


def part_scaling() -> list[dict]:
    from vizoo.models import fhmm
    from vizoo.models.exact import fhmm as ex

    rows = []
    for m in range(1, 9):
        args = fhmm.FHMMArgs(m, 4, "gaussian")
        params = fhmm.true_params(args, 5, 0)
        y, _ = fhmm.simulate(params, 1, 10_000, 1)
        row = {"M": m, "L": 4, "T": 10_000, "joint_states": 4**m}
        if m <= 5:
            start = time.perf_counter()
            ex.forward_backward(y, params)
            row["forward_backward_s"] = time.perf_counter() - start
        times = []
        for sweeps in (1, 3):  # the difference is two sweeps, without the set-up and the first ELBO
            start = time.perf_counter()
            ex.fit_mean_field(y, params, "structured", max_sweeps=sweeps, tol=-float("inf"))
            times.append(time.perf_counter() - start)
        row["structured_sweep_s"] = (times[1] - times[0]) / 2
        row["structured_first_sweep_s"] = times[0]
        rows.append(row)
        print(f"M={m} L=4 T=10,000 (S={4**m:>6,}): forward-backward {row.get('forward_backward_s', float('nan')):7.2f} s   "
              f"structured sweep {row['structured_sweep_s']:6.2f} s ({row['structured_sweep_s'] / m:.2f} s per chain)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--svi-steps", type=int, default=1000)
    parser.add_argument("--chorale-iters", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fhmm.json"))
    ns = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    parts = {p.strip() for p in ns.parts.split(",")}
    out = Path(ns.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    if "1" in parts:
        results["synthetic"] = part_synthetic(ns.seeds, ns.svi_steps)
    if "2" in parts:
        results["chorales"] = part_chorales(ns.chorale_iters, 200)
    if "3" in parts:
        results["scaling"] = part_scaling()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
