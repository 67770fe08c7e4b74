r"""Benchmark of the binary-latent models: exact enumeration at K = 20, gradient variance, SVI vs exact.

The two models are the noisy-OR network and the latent factor document model (LFDM); every ELBO, KL
and log p(x) reported is exact (enumeration over z), beside the estimators' Monte Carlo views of them.

Part 1, exact enumeration. ``models.exact.noisy_or`` on ``random_network(K, J=40, seed)`` with 1,000
observations from ``simulate``, and ``models.exact.lfdm`` on ``true_params(K, V=2000, hidden=())`` (a
linear decoder) with 1,000 documents of mean length 50; K = 20 (``--quick``: K = 14). For
``posterior`` (log p(x_n) and the marginals), ``elbo`` and ``kl_to_posterior`` of a random mean-field
table q(z_nk = 1) ~ Uniform(0.02, 0.98): the wall time of one call, and its peak memory, each in a
fresh spawned process (after a small warm-up call that initialises the thread pools):

* peak RSS increase = ``ru_maxrss`` after the call - the resident set just before it (``/proc/self/statm``);
  ``ru_maxrss`` before the call is recorded too (if it already exceeded the call's peak, the call's
  peak is hidden: flagged ``rss_masked``);
* torch peak allocation = the largest "Total Allocated" of the CPU allocator's events under
  ``torch.profiler(profile_memory=True)``, counted from the start of the profiled call, measured at
  ``min(K, 13)``: memory is O(N x chunk) whatever K once 2^K exceeds one chunk (2,048 configurations for
  the noisy-OR here, 1,024 for the documents), so the peak at K = 13 is the peak at K = 20, and the
  profiler's slowdown is not paid on 2^20 configurations. The RSS figure is the one to judge the
  < 2 GiB target by: it is the whole process, at the benchmarked K.

One extra LFDM row (``posterior_linear_identity``) is an independent check written here, not library
code: the same posterior through ``models.exact.binary.posterior`` with the linear decoder's identity
log p(x_d | c) = (x_d W) c + x_d . b - n_d logsumexp_v(c W^T + b)_v. The library's
:func:`models.exact.lfdm.log_likelihood` now uses the same identity through the decoder's last layer
(it first computed the dense (N, V) @ (V, C) product, 2x slower at V = 2,000: this row showed it), so
the two rows should now cost the same and agree to round-off.

Part 2, gradient variance, at a fixed model state: noisy-OR synthetic (K=6, J=20, N=500) and LFDM
synthetic (K=6, V=200, D=300), the model at its true parameters; each guide (mean_field, amortised,
start "uniform") first trained alone (model parameters frozen) for ``warmup_steps`` of TraceEnum_ELBO
SVI through ``train_svi``, so q is not trivial. Then for each estimator, after ``pyro.clear_param_store()``
(TraceGraph's average baselines live there) and a fixed seed, M draws of
``elbo.loss_and_grads(model, guide, x)`` (grads zeroed before each): Trace_ELBO, TraceGraph_ELBO with
``baseline="average"`` (``baseline_warmup`` discarded draws first, so the decaying average, beta 0.9,
has forgotten its zero start), TraceGraph_ELBO with ``baseline="network"`` (the same decaying
average plus a learned correction r(x_n), whose last layer starts at zero; ``baseline_warmup`` draws,
each followed by an Adam step on the baseline network's parameters only; frozen during the M draws), and TraceEnum_ELBO with ``config_enumerate(guide)`` (exact: its variance is zero up to
round-off, and its gradient is the reference). Per parameter group (the model's; the guide's, without
the baseline network): total variance sum_i Var(g_i) (unbiased, over the M draws), the squared bias
||mean - exact||^2 next to its expected size under unbiasedness, total variance / M (the ratio should
be ~1, though with few dominant coordinates it scatters widely at M = 100-300), ||exact||^2 for scale,
and the mean time per gradient. The JSON also holds the largest per-coordinate |z| = |mean_i - exact_i| /
se_i, which is not a bias test here: some coordinates are heavy-tailed (a rare z flip with a large
gradient), their sample se is too small at M = 100, and |z| ~ 20 at M = 100 falls to ~3 at M = 2000.
For both baselines, what they take out of the score term's weight: 1 - E(c_n - b_n)^2 / E c_n^2 of the
per-point cost c_n = log p(x_n, z_n) - log q(z_n) on fresh draws, beside the best any baseline of x_n
alone can do (b_n = E[c_n | x_n]).

Part 3, SVI. The same synthetic data sets, every run from the shared ``init_params(x, args, seed)``,
Adam at the same step size (``lr`` decaying geometrically to ``lr_final``), for ``steps`` steps (1000
noisy-OR / 600 LFDM; ``--quick``: 100): {mean_field (start "posterior"), amortised (start "uniform")}
x {Trace_ELBO, TraceGraph_ELBO (average baseline), TraceEnum_ELBO}, plus mean_field from start
"uniform" with TraceEnum_ELBO on the noisy-OR. Reported: time per step, and, exactly at the final
parameters with ``guide.probs(x)``: ELBO/point, log p(x)/point, KL/point (log p = ELBO + KL), and the
generalised-EM optimum's log p(x)/point (``fit_em`` from the same init, and from the truth: GEM from
``init_params`` can stop in a local optimum) and the true parameters'.

Run:  .venv/bin/python benchmarks/bench_binary.py [--quick] [--parts 1 2 3] [--exact-k K] [--draws M] [--threads T]
Writes benchmarks/results/binary.json (``--quick``: binary_quick.json) and prints a Markdown table per
part. Times are wall-clock on a possibly shared machine: the JSON records the load average. Torch uses
every available core by default; if anything else is running, pass ``--threads 1``: with 2 threads on 2
cores and one core busy, the small per-step tensors of parts 2 and 3 ran 10-30 times slower.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import pyro
import torch
from pyro.infer import config_enumerate
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import make_elbo, train_svi
from vizoo.guides import lfdm as lfdm_guides
from vizoo.guides import noisy_or as noisy_or_guides
from vizoo.models import lfdm, noisy_or
from vizoo.models.datasets import DataOptions
from vizoo.models.exact import binary
from vizoo.models.exact import lfdm as lfdm_exact
from vizoo.models.exact import noisy_or as noisy_or_exact

MIB = 2**20


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of every part; ``quick()`` gives the smoke-check version.

    exact_k: K of part 1; profile_k: the K at which torch's allocations are profiled (at most exact_k).
    exact_points, noisy_or_symptoms, lfdm_vocab, doc_length: part 1's data.
    small_*: the synthetic problems of parts 2 and 3.
    warmup_steps: TraceEnum SVI steps that train the guide before part 2 (model frozen at the truth).
    draws: M gradients per estimator; baseline_warmup: draws before them (see the module docstring);
    baseline_lr: Adam's step size for the network baseline during its warm-up.
    em_max_iter, em_tol: generalised EM's reference fits (tol in nats/point between iterations).
    steps_noisy_or, steps_lfdm, lr, lr_final: part 3's SVI.
    """

    exact_k: int = 20
    profile_k: int = 13
    exact_points: int = 1000
    noisy_or_symptoms: int = 40
    lfdm_vocab: int = 2000
    doc_length: int = 50
    small_k: int = 6
    small_noisy_or: tuple[int, int] = (500, 20)  # (N, J)
    small_lfdm: tuple[int, int] = (300, 200)  # (D, V)
    warmup_steps: int = 200
    draws: int = 300
    baseline_warmup: int = 100
    baseline_lr: float = 0.05
    em_max_iter: int = 1000
    em_tol: float = 1e-6
    steps_noisy_or: int = 1000
    steps_lfdm: int = 600
    lr: float = 0.1
    lr_final: float = 0.005
    seed: int = 0

    @staticmethod
    def quick() -> "BenchConfig":
        return BenchConfig(exact_k=14, warmup_steps=50, draws=100, baseline_warmup=50, em_max_iter=100,
                           steps_noisy_or=100, steps_lfdm=100)


def available_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Part 1: exact enumeration, each measurement in a fresh spawned process.
# ----------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """The current resident set of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def exact_problem(model: str, k: int, num_points: int, width: int, doc_length: int, seed: int):
    """(data, params, random mean-field table (N, K)) for part 1."""
    if model == "noisy_or":
        params = noisy_or.random_network(k, width, seed)
        x, _ = noisy_or.simulate(params, num_points, seed + 1)
    else:
        params = lfdm.true_params(k, width, (), seed)
        x, _ = lfdm.simulate(params, num_points, doc_length, seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    probs = 0.02 + 0.96 * torch.rand(num_points, k, generator=gen, dtype=torch.float64)
    return x, params, probs


def linear_identity_posterior(x, params):
    """Benchmark-only: the LFDM posterior with log p(x_d | c) = (x_d W) c + x_d . b - n_d lse(c W^T + b)."""
    (weight, bias), = params.layers  # weight (V, K), bias (V,)
    xw, xb, n = x @ weight, x @ bias, x.sum(-1)  # (N, K), (N,), (N,)

    def log_lik(configs):
        lse = torch.logsumexp(configs @ weight.T + bias, -1)  # (C,)
        return xw @ configs.T + xb[:, None] - n[:, None] * lse

    return binary.posterior(log_lik, params.prior_logits, x.shape[0], weight.shape[0])  # width V: the library's chunks


def exact_call(model: str, function: str, x, params, probs):
    ex = noisy_or_exact if model == "noisy_or" else lfdm_exact
    if function == "posterior":
        post = ex.posterior(x, params)
        return float(post.log_evidence.sum()), float(post.marginals.mean())
    if function == "posterior_linear_identity":
        post = linear_identity_posterior(x, params)
        return float(post.log_evidence.sum()), float(post.marginals.mean())
    if function == "elbo":
        return float(ex.elbo(x, params, probs)), None
    if function == "kl_to_posterior":
        return float(ex.kl_to_posterior(x, params, probs)), None
    raise ValueError(function)


def torch_peak_allocation(fn) -> float | None:
    """Peak of the CPU allocator's running total under the profiler, from the start of ``fn()``, in bytes."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]" and "args" in e]
    return float(max(totals)) if totals else None


def measure_exact(model: str, function: str, k: int, profile_k: int, num_points: int, width: int,
                  doc_length: int, seed: int, threads: int) -> dict:
    """Runs in a fresh process: warm-up, one timed call with its RSS, then one profiled call at profile_k."""
    torch.set_num_threads(threads)
    warm = exact_problem(model, min(k, 6), 100, width, doc_length, seed)  # thread pools, lazy inits
    exact_call(model, function, *warm)
    del warm
    x, params, probs = exact_problem(model, k, num_points, width, doc_length, seed)
    rss_before, maxrss_before = _rss_bytes(), _maxrss_bytes()
    t0 = time.perf_counter()
    value, mean_marginal = exact_call(model, function, x, params, probs)
    wall = time.perf_counter() - t0
    maxrss_after = _maxrss_bytes()
    if profile_k != k:
        x, params, probs = exact_problem(model, profile_k, num_points, width, doc_length, seed)
    torch_peak = torch_peak_allocation(lambda: exact_call(model, function, x, params, probs))
    return {
        "model": model, "function": function, "K": k, "num_points": num_points, "width": width,
        "configurations": 2**k, "chunk": binary.chunk_size(num_points, width, k),
        "wall_s": wall, "value": value, "mean_marginal": mean_marginal,
        "rss_before_mib": rss_before / MIB, "maxrss_before_mib": maxrss_before / MIB,
        "maxrss_after_mib": maxrss_after / MIB, "peak_rss_increase_mib": (maxrss_after - rss_before) / MIB,
        "rss_masked": maxrss_after <= maxrss_before,
        "torch_peak_alloc_mib": None if torch_peak is None else torch_peak / MIB, "torch_peak_K": profile_k,
        "threads": torch.get_num_threads(),
    }


def part_exact(cfg: BenchConfig, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    jobs = [("noisy_or", f, cfg.noisy_or_symptoms) for f in ("posterior", "elbo", "kl_to_posterior")]
    jobs += [("lfdm", f, cfg.lfdm_vocab) for f in ("posterior", "elbo", "kl_to_posterior", "posterior_linear_identity")]
    rows = []
    for model, function, width in jobs:
        t = time.perf_counter()
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            row = pool.apply(measure_exact, (model, function, cfg.exact_k, min(cfg.profile_k, cfg.exact_k),
                                             cfg.exact_points, width, cfg.doc_length, cfg.seed, threads))
        row["process_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"  {model} {function}: {row['wall_s']:.2f} s, peak RSS +{row['peak_rss_increase_mib']:.0f} MiB", flush=True)
    checks = {}
    for model in ("noisy_or", "lfdm"):
        by = {r["function"]: r for r in rows if r["model"] == model}
        log_px, elbo, kl = by["posterior"]["value"], by["elbo"]["value"], by["kl_to_posterior"]["value"]
        checks[model] = {"log_px": log_px, "elbo": elbo, "kl": kl, "elbo_plus_kl_minus_log_px": elbo + kl - log_px}
        if "posterior_linear_identity" in by:
            checks[model]["linear_identity_minus_library_log_px"] = by["posterior_linear_identity"]["value"] - log_px
    return {
        "K": cfg.exact_k, "profile_K": min(cfg.profile_k, cfg.exact_k), "num_points": cfg.exact_points,
        "noisy_or_symptoms": cfg.noisy_or_symptoms, "lfdm_vocab": cfg.lfdm_vocab, "doc_length": cfg.doc_length,
        "target_peak_gib": 2.0,
        "memory_measure": "peak_rss_increase_mib: ru_maxrss after the call minus the resident set just before it, "
                          "in a fresh spawned process after a small warm-up call; torch_peak_alloc_mib: the max "
                          "'Total Allocated' of torch.profiler's CPU memory events during a second call at torch_peak_K",
        "rows": rows, "checks": checks,
    }


def print_exact(res: dict) -> None:
    print(f"\n## Part 1: exact enumeration, K={res['K']} ({2**res['K']:,} configurations), N={res['num_points']}\n")
    header = ["model", "function", "width", "chunk", "wall s", "peak RSS + MiB", "RSS before MiB",
              f"torch peak MiB (K={res['profile_K']})", "< 2 GiB"]
    rows = [[r["model"], r["function"], r["width"], r["chunk"], r["wall_s"],
             r["peak_rss_increase_mib"] if not r["rss_masked"] else f"<= {r['peak_rss_increase_mib']:.0f} (masked)",
             r["rss_before_mib"], r["torch_peak_alloc_mib"], r["peak_rss_increase_mib"] < 2048] for r in res["rows"]]
    print(markdown(header, rows))
    for model, c in res["checks"].items():
        extra = (f"; linear identity - library log p = {c['linear_identity_minus_library_log_px']:.2e}"
                 if "linear_identity_minus_library_log_px" in c else "")
        print(f"\n{model}: log p(x) = {c['log_px']:.4f}, ELBO + KL - log p(x) = {c['elbo_plus_kl_minus_log_px']:.2e}{extra}")


# ----------------------------------------------------------------------------------------------
# Shared problems of parts 2 and 3.
# ----------------------------------------------------------------------------------------------


@dataclass
class Problem:
    name: str
    x: torch.Tensor
    truth: object
    init: object
    learnable: type
    guides: object  # the guides module
    exact: object  # the exact module
    steps: int


def small_problems(cfg: BenchConfig) -> list[Problem]:
    n, j = cfg.small_noisy_or
    args = noisy_or.NoisyORArgs(num_causes=cfg.small_k)
    data = noisy_or.synthetic(DataOptions(name="synthetic", num_points=n, dim=j), args, cfg.seed)
    out = [Problem("noisy_or", data.x, data.truth, noisy_or.init_params(data.x, args, cfg.seed), noisy_or.NoisyOR,
                   noisy_or_guides, noisy_or_exact, cfg.steps_noisy_or)]
    d, v = cfg.small_lfdm
    args = lfdm.LFDMArgs(num_factors=cfg.small_k)
    data = lfdm.synthetic(DataOptions(name="synthetic", num_points=d, dim=v, doc_length=cfg.doc_length), args, cfg.seed)
    out.append(Problem("lfdm", data.x, data.truth, lfdm.init_params(data.x, args, cfg.seed), lfdm.LFDM,
                       lfdm_guides, lfdm_exact, cfg.steps_lfdm))
    return out


@torch.no_grad()
def exact_scores(p: Problem, model, guide) -> dict:
    n = p.x.shape[0]
    params = model.params.detach()
    q = guide.probs(p.x, params)
    return {
        "elbo_per_point": float(p.exact.elbo(p.x, params, q)) / n,
        "log_px_per_point": float(p.exact.log_evidence(p.x, params)) / n,
        "kl_per_point": float(p.exact.kl_to_posterior(p.x, params, q)) / n,
    }


# ----------------------------------------------------------------------------------------------
# Part 2: gradient variance.
# ----------------------------------------------------------------------------------------------

ESTIMATORS = [  # (label, ELBO class name, baseline)
    ("TraceEnum_ELBO", "TraceEnum_ELBO", None),
    ("Trace_ELBO", "Trace_ELBO", None),
    ("TraceGraph_ELBO/average", "TraceGraph_ELBO", "average"),
    ("TraceGraph_ELBO/network", "TraceGraph_ELBO", "network"),
]


def _groups(model, guide) -> dict[str, list[torch.Tensor]]:
    return {
        "model": [q for _, q in model.named_parameters()],
        "guide": [q for n, q in guide.named_parameters() if not n.startswith("baseline.")],
        "baseline": [q for n, q in guide.named_parameters() if n.startswith("baseline.")],
    }


def _draw(elbo, model, guide_fn, x, groups) -> dict[str, torch.Tensor]:
    for qs in groups.values():
        for q in qs:
            q.grad = None
    elbo.loss_and_grads(model, guide_fn, x)
    return {g: torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).reshape(-1) for q in qs])
            for g, qs in groups.items() if g != "baseline"}


def part_variance(cfg: BenchConfig, problems: list[Problem]) -> list[dict]:
    states = []
    for p in problems:
        for kind in ("mean_field", "amortised"):
            t_state = time.perf_counter()
            pyro.set_rng_seed(cfg.seed)
            build = getattr(p.guides, kind)
            guides = {"network": build(p.x, p.truth, baseline="network")}
            model = p.learnable(p.truth)
            for q in model.parameters():
                q.requires_grad_(False)  # warm up the guide alone: the model stays at the truth
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train_svi(model, guides["network"], p.x, SVIConfig(elbo="TraceEnum_ELBO", lr=0.05, steps=cfg.warmup_steps),
                          seed=cfg.seed, progress=False)
            for q in model.parameters():
                q.requires_grad_(True)
            for baseline in ("average", "none"):
                guides[baseline] = build(p.x, p.truth, baseline=baseline)
                state = {n: t for n, t in guides["network"].state_dict().items() if not n.startswith("baseline.")}
                guides[baseline].load_state_dict(state)
            state_scores = exact_scores(p, model, guides["none"])
            exact_grad = None
            rows = []
            for label, elbo_name, baseline in ESTIMATORS:
                guide = guides[baseline or "none"]
                groups = _groups(model, guide)
                pyro.clear_param_store()  # TraceGraph_ELBO's decaying averages live there
                pyro.set_rng_seed(cfg.seed + 1)
                elbo = make_elbo(SVIConfig(elbo=elbo_name))
                guide_fn = config_enumerate(guide, "parallel") if elbo_name == "TraceEnum_ELBO" else guide
                warm = {}
                if baseline == "average":
                    for _ in range(cfg.baseline_warmup):
                        elbo.loss_and_grads(model, guide_fn, p.x)
                    warm = {"baseline_warmup": f"{cfg.baseline_warmup} discarded draws"}
                elif baseline == "network":  # the decaying average plus the network's learned correction
                    optim = torch.optim.Adam(groups["baseline"], lr=cfg.baseline_lr)
                    losses = []
                    for _ in range(cfg.baseline_warmup):
                        optim.zero_grad(set_to_none=True)
                        losses.append(elbo.loss_and_grads(model, guide_fn, p.x))
                        optim.step()
                    warm = {"baseline_warmup": f"{cfg.baseline_warmup} draws, each followed by Adam(lr={cfg.baseline_lr}) "
                                               "on the baseline network only (the average updates as it goes); "
                                               "the network is frozen during the draws"}
                if baseline is not None:
                    warm.update(_baseline_fit(model, guide, p.x, baseline))
                draws = {"model": [], "guide": []}
                times = []
                num = cfg.draws
                for _ in range(num):
                    t = time.perf_counter()
                    g = _draw(elbo, model, guide_fn, p.x, groups)
                    times.append(time.perf_counter() - t)
                    for name in draws:
                        draws[name].append(g[name])
                if exact_grad is None:  # TraceEnum_ELBO comes first: its (deterministic) gradient is the reference
                    exact_grad = {name: torch.stack(d)[0].clone() for name, d in draws.items()}
                row = {"estimator": label, "elbo": elbo_name, "baseline": baseline, "draws": num,
                       "time_per_grad_ms": 1e3 * sum(times) / len(times), **warm, "groups": {}}
                for name, d in draws.items():
                    row["groups"][name] = _stats(torch.stack(d), exact_grad[name])
                rows.append(row)
            states.append({"model": p.name, "guide": kind, "N": p.x.shape[0], "warmup_steps": cfg.warmup_steps,
                           "state_exact": state_scores, "estimators": rows, "seconds": time.perf_counter() - t_state})
            print(f"  {p.name} {kind}: {time.perf_counter() - t_state:.1f} s", flush=True)
    return states


@torch.no_grad()
def _costs(model, guide, x, num: int) -> torch.Tensor:
    """``num`` draws of each point's downstream cost log p(x_n, z_n) - log q(z_n), z_n ~ q: (num, N)."""
    out = []
    for _ in range(num):
        gt = pyro.poutine.trace(guide).get_trace(x)
        mt = pyro.poutine.trace(pyro.poutine.replay(model, trace=gt)).get_trace(x)
        mt.compute_log_prob()
        gt.compute_log_prob()
        out.append(sum(s["log_prob"] for s in mt.nodes.values() if s["type"] == "sample") - gt.nodes[guide.site]["log_prob"])
    return torch.stack(out)


@torch.no_grad()
def _baseline_fit(model, guide, x, kind: str, num: int = 20) -> dict:
    """What the baseline b_n takes out of the score-function term's weight, on ``num`` fresh draws of
    each point's cost c_n: 1 - E(c_n - b_n)^2 / E c_n^2 (0: no better than no baseline), and the most an
    x_n-only baseline can take out, 1 - E Var(c_n | x_n) / E c_n^2 (b_n = the per-point mean cost)."""
    costs = _costs(model, guide, x, num)  # (num, N)
    b = pyro.get_param_store()["__baseline_avg_downstream_cost_" + guide.site].detach()
    if kind == "network":
        b = b + guide.baseline(guide.features(x))  # (N,): the average plus the learned correction
    second = (costs**2).mean()
    return {"baseline_removed": float(1 - ((costs - b) ** 2).mean() / second),
            "baseline_removed_best": float(1 - costs.var(0).mean() / second)}


def _stats(draws: torch.Tensor, exact: torch.Tensor) -> dict:
    m = draws.shape[0]
    mean = draws.mean(0)
    var = draws.var(0, unbiased=True) if m > 1 else torch.zeros_like(mean)
    total_var = float(var.sum())
    bias2 = float(((mean - exact) ** 2).sum())
    se = (var / m).sqrt()
    ok = se > 1e-12 * (1 + exact.abs())
    z = ((mean - exact).abs()[ok] / se[ok]).max() if ok.any() else torch.tensor(0.0)
    return {
        "coordinates": int(draws.shape[1]),
        "total_variance": total_var,
        "squared_bias": bias2,
        "expected_squared_bias_if_unbiased": total_var / m,
        "bias_ratio": bias2 / (total_var / m) if total_var > 0 else None,
        "max_abs_z": float(z),
        "exact_norm2": float((exact**2).sum()),
        "max_abs_dev_from_exact": float((draws - exact).abs().max()),
    }


def print_variance(states: list[dict], cfg: BenchConfig) -> None:
    print(f"\n## Part 2: gradient variance (M={cfg.draws} draws, model at the truth, guide after "
          f"{cfg.warmup_steps} TraceEnum steps)\n")
    header = ["model", "guide", "estimator", "group", "dim", "total var", "bias^2", "var/M", "bias^2/(var/M)",
              "||exact||^2", "ms/grad"]
    rows = []
    for s in states:
        for r in s["estimators"]:
            for g, st in r["groups"].items():
                rows.append([s["model"], s["guide"], r["estimator"], g, st["coordinates"], st["total_variance"],
                             st["squared_bias"], st["expected_squared_bias_if_unbiased"], st["bias_ratio"],
                             st["exact_norm2"], r["time_per_grad_ms"]])
    print(markdown(header, rows))
    print()
    for s in states:
        e = s["state_exact"]
        avg, net = (next(r for r in s["estimators"] if r["baseline"] == b) for b in ("average", "network"))
        print(f"- {s['model']} {s['guide']}: exact ELBO/pt {e['elbo_per_point']:.4f}, log p/pt {e['log_px_per_point']:.4f}, "
              f"KL/pt {e['kl_per_point']:.4f}; 1 - E(c - b)^2 / E c^2 of the cost c: average baseline "
              f"{avg['baseline_removed']:.5f}, network {net['baseline_removed']:.5f}, per-point mean cost (the best "
              f"baseline of x_n) {net['baseline_removed_best']:.5f}")


# ----------------------------------------------------------------------------------------------
# Part 3: SVI.
# ----------------------------------------------------------------------------------------------


def part_svi(cfg: BenchConfig, problems: list[Problem]) -> list[dict]:
    out = []
    for p in problems:
        n = p.x.shape[0]
        t = time.perf_counter()
        em = p.exact.fit_em(p.x, p.init, max_iter=cfg.em_max_iter, tol=cfg.em_tol)
        em_s = time.perf_counter() - t
        em_truth = p.exact.fit_em(p.x, p.truth, max_iter=cfg.em_max_iter, tol=cfg.em_tol)  # the same from the truth
        with torch.no_grad():
            truth_ll = float(p.exact.log_evidence(p.x, p.truth)) / n
            init_ll = float(p.exact.log_evidence(p.x, p.init)) / n
        entry = {"model": p.name, "N": n, "steps": p.steps, "lr": cfg.lr, "lr_final": cfg.lr_final,
                 "em": {"log_px_per_point": em.log_likelihood[-1], "iterations": em.num_iters,
                        "converged": em.converged, "seconds": em_s, "max_iter": cfg.em_max_iter, "tol": cfg.em_tol},
                 "em_from_truth": {"log_px_per_point": em_truth.log_likelihood[-1], "iterations": em_truth.num_iters,
                                   "converged": em_truth.converged},
                 "truth_log_px_per_point": truth_ll, "init_log_px_per_point": init_ll, "runs": []}
        runs = [(kind, start, est) for kind, start in (("mean_field", "posterior"), ("amortised", "uniform"))
                for est in ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")]
        if p.name == "noisy_or":
            runs.append(("mean_field", "uniform", "TraceEnum_ELBO"))
        for i, (kind, start, est) in enumerate(runs):
            pyro.set_rng_seed(cfg.seed)
            t = time.perf_counter()
            guide = getattr(p.guides, kind)(p.x, p.init, start=start, baseline="average")
            build_s = time.perf_counter() - t
            model = p.learnable(p.init)
            start_scores = exact_scores(p, model, guide)
            svi = SVIConfig(elbo=est, lr=cfg.lr, lr_final=cfg.lr_final, steps=p.steps)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = train_svi(model, guide, p.x, svi, seed=cfg.seed + 1, progress=False)
            scores = exact_scores(p, model, guide)
            entry["runs"].append({
                "guide": kind, "start": start, "estimator": est, "baseline": "average" if est == "TraceGraph_ELBO" else None,
                "steps": res.steps, "step_ms": 1e3 * res.wall_time / max(res.steps, 1), "guide_build_s": build_s,
                "start_elbo_per_point": start_scores["elbo_per_point"], **scores,
                "gap_to_em_log_px": entry["em"]["log_px_per_point"] - scores["log_px_per_point"],
                "last_estimate_elbo_per_point": res.elbo_trace[-1] if res.elbo_trace else None,
            })
            print(f"  {p.name} {kind}/{start} {est}: {res.wall_time:.1f} s", flush=True)
        out.append(entry)
    return out


def print_svi(entries: list[dict]) -> None:
    print("\n## Part 3: SVI, exact scores at the final parameters (per point)\n")
    for e in entries:
        print(f"### {e['model']}: N={e['N']}, {e['steps']} steps, Adam lr {e['lr']} -> {e['lr_final']}; "
              f"generalised EM log p/pt {e['em']['log_px_per_point']:.4f} ({e['em']['iterations']} it, "
              f"{e['em']['seconds']:.1f} s; from the truth: {e['em_from_truth']['log_px_per_point']:.4f}); "
              f"truth {e['truth_log_px_per_point']:.4f}; init {e['init_log_px_per_point']:.4f}\n")
        header = ["guide", "start", "estimator", "ms/step", "ELBO start", "ELBO", "log p(x)", "KL", "EM - log p(x)"]
        rows = [[r["guide"], r["start"], r["estimator"], r["step_ms"], r["start_elbo_per_point"], r["elbo_per_point"],
                 r["log_px_per_point"], r["kl_per_point"], r["gap_to_em_log_px"]] for r in e["runs"]]
        print(markdown(header, rows) + "\n")


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="K=14 in part 1, fewer draws and steps: a smoke check (< 2 min)")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--exact-k", type=int, default=None, help="K of part 1 (default 20; quick 14)")
    ap.add_argument("--draws", type=int, default=None, help="gradient draws per estimator (default 300; quick 100)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    over = {k: v for k, v in (("exact_k", args.exact_k), ("draws", args.draws)) if v is not None}
    cfg = BenchConfig(**{**asdict(cfg), **over}) if over else cfg
    binary.check_enumerable(cfg.exact_k, "--exact-k")
    threads = args.threads or available_threads()
    torch.set_num_threads(threads)
    out = args.out or ROOT / "benchmarks" / "results" / ("binary_quick.json" if args.quick else "binary.json")

    result = {
        "meta": {
            "quick": args.quick, "parts": args.parts, "config": asdict(cfg),
            "torch": torch.__version__, "pyro": pyro.__version__, "python": platform.python_version(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cores_available": available_threads(),
            "torch_threads": torch.get_num_threads(),
            "pyro_validation": pyro.poutine.util.is_validation_enabled(),
            "loadavg_start": os.getloadavg(),
            "notes": "times are wall-clock seconds on a possibly shared machine; per-point values are nats/point.",
        },
    }
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {threads} threads, {cpu_name()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if 1 in args.parts:
        print(f"part 1: exact enumeration at K={cfg.exact_k}", flush=True)
        result["exact_enumeration"] = part_exact(cfg, threads)
    problems = small_problems(cfg) if {2, 3} & set(args.parts) else []
    if 2 in args.parts:
        print("part 2: gradient variance", flush=True)
        result["gradient_variance"] = {"draws": cfg.draws, "warmup_steps": cfg.warmup_steps,
                                       "baseline_warmup": cfg.baseline_warmup, "states": part_variance(cfg, problems)}
    if 3 in args.parts:
        print("part 3: SVI", flush=True)
        result["svi"] = part_svi(cfg, problems)
    if 1 in args.parts:
        print_exact(result["exact_enumeration"])
    if 2 in args.parts:
        print_variance(result["gradient_variance"]["states"], cfg)
    if 3 in args.parts:
        print_svi(result["svi"])
    result["meta"]["loadavg_end"] = os.getloadavg()
    result["meta"]["total_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} in {result['meta']['total_s']:.0f} s "
          f"(load average {result['meta']['loadavg_start'][0]:.2f} -> {result['meta']['loadavg_end'][0]:.2f})")


if __name__ == "__main__":
    main()
