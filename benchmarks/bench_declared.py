r"""Benchmark: what declaring a model in TOML costs against its hand-written module.

Three models are declared exactly as their modules define them (experiments/models/declared_gmm.toml,
declared_noisy_or.toml, declared_lfdm.toml) and given the same parameters as the hand-written ones:

* the Gaussian mixture on Old Faithful (K = 2, diagonal), from the hand-written k-means++ start;
* the noisy-OR network on the STD symptoms (K = 3 causes), from ``noisy_or.init_params``;
* the latent factor document model (K = 4 factors, decoder 4-16-50) on 1,000 documents simulated from it.

Part 1, SVI step time: ``TraceEnum_ELBO`` with each model's mean-field guide (hand-written vs generated),
one ``loss_and_grads`` plus an Adam step, steps of the two alternating, median of ``--steps`` after 20 warm-up.
Part 2, exact log p(x): one call of each model's exact ``log_evidence`` (median of 5), at the sizes above and
for a larger noisy-OR (K = 16 causes, 40 symptoms, 1,000 points: 65,536 configurations, chunked).
Part 3, the exact reference fit: hand-written EM (closed form, GMM) or generalised EM (noisy-OR: closed-form
prior, L-BFGS for the rest) against the declaration's generalised EM (L-BFGS on every parameter), from the
same start, tol 1e-10 per point: iterations, wall time, final log p(x) per point.

Run:  .venv/bin/python benchmarks/bench_declared.py [--steps 300]; results in benchmarks/results/declared.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from vizoo.experiments.registry import MODELS
from vizoo.guides import declared as declared_guides
from vizoo.guides import gmm as gmm_guides
from vizoo.guides import lfdm as lfdm_guides
from vizoo.guides import noisy_or as noisy_or_guides
from vizoo.models import declared, gmm, lfdm, noisy_or
from vizoo.models.datasets import DataOptions
from vizoo.models.declaration import load
from vizoo.models.exact import declared as exact
from vizoo.models.exact import gmm as gmm_exact
from vizoo.models.exact import lfdm as lfdm_exact
from vizoo.models.exact import noisy_or as noisy_or_exact
from vizoo.models.exact.declared import DeclaredParams

DIR = Path(__file__).resolve().parent.parent / "experiments" / "models"


def problems():
    """name -> (x, hand spec pieces, declaration, declared params mapped from the hand-written ones)."""
    out = {}
    zero = torch.zeros(2, dtype=torch.float64)
    x = MODELS["gmm"].load(DataOptions(name="faithful"), gmm.GMMArgs(), 0).x
    init = gmm.init_params(x, gmm.GMMArgs(2), 0)
    decl = load(DIR / "declared_gmm.toml")
    out["gmm"] = dict(x=x, init=init, decl=decl, module=gmm.GMM(init, "diag"), guide=gmm_guides.mean_field(x, init),
                      params=DeclaredParams({"z.logits": init.weights.log(), "x.weight": init.locs, "x.bias": zero,
                                             "x.scale_weight": init.scales.log(), "x.scale_bias": zero.clone()}, exact.layout(decl)),
                      log_evidence=lambda x, p: gmm_exact.log_evidence(x, p),
                      fit=lambda x, p: gmm_exact.fit_em(x, p, "diag", 0.0, 5000, 1e-10))
    s = MODELS["noisy_or"].load(DataOptions(name="std"), noisy_or.NoisyORArgs(3), 0).x
    init = noisy_or.init_params(s, noisy_or.NoisyORArgs(3), 0)
    decl = load(DIR / "declared_noisy_or.toml")
    out["noisy_or"] = dict(x=s, init=init, decl=decl, module=noisy_or.NoisyOR(init), guide=noisy_or_guides.mean_field(s, init),
                           params=DeclaredParams({"d.logits": init.prior_logits, "s.weight": init.weights, "s.leak": init.leak},
                                                 exact.layout(decl)),
                           log_evidence=noisy_or_exact.log_evidence,
                           fit=lambda x, p: noisy_or_exact.fit_em(x, p, 5000, 1e-10))
    decl = load(DIR / "declared_lfdm.toml")
    truth = declared.random_params(decl, 0)
    x, _ = declared.simulate(decl, truth, 1000, 1, doc_length=40)
    init = lfdm.init_params(x, lfdm.LFDMArgs(num_factors=4, hidden=(16,)), 0)
    (w0, b0), (w1, b1) = init.layers
    out["lfdm"] = dict(x=x, init=init, decl=decl, module=lfdm.LFDM(init), guide=lfdm_guides.mean_field(x, init),
                       params=DeclaredParams({"z.logits": init.prior_logits, "x.layers.0.weight": w0.T, "x.layers.0.bias": b0,
                                              "x.layers.1.weight": w1.T, "x.layers.1.bias": b1}, exact.layout(decl)),
                       log_evidence=lfdm_exact.log_evidence,
                       fit=lambda x, p: lfdm_exact.fit_em(x, p, 5000, 1e-10))
    return out


def step_times(p, steps: int) -> dict:
    pyro.set_rng_seed(0)
    hand = (p["module"], p["guide"])
    gen = (declared.Declared(p["decl"], p["params"]), declared_guides.mean_field(p["decl"], p["x"]))
    runs = {}
    for name, (model, guide) in (("hand", hand), ("declared", gen)):
        params = list(model.parameters()) + list(guide.parameters())
        runs[name] = (model, config_enumerate(guide, "parallel"), torch.optim.Adam(params, lr=0.01), TraceEnum_ELBO(max_plate_nesting=1))
    times = {"hand": [], "declared": []}
    with pyro.validation_enabled(False):
        for i in range(steps + 20):
            for name, (model, guide, optim, elbo) in runs.items():
                start = time.perf_counter()
                elbo.loss_and_grads(model, guide, p["x"])
                optim.step()
                optim.zero_grad(set_to_none=True)
                if i >= 20:
                    times[name].append(time.perf_counter() - start)
    hand_ms, decl_ms = (1e3 * statistics.median(times[k]) for k in ("hand", "declared"))
    return {"hand_ms": hand_ms, "declared_ms": decl_ms, "ratio": decl_ms / hand_ms}


def timed(fn, repeats: int = 5) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@torch.no_grad()
def evidence_times(p) -> dict:
    t_hand, v_hand = timed(lambda: p["log_evidence"](p["x"], p["init"]))
    t_decl, v_decl = timed(lambda: exact.log_evidence(p["decl"], p["params"], p["x"]))
    return {"hand_ms": 1e3 * t_hand, "declared_ms": 1e3 * t_decl, "abs_difference": abs(float(v_hand) - float(v_decl))}


@torch.no_grad()
def large_noisy_or() -> dict:
    truth = noisy_or.random_network(16, 40, seed=0)
    s, _ = noisy_or.simulate(truth, 1000, seed=1)
    text = (DIR / "declared_noisy_or.toml").read_text().replace("size = 3", "size = 16").replace("size = 10", "size = 40")
    from vizoo.models.declaration import parse

    decl = parse(text.replace('[data]\ns = "std"\n', ""), "large")
    params = DeclaredParams({"d.logits": truth.prior_logits, "s.weight": truth.weights, "s.leak": truth.leak}, exact.layout(decl))
    t_hand, v_hand = timed(lambda: noisy_or_exact.log_evidence(s, truth), 3)
    t_decl, v_decl = timed(lambda: exact.log_evidence(decl, params, s), 3)
    return {"K": 16, "J": 40, "N": 1000, "hand_s": t_hand, "declared_s": t_decl, "abs_difference": abs(float(v_hand) - float(v_decl))}


def fits(p) -> dict:
    start = time.perf_counter()
    hand = p["fit"](p["x"], p["init"])
    t_hand = time.perf_counter() - start
    start = time.perf_counter()
    gem = exact.fit_em(p["decl"], p["x"], p["params"], 5000, 1e-10)
    t_decl = time.perf_counter() - start
    return {"hand_iterations": hand.num_iters, "hand_s": t_hand, "hand_log_likelihood": float(hand.log_likelihood[-1]),
            "declared_iterations": gem.num_iters, "declared_s": t_decl, "declared_log_likelihood": gem.log_likelihood[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    ns = parser.parse_args()
    torch.set_num_threads(2)
    results = {"steps": {}, "log_evidence": {}, "fit": {}}
    for name, p in problems().items():
        results["steps"][name] = step_times(p, ns.steps)
        results["log_evidence"][name] = evidence_times(p)
        results["fit"][name] = fits(p)
        print(name, json.dumps({k: results[k][name] for k in results}, indent=1))
    results["log_evidence"]["noisy_or_K16"] = large_noisy_or()
    print(json.dumps(results["log_evidence"]["noisy_or_K16"]))
    out = Path(__file__).resolve().parent / "results" / "declared.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
