r"""Benchmark: exact EM against scikit-learn, and SVI's time to EM-quality fits, on a big synthetic GMM.

Data: ``random_params(K=8, D=8, seed)`` and ``simulate(N=200_000)`` in float64 (``--quick``: N=20_000),
initialised by ``init_params(x, GMMArgs(8, "diag"), seed)`` for every method.

Part 1, EM vs scikit-learn. ``fit_em`` and ``GaussianMixture(covariance_type="diag")`` from the same
initialisation (weights_init, means_init, precisions_init = 1 / scales^2; n_init=1; tol=1e-3;
reg_covar=1e-6; the same max_iter). Best wall time of a few repeats, iteration counts, and the final
mean log-likelihood per point of both (``fit_em(...).log_likelihood[-1]`` and ``gm.score(x)``).

Part 2, SVI. The EM optimum is ``fit_em`` run to tol=1e-8. Each SVI configuration is run for a
bounded time; every ``eval_every`` steps (outside the timed region) the log-likelihood per point of
the current model parameters, ``log_evidence(x, params) / N`` in float64, is compared with the EM
optimum. Reported: setup time, time per step, the time and step at which the gap first falls to
``--target`` (0.01 nats/point) and whether it stays there, the final gap, and those times as
multiples of EM's wall time (tol=1e-3, the scikit-learn-equivalent fit, and tol=1e-8).
The setup (building modules, the posterior start of a guide) counts towards SVI's time.

Run:  .venv/bin/python benchmarks/bench_gmm.py [--quick] [--only NAME ...] [--seeds 0 8]
Writes benchmarks/results/gmm.json (``--quick``: gmm_quick.json) and prints a table.
Timings are wall-clock on a shared machine: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from torch.distributions import constraints  # noqa: E402

from models.exact import gmm as exact  # noqa: E402  (models before guides: models/__init__ imports guides)
from models.gmm import GMM, GMMArgs, GMMParams, init_params, model, random_params, simulate  # noqa: E402
from guides.gmm import mean_field  # noqa: E402  isort: skip

pyro.settings.set(module_local_params=True)

K, D = 8, 8
REG_COVAR = 1e-6


# ----------------------------------------------------------------------------------------------
# Model variants for SVI. All share the learnable parameters of models.gmm.GMM.
# ----------------------------------------------------------------------------------------------


class DiagNormalMixture(dist.TorchDistribution):
    """The diagonal Gaussian mixture sum_k pi_k N(x | mu_k, diag(sigma_k^2)) as one distribution, with a
    ``log_prob`` that uses the expansion of :func:`models.exact.gmm.log_joint` (two (N, D) x (D, K)
    products and a logsumexp) instead of broadcasting x against every component as an (N, K, D)
    tensor, as ``MixtureSameFamily(Categorical, Normal.to_event(1))`` does."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, params: GMMParams, batch_shape=torch.Size(), validate_args=None):
        self.params = params
        super().__init__(torch.Size(batch_shape), torch.Size([params.dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return DiagNormalMixture(self.params, batch_shape, validate_args=False)

    def log_prob(self, x):
        if self._validate_args:
            self._validate_sample(x)
        flat = x.reshape(-1, x.shape[-1])
        lp = torch.logsumexp(exact.log_joint(flat, self.params), -1).reshape(x.shape[:-1])
        return lp.expand(self.batch_shape) if lp.shape != self.batch_shape and not self.batch_shape == () else lp

    def sample(self, sample_shape=torch.Size()):
        p = self.params
        mix = dist.MixtureSameFamily(dist.Categorical(p.weights), dist.Normal(p.locs, p.scales).to_event(1))
        return mix.expand(self.batch_shape).sample(sample_shape)


class MarginalGMM(GMM):
    """log p(x) with z summed out exactly in the model: the ELBO with an empty guide is log p(x).

    fast=False: the observation is ``MixtureSameFamily`` (an (N, K, D) broadcast in log_prob);
    fast=True: :class:`DiagNormalMixture` (the log_joint expansion, no (N, K, D) intermediate).
    """

    def __init__(self, init: GMMParams, covariance: str = "diag", fast: bool = True):
        super().__init__(init, covariance)
        self.fast = fast

    def forward(self, x):
        params = self.params
        if self.fast:
            obs = DiagNormalMixture(params)
        else:
            obs = dist.MixtureSameFamily(
                dist.Categorical(params.weights), dist.Normal(params.locs, params.scales).to_event(1)
            )
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
class SVIConfig:
    name: str
    description: str
    model: str = "joint"  # joint | cheap_obs | marginal_msf | marginal_fast | enum_model | torch_marginal
    guide_start: str | None = "uniform"  # mean-field guide start; None: empty guide
    lr: float = 0.05
    lr_final: float | None = None  # geometric decay from lr to lr_final over ``decay_steps``
    decay_steps: int = 100
    optimiser: str = "adam"  # adam | lbfgs
    dtype: torch.dtype = torch.float64
    validate: bool = True  # pyro.enable_validation
    extra: dict = field(default_factory=dict)


CONFIGS: list[SVIConfig] = [
    SVIConfig("plain_uniform", "issue baseline: GMM + MeanField(uniform), TraceEnum_ELBO, Adam(0.05)"),
    SVIConfig("plain_posterior", "as plain, guide started at the E-step posterior", guide_start="posterior"),
    SVIConfig(
        "plain_posterior_lr0.005", "as plain_posterior, Adam(0.005)", guide_start="posterior", lr=0.005,
    ),
    SVIConfig(
        "cheap_obs_posterior", "mean-field(posterior) + TraceEnum, log p(x|z) from the log_joint table, Adam(0.005)",
        model="cheap_obs", guide_start="posterior", lr=0.005,
    ),
    SVIConfig(
        "enum_model_lr0.01", "z enumerated in the model, empty guide, TraceEnum_ELBO, Adam(0.01)",
        model="enum_model", guide_start=None, lr=0.01,
    ),
    SVIConfig(
        "marginal_msf_lr0.01", "MixtureSameFamily obs, empty guide, Trace_ELBO, Adam(0.01)",
        model="marginal_msf", guide_start=None, lr=0.01,
    ),
    SVIConfig(
        "marginal_fast_lr0.01", "log_joint-expansion mixture obs, empty guide, Trace_ELBO, Adam(0.01)",
        model="marginal_fast", guide_start=None, lr=0.01,
    ),
    SVIConfig(
        "marginal_fast_lr0.05", "as marginal_fast, Adam(0.05) constant",
        model="marginal_fast", guide_start=None, lr=0.05,
    ),
    SVIConfig(
        "marginal_fast_decay", "as marginal_fast, Adam 0.05 -> 0.001 geometric over 100 steps",
        model="marginal_fast", guide_start=None, lr=0.05, lr_final=0.001, decay_steps=100,
    ),
    SVIConfig(
        "marginal_fast_lr0.01_f32", "as marginal_fast_lr0.01 in float32",
        model="marginal_fast", guide_start=None, lr=0.01, dtype=torch.float32,
    ),
    SVIConfig(
        "marginal_fast_lr0.01_noval", "as marginal_fast_lr0.01 with Pyro validation off",
        model="marginal_fast", guide_start=None, lr=0.01, validate=False,
    ),
    SVIConfig(
        "torch_marginal_lr0.01", "no Pyro: Adam(0.01) on -log_evidence(x, params), same parametrisation",
        model="torch_marginal", guide_start=None, lr=0.01,
    ),
]


def build(cfg: SVIConfig, x: torch.Tensor, init: GMMParams) -> tuple[Callable[[], float], Callable[[], GMMParams]]:
    """Set up one configuration; returns (step, current_params). Everything here is timed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(cfg.validate)
    x = x.to(cfg.dtype)
    init = init.to(cfg.dtype)
    module_cls = {
        "joint": GMM, "cheap_obs": CheapObsGMM, "enum_model": EnumModelGMM,
        "marginal_msf": lambda i: MarginalGMM(i, fast=False), "marginal_fast": MarginalGMM, "torch_marginal": GMM,
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
        def loss_and_grads(*_):
            loss = -exact.log_evidence(x, gmm.params)
            loss.backward()
            return loss.item()
    elif cfg.guide_start is not None or cfg.model == "enum_model":
        loss_and_grads = TraceEnum_ELBO(max_plate_nesting=1).loss_and_grads
    else:
        loss_and_grads = Trace_ELBO().loss_and_grads
    params = [p for m in modules for p in m.parameters()]
    if cfg.optimiser == "adam":
        optim = torch.optim.Adam(params, lr=cfg.lr)
        gamma = (cfg.lr_final / cfg.lr) ** (1.0 / cfg.decay_steps) if cfg.lr_final else 1.0
        count = [0]

        def step() -> float:
            loss = loss_and_grads(gmm, guide_fn, x)
            optim.step()
            optim.zero_grad(set_to_none=True)
            count[0] += 1
            if gamma != 1.0 and count[0] <= cfg.decay_steps:
                for g in optim.param_groups:
                    g["lr"] *= gamma
            return loss
    elif cfg.optimiser == "lbfgs":
        optim = torch.optim.LBFGS(params, lr=cfg.lr, max_iter=cfg.extra.get("max_iter", 5),
                                  history_size=10, line_search_fn="strong_wolfe")

        def closure():
            optim.zero_grad(set_to_none=True)
            return torch.as_tensor(loss_and_grads(gmm, guide_fn, x))

        def step() -> float:
            return float(optim.step(closure))
    else:
        raise ValueError(cfg.optimiser)
    return step, lambda: gmm.params


def run_svi(cfg, x, init, opt_ll, target, budget_s, max_steps, eval_every, after_reach_steps):
    num_points = x.shape[0]

    def gap() -> float:
        with torch.no_grad():
            p = GMMParams(*(t.detach().to(torch.float64) for t in (lambda q: (q.weights, q.locs, q.scales))(current())))
            return opt_ll - exact.log_evidence(x, p).item() / num_points

    t0 = time.perf_counter()
    step, current = build(cfg, x, init)
    setup_s = time.perf_counter() - t0
    elapsed = setup_s
    history = [(0, elapsed, gap())]
    reached = (0, elapsed) if history[0][2] <= target else None
    step_times: list[float] = []
    stop_at = after_reach_steps if reached else None
    s = 0
    status = "ok"
    while s < max_steps and elapsed < budget_s:
        s += 1
        t = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t
        elapsed += dt
        step_times.append(dt)
        if not math.isfinite(loss):
            status = f"non-finite loss at step {s}"
            break
        if s % eval_every == 0 or s == max_steps:
            g = gap()
            history.append((s, elapsed, g))
            if reached is None and g <= target:
                reached = (s, elapsed)
                stop_at = s + after_reach_steps
        if stop_at is not None and s >= stop_at:
            break
    if history[-1][0] != s:
        history.append((s, elapsed, gap()))
    after = [g for (k, _, g) in history if reached is not None and k >= reached[0]]
    settled = None  # first evaluation after which the gap stays <= target to the end of the run
    for i in range(len(history)):
        if all(g <= target for (_, _, g) in history[i:]):
            settled = history[i][:2]
            break
    return {
        "name": cfg.name,
        "description": cfg.description,
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "setup_s": setup_s,
        "steps": s,
        "wall_s": elapsed,
        "step_ms_median": 1e3 * float(np.median(step_times)) if step_times else None,
        "step_ms_min": 1e3 * min(step_times) if step_times else None,
        "initial_gap": history[0][2],
        "reached_step": reached[0] if reached else None,
        "reached_s": reached[1] if reached else None,
        "max_gap_after_reached": max(after) if after else None,
        "settled_step": settled[0] if settled else None,
        "settled_s": settled[1] if settled else None,
        "final_gap": history[-1][2],
        "status": status if s < max_steps and elapsed < budget_s or reached else (
            "budget exhausted" if elapsed >= budget_s else "max steps"),
        "history": [(k, round(t, 4), g) for (k, t, g) in history],
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
    return {
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
    """EM to a tight tolerance (the optimum), its time, and EM's own time to come within ``target``."""
    t_tight, res = best_of(lambda: exact.fit_em(x, init, "diag", REG_COVAR, max_iter, tight_tol), repeats)
    t_std, std = best_of(lambda: exact.fit_em(x, init, "diag", REG_COVAR, max_iter, 1e-3), repeats)
    opt = res.log_likelihood[-1].item()
    within = (opt - res.log_likelihood <= target).nonzero()
    first = int(within[0]) if within.numel() else None
    return {
        "optimum_mean_loglik": opt,
        "tight_tol": tight_tol,
        "tight_iters": res.num_iters,
        "tight_s": t_tight,
        "tol1e-3_iters": std.num_iters,
        "tol1e-3_s": t_std,
        "tol1e-3_gap": opt - std.log_likelihood[-1].item(),
        "init_gap": opt - res.log_likelihood[0].item(),
        "em_iters_to_target": first,
    }


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=20_000, short budgets: a smoke check")
    ap.add_argument("--num-points", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", default=None, help="SVI configurations to run (default: all)")
    ap.add_argument("--skip-em", action="store_true", help="skip part 1 (EM vs scikit-learn)")
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--budget", type=float, default=None, help="seconds per SVI configuration")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    n = args.num_points or (20_000 if args.quick else 200_000)
    budget = args.budget or (8.0 if args.quick else 60.0)
    max_steps = args.max_steps or (200 if args.quick else 2000)
    repeats = 2 if args.quick else 5
    out = args.out or ROOT / "benchmarks" / "results" / ("gmm_quick.json" if args.quick else "gmm.json")
    configs = [c for c in CONFIGS if args.only is None or c.name in args.only]
    if args.only and len(configs) != len(args.only):
        ap.error(f"unknown configuration in {args.only}; known: {[c.name for c in CONFIGS]}")

    result = {
        "meta": {
            "num_points": n, "K": K, "D": D, "seeds": args.seeds, "target_nats_per_point": args.target,
            "svi_budget_s": budget, "svi_max_steps": max_steps, "torch": torch.__version__,
            "pyro": pyro.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
        },
        "runs": [],
    }
    t_start = time.perf_counter()
    for seed in args.seeds:
        params = random_params(K, D, seed)
        x, _ = simulate(params, n, seed)
        init = init_params(x, GMMArgs(K, "diag", REG_COVAR), seed)
        run = {"seed": seed}
        print(f"\n=== seed {seed}: N={n}, K={K}, D={D}, float64, threads={torch.get_num_threads()} ===")
        if not args.skip_em:
            em = bench_em_vs_sklearn(x, init, repeats, max_iter=100)
            run["em_vs_sklearn"] = em
            print(
                f"EM vs sklearn (tol 1e-3): ours {em['ours_s']*1e3:.1f} ms ({em['ours_iters']} it), "
                f"sklearn {em['sklearn_s']*1e3:.1f} ms ({em['sklearn_iters']} it), ratio {em['ratio_ours_over_sklearn']:.3f}; "
                f"loglik {em['ours_mean_loglik']:.8f} vs {em['sklearn_mean_loglik']:.8f} "
                f"(|diff| {em['loglik_abs_diff']:.1e})"
            )
        ref = em_reference(x, init, repeats, args.target)
        run["em_reference"] = ref
        print(
            f"EM optimum {ref['optimum_mean_loglik']:.6f} (tol 1e-8: {ref['tight_iters']} it, {ref['tight_s']*1e3:.1f} ms; "
            f"tol 1e-3: {ref['tol1e-3_iters']} it, {ref['tol1e-3_s']*1e3:.1f} ms); init gap {ref['init_gap']:.5f}"
        )
        run["svi"] = []
        header = f"{'config':28s} {'dtype':7s} {'ms/step':>8s} {'setup s':>7s} {'reach':>12s} {'settle':>12s} {'x EM3':>7s} {'x EM8':>7s} {'final gap':>10s} {'max gap':>9s}"
        print(header)
        for cfg in configs:
            r = run_svi(cfg, x, init, ref["optimum_mean_loglik"], args.target, budget, max_steps,
                        eval_every=1, after_reach_steps=max(20, 5))
            t_key = r["settled_s"] if r["settled_s"] is not None else None
            r["settled_over_em_tol1e-3"] = t_key / ref["tol1e-3_s"] if t_key is not None else None
            r["settled_over_em_tight"] = t_key / ref["tight_s"] if t_key is not None else None
            r["reached_over_em_tol1e-3"] = r["reached_s"] / ref["tol1e-3_s"] if r["reached_s"] is not None else None
            r["reached_over_em_tight"] = r["reached_s"] / ref["tight_s"] if r["reached_s"] is not None else None
            run["svi"].append(r)

            def fmt(step, sec):
                return f"{step}:{sec:.2f}s" if step is not None else "-"

            ratio3 = f"{r['settled_over_em_tol1e-3']:.1f}" if t_key is not None else "-"
            ratio8 = f"{r['settled_over_em_tight']:.1f}" if t_key is not None else "-"
            mg = r["max_gap_after_reached"]
            print(
                f"{r['name']:28s} {r['dtype']:7s} {r['step_ms_median'] or 0:8.1f} {r['setup_s']:7.2f} "
                f"{fmt(r['reached_step'], r['reached_s'] or 0):>12s} {fmt(r['settled_step'], r['settled_s'] or 0):>12s} "
                f"{ratio3:>7s} {ratio8:>7s} {r['final_gap']:10.5f} {mg if mg is None else f'{mg:.5f}':>9}"
            )
        result["runs"].append(run)
    result["meta"]["loadavg_end"] = os.getloadavg()
    result["meta"]["total_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} ({result['meta']['total_s']:.0f} s; load average {result['meta']['loadavg_start']} -> {result['meta']['loadavg_end']})")


if __name__ == "__main__":
    main()
