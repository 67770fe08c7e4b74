r"""Benchmark: exact EM against scikit-learn, and SVI's time to EM-quality fits, on a big synthetic GMM.

Data: ``random_params(K=8, D=8, seed)`` and ``simulate(N=200_000)`` in float64 (``--quick``: N=20_000),
initialised by ``init_params(x, GMMArgs(8, "diag"), seed)`` for every method. Default seeds 0 and 15:
seed 0's k-means++ initialisation is already within 3e-5 nats/point of the EM optimum, seed 15's is
0.25 nats/point short (EM needs 4 iterations to come within 0.01).

Part 1, EM vs scikit-learn. ``fit_em`` and ``GaussianMixture(covariance_type="diag")`` from the same
initialisation (weights_init, means_init, precisions_init = 1 / scales^2; n_init=1; tol=1e-3;
reg_covar=1e-6; max_iter=100). Best wall time of interleaved repeats, iteration counts, the final
mean log-likelihood per point of both (``fit_em(...).log_likelihood[-1]`` and ``gm.score(x)``), and
the time of one bare E+M iteration of each.

Part 2, SVI. The EM optimum is ``fit_em`` run to tol=1e-8. Each configuration in ``CONFIGS`` runs until
the gap (EM optimum - ``log_evidence(x, params) / N`` of the current model parameters, in float64,
evaluated after every step outside the timed region) has stayed <= ``--target`` (0.01) for ``--hold``
(20) consecutive steps, or its time budget or step limit runs out. Reported per configuration: setup
time (building modules; the posterior start's E-step), time per step, the step and SVI time from
which the gap stays within target ("settled"; the first time it is within target is also recorded),
the final gap, and the settled time as a multiple of EM's wall time (tol=1e-3, the scikit-learn
equivalent fit; tol=1e-8; and EM run for just the iterations it needs to come within target).
Fast configurations whose whole run takes < 5 s are run three times and the best is kept, as EM's
times are best-of-several.

Run:  .venv/bin/python benchmarks/bench_gmm.py [--quick] [--seeds 0 15] [--only NAME ...] [--skip-em]
Writes benchmarks/results/gmm.json (``--quick``: gmm_quick.json) and prints a table per seed.
Timings are wall-clock on a possibly shared machine: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import pyro
import pyro.distributions as dist
import sklearn
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from sklearn.mixture import GaussianMixture
from torch.distributions import constraints
from vizoo.guides.gmm import mean_field
from vizoo.models.exact import gmm as exact
from vizoo.models.gmm import (
    GMM,
    GMMArgs,
    GMMParams,
    MarginalGMM,
    init_params,
    model,
    random_params,
    simulate,
)

pyro.settings.set(module_local_params=True)

K, D = 8, 8
REG_COVAR = 1e-6


# ----------------------------------------------------------------------------------------------
# Model variants for SVI. All share the learnable parameters of models.gmm.GMM.
# ----------------------------------------------------------------------------------------------


class AutogradDiagNormalMixture(dist.TorchDistribution):
    """The mixture density through the log_joint expansion, differentiated by autograd.

    The project's :class:`models.gmm.DiagNormalMixture` computes the same value with a hand-written
    backward pass (:func:`models.exact.gmm.mixture_log_likelihood`); this variant measures what that saves.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, params: GMMParams, batch_shape=torch.Size(), validate_args=None):
        self.params = params
        super().__init__(torch.Size(batch_shape), torch.Size([params.dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return AutogradDiagNormalMixture(self.params, batch_shape, validate_args=False)

    def log_prob(self, x):
        flat = x.reshape(-1, x.shape[-1])
        return torch.logsumexp(exact.log_joint(flat, self.params), -1).reshape(x.shape[:-1])


class SlowMarginalGMM(MarginalGMM):
    """The project's collapsed model with a slower observation density, for comparison.

    obs="msf": ``MixtureSameFamily(Categorical, Normal.to_event(1))`` (an (N, K, D) broadcast);
    obs="expand": :class:`AutogradDiagNormalMixture`.
    """

    def __init__(self, init: GMMParams, obs: str):
        super().__init__(init)
        self.obs = obs

    def forward(self, x):
        p = self.params
        if self.obs == "msf":
            obs = dist.MixtureSameFamily(dist.Categorical(p.weights), dist.Normal(p.locs, p.scales).to_event(1))
        else:
            obs = AutogradDiagNormalMixture(p)
        with pyro.plate("points", x.shape[0]):
            pyro.sample("x", obs, obs=x)


class CheapObsGMM(GMM):
    """The joint p(x, z) of :func:`models.gmm.model` (z still a latent site, for a mean-field guide),
    with log p(x_n | z_n) read from the (N, K) table of the log_joint expansion rather than from an
    (N, K, D) Normal broadcast under enumeration."""

    def forward(self, x):
        params = self.params
        table = exact.log_joint(x, GMMParams(torch.ones_like(params.weights), params.locs, params.scales))  # (N, K)
        with pyro.plate("points", x.shape[0]) as n:
            z = pyro.sample("z", dist.Categorical(params.weights))  # (N,) or (K, 1) enumerated
            pyro.factor("x", table[n, z])


class EnumModelGMM(GMM):
    """z enumerated in the model itself (``config_enumerate`` on the model) with an empty guide:
    TraceEnum_ELBO then sums z out exactly, so the ELBO is log p(x). Uses :func:`models.gmm.model`."""

    def forward(self, x):
        config_enumerate(model, "parallel")(x, self.params)


def empty_guide(x):
    pass


# ----------------------------------------------------------------------------------------------
# SVI configurations.
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """One SVI configuration.

    model: joint (models.gmm.GMM) | cheap_obs | enum_model | marginal_msf | marginal_fast | marginal_fused
        | torch_marginal (no Pyro: autograd through -log_evidence).
    guide_start: start of the mean-field guide ("uniform" | "posterior"); None: empty guide (z summed
        out in the model).
    lr, gamma, betas: Adam's step size, multiplied by ``gamma`` after every step, and its betas.
    optimiser: "adam", or "lbfgs" (strong-Wolfe line search, ``lbfgs_iters`` evaluations at most per step).
    """

    name: str
    description: str
    model: str = "joint"
    guide_start: str | None = "uniform"
    lr: float = 0.05
    gamma: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    optimiser: str = "adam"
    lbfgs_iters: int = 10
    dtype: torch.dtype = torch.float64
    slow: bool = False  # a (K, N, D) broadcast or an (N, K) guide: several hundred ms a step at N=200k


# The fast path: z summed out in the model, Adam from lr 0.3 decaying by 3% a step, beta1 = 0.7.
FAST = dict(lr=0.3, gamma=0.97, betas=(0.7, 0.99))
FAST_DESC = "Adam 0.3 x 0.97^step, betas (0.7, 0.99)"

CONFIGS: list[BenchConfig] = [
    BenchConfig("plain_uniform", "issue baseline: GMM + MeanField(uniform) + TraceEnum_ELBO, Adam(0.05)", slow=True),
    BenchConfig("plain_posterior", "as plain, guide started at the E-step posterior", guide_start="posterior", slow=True),
    BenchConfig(
        "plain_posterior_fast_lr", f"as plain_posterior, {FAST_DESC}", guide_start="posterior", slow=True, **FAST,
    ),
    BenchConfig(
        "cheap_obs_posterior_fast_lr",
        f"MeanField(posterior) + TraceEnum, log p(x|z) from the (N, K) log_joint table, {FAST_DESC}",
        model="cheap_obs", guide_start="posterior", slow=True, **FAST,
    ),
    BenchConfig(
        "enum_model_fast_lr", f"z enumerated in the model (config_enumerate), empty guide, TraceEnum_ELBO, {FAST_DESC}",
        model="enum_model", guide_start=None, slow=True, **FAST,
    ),
    BenchConfig(
        "marginal_msf_fast_lr", f"obs MixtureSameFamily (z summed out), empty guide, Trace_ELBO, {FAST_DESC}",
        model="marginal_msf", guide_start=None, **FAST,
    ),
    BenchConfig(
        "marginal_expand_fast_lr", f"obs mixture via log_joint expansion + autograd, empty guide, Trace_ELBO, {FAST_DESC}",
        model="marginal_fast", guide_start=None, **FAST,
    ),
    BenchConfig(
        "torch_marginal_fast_lr", f"no Pyro: autograd through -log_evidence, {FAST_DESC}",
        model="torch_marginal", guide_start=None, **FAST,
    ),
    BenchConfig(
        "marginal_fused_fast_lr", f"obs mixture via log_joint expansion, fused backward, empty guide, Trace_ELBO, {FAST_DESC}",
        model="marginal_fused", guide_start=None, **FAST,
    ),
    BenchConfig(
        "marginal_fused_lr0.05", "as marginal_fused_fast_lr with constant Adam(0.05), default betas (the project default lr)",
        model="marginal_fused", guide_start=None, lr=0.05,
    ),
    BenchConfig(
        "marginal_fused_fast_lr_f32", "as marginal_fused_fast_lr in float32", model="marginal_fused", guide_start=None,
        dtype=torch.float32, **FAST,
    ),
    BenchConfig(
        "marginal_fused_lbfgs", "as marginal_fused, L-BFGS(lr=1, <=10 evaluations a step, history 10, strong Wolfe)",
        model="marginal_fused", guide_start=None, optimiser="lbfgs", lr=1.0,
    ),
]


def build(cfg: BenchConfig, x: torch.Tensor, init: GMMParams):
    """Set up one configuration; returns (step, current_params, evaluations). Everything here is timed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = x.to(cfg.dtype)
    init = init.to(cfg.dtype)
    module_cls = {
        "joint": GMM, "cheap_obs": CheapObsGMM, "enum_model": EnumModelGMM, "torch_marginal": GMM,
        "marginal_msf": lambda i: SlowMarginalGMM(i, "msf"), "marginal_fast": lambda i: SlowMarginalGMM(i, "expand"),
        "marginal_fused": MarginalGMM,  # the project's fast path: guide "marginal" in a config
    }[cfg.model]
    gmm = module_cls(init)
    modules: list[torch.nn.Module] = [gmm]
    if cfg.guide_start is not None:
        guide = mean_field(x, init, start=cfg.guide_start)
        modules.append(guide)
        guide_fn = config_enumerate(guide, "parallel")
    else:
        guide_fn = empty_guide
    if cfg.model == "torch_marginal":
        def elbo_loss_and_grads(*_):
            loss = -exact.log_evidence(x, gmm.params)
            loss.backward()
            return loss.item()
    elif cfg.guide_start is not None or cfg.model == "enum_model":
        elbo_loss_and_grads = TraceEnum_ELBO(max_plate_nesting=1).loss_and_grads
    else:
        elbo_loss_and_grads = Trace_ELBO().loss_and_grads
    evals = [0]

    def loss_and_grads() -> float:
        evals[0] += 1
        return elbo_loss_and_grads(gmm, guide_fn, x)

    params = [p for m in modules for p in m.parameters()]
    if cfg.optimiser == "adam":
        optim = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)

        def step() -> float:
            loss = loss_and_grads()
            optim.step()
            optim.zero_grad(set_to_none=True)
            if cfg.gamma != 1.0:
                for g in optim.param_groups:
                    g["lr"] *= cfg.gamma
            return loss
    elif cfg.optimiser == "lbfgs":
        # The loss is the summed (not per-point) -ELBO: L-BFGS's first step is lr * min(1, 1/|grad|_1),
        # a small one here; per-point losses make it a unit step and cost many line-search evaluations.
        optim = torch.optim.LBFGS(params, lr=cfg.lr, max_iter=cfg.lbfgs_iters, history_size=10,
                                  line_search_fn="strong_wolfe")

        def closure():
            optim.zero_grad(set_to_none=True)
            return torch.tensor(loss_and_grads())

        def step() -> float:
            return float(optim.step(closure))
    else:
        raise ValueError(cfg.optimiser)
    return step, lambda: gmm.params, evals


def run_svi(cfg, x, init, opt_ll, target, budget_s, max_steps, hold):
    """Run one configuration until the gap to the EM optimum has stayed <= target for ``hold`` consecutive
    steps, or ``budget_s`` seconds of SVI time, or ``max_steps``. The gap is evaluated after every step,
    outside the timed region."""
    num_points = x.shape[0]

    def gap() -> float:
        p = current()
        with torch.no_grad():
            p64 = GMMParams(p.weights.detach().double(), p.locs.detach().double(), p.scales.detach().double())
            return opt_ll - exact.log_evidence(x, p64).item() / num_points

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    step, current, evals = build(cfg, x, init)
    elapsed = setup_s = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    history = [(0, 0, elapsed, gap())]  # (step, loss evaluations, seconds, gap)
    step_times: list[float] = []
    s, status = 0, None
    while status is None:
        s += 1
        c, t = time.process_time(), time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t
        cpu += time.process_time() - c
        elapsed += dt
        step_times.append(dt)
        history.append((s, evals[0], elapsed, gap()))
        if not math.isfinite(loss):
            status = f"non-finite loss at step {s}"
        elif s >= hold and all(h[3] <= target for h in history[-hold:]):
            status = f"held the target for {hold} steps"
        elif elapsed >= budget_s:
            status = f"budget {budget_s:.0f} s exhausted"
        elif s >= max_steps:
            status = f"max steps {max_steps}"
    reached = next((h for h in history if h[3] <= target), None)
    settled = None  # the first step from which the gap stays <= target to the end of the run
    if history[-1][3] <= target:
        i = len(history) - 1
        while i > 0 and history[i - 1][3] <= target:
            i -= 1
        settled = history[i]
    return {
        "name": cfg.name,
        "description": cfg.description,
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "optimiser": cfg.optimiser,
        "lr": cfg.lr, "gamma": cfg.gamma, "betas": cfg.betas,
        "setup_s": setup_s,
        "steps": s,
        "evaluations": evals[0],
        "wall_s": elapsed,
        "cpu_s": cpu,
        "step_ms_median": 1e3 * float(np.median(step_times)),
        "step_ms_min": 1e3 * min(step_times),
        "initial_gap": history[0][3],
        "reached_step": reached[0] if reached else None,
        "reached_s": reached[2] if reached else None,
        "settled_step": settled[0] if settled else None,
        "settled_evaluations": settled[1] if settled else None,
        "settled_s": settled[2] if settled else None,
        "max_gap_after_reached": max(h[3] for h in history if h[0] >= reached[0]) if reached else None,
        "final_gap": history[-1][3],
        "min_gap": min(h[3] for h in history),
        "status": status,
        "history": [(k, e, round(t, 4), g) for (k, e, t, g) in history],
    }


# ----------------------------------------------------------------------------------------------
# Part 1: EM vs scikit-learn.
# ----------------------------------------------------------------------------------------------


def best_of(fn, repeats):
    best, out = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_em_vs_sklearn(x, init, repeats, max_iter, tol=1e-3):
    xn = x.numpy()

    def ours():
        return exact.fit_em(x, init, "diag", REG_COVAR, max_iter, tol)

    def theirs():
        gm = GaussianMixture(
            K, covariance_type="diag", tol=tol, reg_covar=REG_COVAR, max_iter=max_iter, n_init=1,
            init_params="random_from_data",  # overridden by the three *_init below; the cheapest to compute
            weights_init=init.weights.numpy(), means_init=init.locs.numpy(),
            precisions_init=(1.0 / init.scales**2).numpy(), random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gm.fit(xn)

    ours(), theirs()  # warm-up
    t_ours, t_theirs = math.inf, math.inf
    for _ in range(repeats):  # interleaved, so both see the same machine load
        t, res = best_of(ours, 1)
        t_ours = min(t_ours, t)
        t, gm = best_of(theirs, 1)
        t_theirs = min(t_theirs, t)
    ll_ours = res.log_likelihood[-1].item()
    ll_theirs = float(gm.score(xn))

    # One EM iteration (E-step + M-step) on its own, without scikit-learn's fit() overheads (input
    # validation, the M-step on dummy responsibilities that precedes *_init) nor ours (the features).
    feats = exact.features(x)

    def our_iter():
        e = exact.e_step_features(feats, init)
        exact.m_step_features(feats, e.resp, "diag", REG_COVAR)

    def their_iter():
        _, log_resp = gm._e_step(xn)
        gm._m_step(xn, log_resp)

    t_our_iter, t_their_iter = math.inf, math.inf
    for _ in range(repeats):
        t_our_iter = min(t_our_iter, best_of(our_iter, 1)[0])
        t_their_iter = min(t_their_iter, best_of(their_iter, 1)[0])
    return {
        "iteration_ours_ms": 1e3 * t_our_iter,
        "iteration_sklearn_ms": 1e3 * t_their_iter,
        "tol": tol,
        "max_iter": max_iter,
        "ours_s": t_ours,
        "sklearn_s": t_theirs,
        "ratio_ours_over_sklearn": t_ours / t_theirs,
        "ours_iters": res.num_iters,
        "sklearn_iters": int(gm.n_iter_),
        "ours_converged": bool(res.converged),
        "sklearn_converged": bool(gm.converged_),
        "ours_mean_loglik": ll_ours,
        "sklearn_mean_loglik": ll_theirs,
        "loglik_abs_diff": abs(ll_ours - ll_theirs),
        "loglik_agree_1e-4": abs(ll_ours - ll_theirs) <= 1e-4,
    }


def em_reference(x, init, repeats, target, tight_tol=1e-8, max_iter=10_000):
    """EM to a tight tolerance (its final log-likelihood is "the optimum"), the standard tol=1e-3 fit,
    and EM run for just the iterations it needs to come within ``target`` of the optimum; best times."""
    t_tight, res = best_of(lambda: exact.fit_em(x, init, "diag", REG_COVAR, max_iter, tight_tol), repeats)
    t_std, std = best_of(lambda: exact.fit_em(x, init, "diag", REG_COVAR, max_iter, 1e-3), repeats)
    opt = res.log_likelihood[-1].item()
    first = int((opt - res.log_likelihood <= target).nonzero()[0])  # EM is monotone: stays within from here
    t_target, _ = best_of(lambda: exact.fit_em(x, init, "diag", REG_COVAR, first, 0.0), repeats)
    return {
        "optimum_mean_loglik": opt,
        "tight_tol": tight_tol,
        "tight_iters": res.num_iters,
        "tight_s": t_tight,
        "tol1e-3_iters": std.num_iters,
        "tol1e-3_s": t_std,
        "tol1e-3_gap": opt - std.log_likelihood[-1].item(),
        "init_gap": opt - res.log_likelihood[0].item(),
        "iters_to_target": first,
        "to_target_s": t_target,  # fit_em with max_iter = iters_to_target (M-steps) plus its final E-step
    }


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=20_000 and short budgets: a smoke check (< 1 min)")
    ap.add_argument("--num-points", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="data/init seeds (default 0 15: seed 0's init is already within 0.01 of the optimum, "
                         "seed 15's is 0.25 nats/point short and EM needs 4 iterations to get within 0.01)")
    ap.add_argument("--only", nargs="+", default=None, help="SVI configurations to run (default: all)")
    ap.add_argument("--skip-em", action="store_true", help="skip part 1 (EM vs scikit-learn)")
    ap.add_argument("--target", type=float, default=0.01, help="nats/point from the EM optimum")
    ap.add_argument("--budget", type=float, default=None, help="SVI seconds per configuration (default 40; quick 5)")
    ap.add_argument("--slow-budget", type=float, default=None,
                    help="SVI seconds for the slow (several hundred ms a step) configurations (default 30; quick 3)")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--hold", type=int, default=20, help="steps the gap must stay within target to stop early")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    n = args.num_points or (20_000 if args.quick else 200_000)
    seeds = args.seeds if args.seeds is not None else [0, 15]
    budget = args.budget or (5.0 if args.quick else 40.0)
    slow_budget = args.slow_budget or (3.0 if args.quick else 30.0)
    repeats = 3 if args.quick else 5
    out = args.out or ROOT / "benchmarks" / "results" / ("gmm_quick.json" if args.quick else "gmm.json")
    configs = [c for c in CONFIGS if args.only is None or c.name in args.only]
    if args.only and len(configs) != len(args.only):
        ap.error(f"unknown configuration in {args.only}; known: {[c.name for c in CONFIGS]}")

    result = {
        "meta": {
            "num_points": n, "K": K, "D": D, "seeds": seeds, "target_nats_per_point": args.target,
            "svi_budget_s": budget, "svi_slow_budget_s": slow_budget, "svi_max_steps": args.max_steps, "hold_steps": args.hold,
            "torch": torch.__version__, "pyro": pyro.__version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "pyro_validation": pyro.poutine.util.is_validation_enabled(),
            "loadavg_start": os.getloadavg(),
            "notes": "times are wall-clock seconds; SVI times include setup (module/guide construction, the "
                     "posterior start's E-step); the gap is evaluated after every step outside the timing; "
                     "settled = first step from which the gap stays <= target to the end of the run.",
        },
        "runs": [],
    }
    t_start = time.perf_counter()
    for seed in seeds:
        params = random_params(K, D, seed)
        x, _ = simulate(params, n, seed)
        init = init_params(x, GMMArgs(K, "diag", REG_COVAR), seed)
        run = {"seed": seed, "loadavg": os.getloadavg()}
        print(f"\n=== seed {seed}: N={n}, K={K}, D={D}, float64, torch threads={torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.2f} ===")
        if not args.skip_em:
            em = bench_em_vs_sklearn(x, init, repeats, max_iter=100)
            run["em_vs_sklearn"] = em
            print(
                f"EM vs sklearn (tol 1e-3, best of {repeats}): ours {em['ours_s']*1e3:.1f} ms ({em['ours_iters']} it), "
                f"sklearn {em['sklearn_s']*1e3:.1f} ms ({em['sklearn_iters']} it), ratio {em['ratio_ours_over_sklearn']:.3f}; "
                f"mean loglik {em['ours_mean_loglik']:.10f} vs {em['sklearn_mean_loglik']:.10f} "
                f"(|diff| {em['loglik_abs_diff']:.1e}); one E+M iteration {em['iteration_ours_ms']:.1f} vs "
                f"{em['iteration_sklearn_ms']:.1f} ms"
            )
        ref = em_reference(x, init, repeats, args.target)
        run["em_reference"] = ref
        print(
            f"EM optimum {ref['optimum_mean_loglik']:.6f}: tol 1e-8 {ref['tight_iters']} it {ref['tight_s']*1e3:.1f} ms; "
            f"tol 1e-3 {ref['tol1e-3_iters']} it {ref['tol1e-3_s']*1e3:.1f} ms; within {args.target} after "
            f"{ref['iters_to_target']} it {ref['to_target_s']*1e3:.1f} ms; init gap {ref['init_gap']:.5f}"
        )
        for cfg in configs:  # warm-up: first-call costs (allocator, Pyro's caches, lazy imports) stay out of the timings
            step, _, _ = build(cfg, x[:2000], init)
            step(), step()
        run["svi"] = []
        print(f"{'config':30s} {'dtype':7s} {'ms/step':>8s} {'settled at':>14s} {'seconds':>8s} "
              f"{'xEM1e-3':>8s} {'xEM1e-8':>8s} {'final gap':>10s}  stop")
        for cfg in configs:
            b = slow_budget if cfg.slow else budget
            r = run_svi(cfg, x, init, ref["optimum_mean_loglik"], args.target, b, args.max_steps, args.hold)
            if not cfg.slow and r["wall_s"] < 5.0:  # cheap to repeat: best of 3, as EM's times are best of several
                reps = [r] + [run_svi(cfg, x, init, ref["optimum_mean_loglik"], args.target, b, args.max_steps,
                                      args.hold) for _ in range(2)]
                r = min(reps, key=lambda q: (q["settled_s"] is None, q["settled_s"] or q["wall_s"]))
                r["repeat_settled_s"] = [q["settled_s"] for q in reps]
            for key, den in (("tol1e-3", ref["tol1e-3_s"]), ("tight", ref["tight_s"]), ("to_target", ref["to_target_s"])):
                r[f"settled_over_em_{key}"] = r["settled_s"] / den if r["settled_s"] is not None else None
                r[f"reached_over_em_{key}"] = r["reached_s"] / den if r["reached_s"] is not None else None
            run["svi"].append(r)
            if r["settled_s"] is not None:
                at = f"{r['settled_step']}" + (f" ({r['settled_evaluations']} ev)" if cfg.optimiser != "adam" else "")
                cols = (f"{at:>14s} {r['settled_s']:8.2f} {r['settled_over_em_tol1e-3']:8.1f} "
                        f"{r['settled_over_em_tight']:8.1f}")
            else:
                cols = f"{'-':>14s} {'-':>8s} {'-':>8s} {'-':>8s}"
            print(f"{r['name']:30s} {r['dtype']:7s} {r['step_ms_median']:8.1f} {cols} {r['final_gap']:10.5f}  "
                  f"{r['steps']} steps, {r['status']}")
        result["runs"].append(run)
    result["meta"]["loadavg_end"] = os.getloadavg()
    result["meta"]["total_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} in {result['meta']['total_s']:.0f} s "
          f"(load average {result['meta']['loadavg_start'][0]:.2f} -> {result['meta']['loadavg_end'][0]:.2f})")


if __name__ == "__main__":
    main()
