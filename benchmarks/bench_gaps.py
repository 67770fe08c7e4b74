"""Gap-split benchmark: how firm is q*, the family's best member per point?

For each case, at fixed model parameters, the approximation gap log p(x) - ELBO(q*) per point with q* found by

  * "two starts, total": the old rule: coordinate ascent from the prior and from the guide's q, and the start
    with the higher ELBO summed over all points;
  * "per point": the best per point of climbs from the prior, the guide's q, the posterior mode and R random
    starts (experiments.gaps.family_best without the certificate);
  * "certified": the same, then branch and bound (models.exact.binary.certify_mean_field) until every point is
    certified or a budget runs out, climbing from every better basin it finds;

beside the restart statistics (distinct optima per point, spread, hits), the certificate's coverage and the time
of each. Cases (those of issue 21):

  * noisy_or_std: the STD noisy-OR (877 patients, K = 3) after ``vizoo compare noisy_or --seeds 1
    --set svi.steps=50`` (the amortised guide at its own learned parameters);
  * lfdm_k5: an LFDM with K = 5 at random decoder weights (init_scale 1), 20 synthetic documents (V = 40);
  * noisy_or_k6: a noisy-OR with K = 6 at its random initial weights, 200 synthetic points (40 symptoms);
  * lfdm_news: the lfdm_news config's amortised guide after 100 steps on 300 articles (K = 6).

    python benchmarks/bench_gaps.py [--restarts 8] [--out benchmarks/results/gaps.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from vizoo.experiments.compare import CompareOptions, compare
from vizoo.experiments.gaps import SearchOptions, family_best
from vizoo.experiments.registry import MODELS
from vizoo.models.datasets import DataOptions

ROOT = Path(__file__).resolve().parents[1]
MAX_WORK = 1.6e9  # box-table entries per round: 4 times the comparison's default, enough to certify every case here


def _gap(spec, x, params, q) -> float:
    n = x.shape[0]
    return float(spec.exact.log_evidence(x, params) - spec.exact.elbo(x, params, q)) / n


def measure(name: str, spec, g, x, params, q, restarts: int) -> dict:
    n = x.shape[0]
    t0 = time.process_time()
    prior, warm = g.optimum(x, params), g.optimum(x, params, start=q)
    old = max((prior, warm), key=lambda s: float(spec.exact.elbo(x, params, s)))
    t_old = time.process_time() - t0
    t0 = time.process_time()
    local = family_best(spec, g, x, params, q, SearchOptions(restarts=restarts, certify=False))
    t_local = time.process_time() - t0
    t0 = time.process_time()
    cert = family_best(spec, g, x, params, q, SearchOptions(restarts=restarts, certify=True, max_work=MAX_WORK))
    t_cert = time.process_time() - t0
    f = cert.firmness
    row = {
        "case": name, "points": n, "latents": int(params.prior_logits.shape[-1]),
        "approximation_gap": {"two starts, total": _gap(spec, x, params, old), "per point": _gap(spec, x, params, local.q),
                              "certified": _gap(spec, x, params, cert.q)},
        "approximation_gap_low": float(spec.exact.log_evidence(x, params)) / n - float(cert.upper.mean()),
        "cpu_s": {"two starts, total": t_old, "per point": t_old + t_local, "certified": t_cert},
        "restarts": {k: v for k, v in local.firmness.items() if k != "two_start_mean"},
        "certified_points": f["certified"], "found_by_branch_and_bound": f["found_by_search"], "boxes": f["boxes"],
        "max_slack": f["max_slack"],
        "improved_points": int((cert.elbo > spec.exact.point_elbo(x, params, old) + 1e-6).sum()),
        "largest_improvement": float((cert.elbo - spec.exact.point_elbo(x, params, old)).max()),
    }
    print(json.dumps(row))
    return row


def case_std(restarts: int) -> dict:
    spec = MODELS["noisy_or"]
    result = compare(CompareOptions("noisy_or", seeds=1, guides=("amortised",), draws=40, progress=False,
                                    overrides=("svi.steps=50",)), log=lambda *a: None)
    res = result.runs[0][0]
    guide, params = res.trained["SVI amortised"], res.fits["SVI amortised"]
    return measure("noisy_or_std", spec, spec.guides["amortised"], res.x, params, guide.probs(res.x, params), restarts)


def case_synthetic(model: str, k: int, n: int, seed: int, restarts: int, **args) -> dict:
    spec = MODELS[model]
    a = spec.args_type(**{spec.latent_field: k}, **args)
    x = spec.load(DataOptions(name="synthetic", num_points=n, dim=40, doc_length=30), a, seed).x
    params = spec.init_params(x, a, seed)
    g = spec.guides["mean_field"]
    q = g.build(x, params).probs(x, params)
    return measure(f"{model}_k{k}", spec, g, x, params, q, restarts)


def case_news(restarts: int) -> dict:
    spec = MODELS["lfdm"]
    result = compare(CompareOptions("lfdm", config="lfdm_news", seeds=1, guides=("amortised",), draws=40, progress=False,
                                    overrides=("svi.steps=100", "data.subset=300", "em.max_iter=5")), log=lambda *a: None)
    res = result.runs[0][0]
    guide, params = res.trained["SVI amortised"], res.fits["SVI amortised"]
    return measure("lfdm_news", spec, spec.guides["amortised"], res.x, params, guide.probs(res.x, params), restarts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gaps.json"))
    ns = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows = [case_std(ns.restarts),
            case_synthetic("lfdm", 5, 20, 0, ns.restarts, init_scale=1.0),
            case_synthetic("noisy_or", 6, 200, 0, ns.restarts),
            case_news(ns.restarts)]
    out = {"restarts": ns.restarts, "threads": 1, "load_average_before": load, "cases": rows}
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
