"""Log-linear part-of-speech tagger benchmark: tagging accuracy per method, the gap split, times, and which
features help.

Data: the first ``--sentences`` sentences of the OANC sample of Debian's python3-pattern when installed (else its
WSJ sample, else synthetic sentences), K = 45 tags (Berg-Kirkpatrick et al.'s setting), every method from the same
initial parameters (models.pos_tagger.init_params, seed 0). Gold tags are used only to score.

Part 1 (methods): exact EM (Baum-Welch with the L-BFGS M-step, ``--em-iters`` iterations); variational Bayes for
  the transitions (Johnson 2007: q(A) Dirichlet per row, W and pi point estimates, ``--em-iters`` iterations) with
  concentrations 0.1 and 1, scored by the argmax of its q(t); and SVI (Analytic_ELBO,
  Adam, ``--svi-steps`` steps) with the three guides, and SVI on the same bound as VB (the ``pos_tagger_vb`` model:
  q(A) Dirichlet beside the mean-field and chain q(t), both concentrations). Each method's induced tags are the argmax of the exact
  posterior marginals at its own parameters ("posterior"), and for the guides also the argmax of their q ("q");
  scored by many-to-one, one-to-one and V-measure. Also: log p(w) per token at each method's parameters, the gap
  split per token at the guide's parameters (total = KL(q || p), approximation = KL(q* || p) with q* the family's
  best member, experiments.gaps.family_best: per sentence the best fixed point from the prior, the guide's q and 4
  random starts, or the exact posterior for the chain family), seconds per EM iteration and per SVI step.
Part 2 (features): EM alone with the feature kinds switched on one group at a time: word identity only (the
  classical HMM), + suffixes, + shape flags (capitalised, digit, hyphen), all.

    python benchmarks/bench_pos_tagger.py [--sentences 1000] [--em-iters 30] [--svi-steps 150] [--threads 1]
        [--out benchmarks/results/pos_tagger.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pyro
import torch
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.gaps import SearchOptions, family_best
from vizoo.experiments.registry import MODELS
from vizoo.experiments.train import train_svi
from vizoo.models import pos_tagger as tagger
from vizoo.models.datasets import DataOptions, tagged
from vizoo.models.exact import pos_tagger as exact

ROOT = Path(__file__).resolve().parents[1]
VB_CONCENTRATIONS = (0.1, 1.0)  # Dirichlet concentrations of the transition rows for variational Bayes
FEATURE_SETS = {
    "word (plain HMM)": ("word",),
    "word + suffixes": ("word", "suffix1", "suffix2", "suffix3"),
    "word + shape flags": ("word", "capitalised", "digit", "hyphen"),
    "all features": exact.FEATURES,
}


def load(sentences: int):
    for name in ("oanc", "wsj"):
        if (tagged.CORPORA_DIR / tagged.FILES[name]).is_file():
            data = tagged.tagged(name, sentences)
            return name, data.x, data.tags, data.description
    args = tagger.TaggerArgs(num_tags=8)
    data = tagger.synthetic(DataOptions(name="synthetic", num_points=sentences, num_steps=15, vocab_size=500), args, 0)
    return "synthetic", data.x, data.labels, data.description


def scores(x, params, gold, q=None) -> dict:
    with torch.no_grad():
        post = exact.forward_backward(x, params)
        tokens = int((gold >= 0).sum())
        out = {"log_p_per_token": float(post.log_evidence.sum()) / tokens,
               "posterior": tagger.evaluate(post.marginals.argmax(-1), gold)}
        if q is not None:
            out["q"] = tagger.evaluate(q.marginals.argmax(-1), gold)
    return out


def run_em(x, init, iters):
    start = time.perf_counter()
    fit = exact.fit_em(x, init, max_iter=iters, tol=0.0)
    wall = time.perf_counter() - start
    return fit, wall / max(fit.num_iters, 1)


def part1(x, gold, args, em_iters, svi_steps) -> dict:
    spec = MODELS["pos_tagger"]
    init = tagger.init_params(x, args, 0)
    tokens = int((gold >= 0).sum())
    out = {}
    fit, per_iter = run_em(x, init, em_iters)
    out["exact EM"] = {**scores(x, fit.params, gold), "iterations": fit.num_iters, "seconds_per_iteration": per_iter,
                       "converged": fit.converged}
    print("exact EM", out["exact EM"], flush=True)
    for alpha in VB_CONCENTRATIONS:  # Johnson (2007): variational Bayes with a sparse Dirichlet on the transitions
        start = time.perf_counter()
        vb = exact.fit_vb(x, init._replace(concentration=torch.tensor(alpha, dtype=x.dtype)), max_iter=em_iters, tol=0.0)
        per_iter = (time.perf_counter() - start) / max(vb.num_iters, 1)
        with torch.no_grad():
            words, lengths, _ = exact.word_ids(x)
            chain, _ = exact.vb_e_step(x, vb.params, vb.beta, lengths)
        out[f"VB, Dir({alpha}) transitions"] = {
            "q": tagger.evaluate(chain.marginals.argmax(-1), gold), "bound_per_token": vb.elbo[-1] * x.shape[0] / tokens,
            "iterations": vb.num_iters, "seconds_per_iteration": per_iter, "converged": vb.converged}
        print("VB", alpha, out[f"VB, Dir({alpha}) transitions"], flush=True)
    for name in ("mean_field", "structured_mean_field", "amortised"):
        g = spec.guides[name]
        pyro.set_rng_seed(0)
        guide = g.build(x, init)
        model = spec.learnable(init, args)
        cfg = SVIConfig(elbo="Analytic_ELBO", lr=0.05, lr_final=0.005, steps=svi_steps)
        start = time.perf_counter()
        train_svi(model, guide, x, cfg, seed=0, progress=False)
        per_step = (time.perf_counter() - start) / svi_steps
        params = model.params.detach()
        with torch.no_grad():
            q = guide.probs(x, params)
            elbo = float(spec.exact.elbo(x, params, q))
            total = float(spec.exact.kl(x, params, q))
            best = family_best(spec, g, x, params, q, SearchOptions(restarts=4)).q  # q*: per sentence, several starts
            approx = float(spec.exact.kl(x, params, best))
        out[f"SVI {name}"] = {**scores(x, params, gold, q), "steps": svi_steps, "seconds_per_step": per_step,
                              "elbo_per_token": elbo / tokens, "total_gap_per_token": total / tokens,
                              "approximation_gap_per_token": approx / tokens,
                              "amortisation_gap_per_token": (total - approx) / tokens}
        print(name, out[f"SVI {name}"], flush=True)
    vb_spec = MODELS["pos_tagger_vb"]  # SVI with q(A) Dirichlet beside q(t): the same bound as Johnson's VB
    for alpha in VB_CONCENTRATIONS:
        vb_init = init._replace(concentration=torch.tensor(alpha, dtype=x.dtype))
        for name in ("mean_field", "structured_mean_field"):
            pyro.set_rng_seed(0)
            guide = vb_spec.guides[name].build(x, vb_init)
            model = vb_spec.learnable(vb_init, args)
            cfg = SVIConfig(elbo="Analytic_ELBO", lr=0.05, lr_final=0.005, steps=svi_steps)
            start = time.perf_counter()
            train_svi(model, guide, x, cfg, seed=0, progress=False)
            per_step = (time.perf_counter() - start) / svi_steps
            with torch.no_grad():
                fitted = vb_spec.fitted(model, guide)
                bound = float(vb_spec.bound(x, fitted, guide))
                q = guide.variational(x)
            key = f"SVI {name}, q(A) Dir({alpha})"
            out[key] = {"q": tagger.evaluate(q.marginals.argmax(-1), gold), "bound_per_token": bound / tokens,
                        "steps": svi_steps, "seconds_per_step": per_step}
            print(key, out[key], flush=True)
    return out


def part2(x, gold, num_tags, em_iters) -> dict:
    out = {}
    for label, kinds in FEATURE_SETS.items():
        args = tagger.TaggerArgs(num_tags=num_tags, features=kinds)
        fit, per_iter = run_em(x, tagger.init_params(x, args, 0), em_iters)
        out[label] = {**scores(x, fit.params, gold), "num_features": int(fit.params.weights.shape[0]),
                      "seconds_per_iteration": per_iter}
        print(label, out[label], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--em-iters", type=int, default=30)
    parser.add_argument("--svi-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parts", default="1,2")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pos_tagger.json"))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    pyro.settings.set(module_local_params=True)
    name, x, gold, description = load(opts.sentences)
    num_tags = 45 if name != "synthetic" else 8
    args = tagger.TaggerArgs(num_tags=num_tags)
    result = {"data": description, "num_tags": num_tags, "tokens": int((gold >= 0).sum()),
              "word_types": int(exact.vocabulary(x).shape[0]), "em_iterations": opts.em_iters, "svi_steps": opts.svi_steps,
              "threads": opts.threads, "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}"}
    result["load_before"] = os.getloadavg()[0]
    start = time.perf_counter()
    if "1" in opts.parts:
        result["methods"] = part1(x, gold, args, opts.em_iters, opts.svi_steps)
    if "2" in opts.parts:
        result["features"] = part2(x, gold, num_tags, opts.em_iters)
    result["wall_seconds"] = time.perf_counter() - start
    result["load_after"] = os.getloadavg()[0]
    Path(opts.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {opts.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
