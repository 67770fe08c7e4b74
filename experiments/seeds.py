"""The seed experiments: each one TOML file in ``experiments/seeds/`` and one figure in the report.

    experiment = "kl_directions" | "gradient_variance" | "em_as_vi" | "gap_split"
    title = "..."
    [params]            the experiment's typed options (the dataclasses below)

* kl_directions: one Gaussian fitted to a bimodal target both ways. KL(q || p) (the ELBO's direction) is
  minimised by gradient descent on a quadrature grid, from several starts: it seeks a mode. KL(p || q) is
  minimised by moment matching (closed form): it covers the mass.
* gradient_variance: the same guide's ELBO gradient by reparameterisation and by the score function, total
  variance against samples per estimate (``experiments.gradients.variance_curve``).
* em_as_vi: exact EM on the Gaussian mixture drawn as coordinate ascent on the ELBO: after each E-step the
  bound touches log p(x); each M-step raises the bound, and log p(x) with it.
* gap_split: a guide comparison (``experiments.compare``) reduced to its gap split, one stacked bar per guide
  (mean field vs structured on the factorial HMM; amortised vs per-point on the linear VAE).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pyro
import torch

from ..models.datasets import DataOptions
from ..models.errors import ConfigError
from ..models.exact import gmm as gmm_exact
from ..models.gmm import GMMArgs
from . import report
from .compare import CompareOptions, compare, tiny_overrides
from .config import _build, bundled_configs, load_config
from .gradients import variance_curve
from .registry import MODELS


@dataclass(frozen=True)
class KLDirections:
    separation: float = 4.0  # distance between the two modes
    scale: float = 0.6  # each mode's standard deviation
    weight: float = 0.5  # weight of the left mode
    starts: tuple[float, ...] = (-3.0, 0.5, 3.0)  # initial means for minimising KL(q || p)
    steps: int = 1500
    lr: float = 0.05
    grid: int = 4001  # quadrature points on [-10, 10]

    def __post_init__(self):
        if not (self.separation > 0 and self.scale > 0 and 0 < self.weight < 1 and self.grid >= 101 and self.steps >= 1):
            raise ValueError("params: separation and scale must be > 0, weight in (0, 1), grid >= 101, steps >= 1")


@dataclass(frozen=True)
class GradientVariance:
    model: str = "vae"  # a bundled config whose guide has a 'reparameterised' switch (the VAE's)
    config: str = "vae_digits"
    guide: str = "amortised"
    points: int = 200  # data points in the objective
    samples: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    repeats: int = 100  # independent gradient estimates per S


@dataclass(frozen=True)
class EMAsVI:
    data: str = "faithful"  # a GMM data set
    num_components: int = 3
    iterations: int = 12
    seed: int = 3  # the (deliberately poor) random initialisation


@dataclass(frozen=True)
class GapSplit:
    model: str = "fhmm"
    config: str = ""  # a bundled config of the model (default: compare's choice)
    data: str = ""
    seeds: int = 2
    overrides: tuple[str, ...] = ()


KINDS: dict[str, type] = {"kl_directions": KLDirections, "gradient_variance": GradientVariance, "em_as_vi": EMAsVI,
                          "gap_split": GapSplit}


@dataclass(frozen=True)
class SeedExperiment:
    name: str
    experiment: str
    title: str
    params: Any


def bundled() -> dict[str, str]:
    root = files(__package__) / "seeds"
    return {p.name.removesuffix(".toml"): str(p) for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".toml")}


def load(path: str | Path) -> SeedExperiment:
    """Parse and check a seed experiment's TOML file (unknown keys and wrong types name the key)."""
    path = Path(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    kind = raw.get("experiment")
    if kind not in KINDS:
        raise ConfigError(f"{path.name}: experiment must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(raw) - {"experiment", "title", "params"})
    if unknown:
        raise ConfigError(f"{path.name}: unknown key {unknown[0]!r}; known: experiment, title, params")
    params = _build(KINDS[kind], raw.get("params", {}), "params.")
    return SeedExperiment(path.stem, kind, str(raw.get("title", path.stem)), params)


def run(exp: SeedExperiment, out_dir: Path, tiny: bool = False, progress: bool = False, log=print) -> dict[str, Any]:
    """Run one seed experiment; writes ``<name>.png`` into ``out_dir``. Returns its numbers and a caption."""
    fn = {"kl_directions": kl_directions, "gradient_variance": gradient_variance, "em_as_vi": em_as_vi,
          "gap_split": gap_split}[exp.experiment]
    return fn(exp, out_dir, tiny=tiny, progress=progress, log=log)


# --------------------------------------------------------------------------- KL(q || p) vs KL(p || q)


def _bimodal(p: KLDirections, grid: torch.Tensor) -> torch.Tensor:
    half = p.separation / 2
    comps = torch.stack([torch.distributions.Normal(-half, p.scale).log_prob(grid) + math.log(p.weight),
                         torch.distributions.Normal(half, p.scale).log_prob(grid) + math.log(1 - p.weight)])
    return torch.logsumexp(comps, 0)


def kl_both_ways(log_p: torch.Tensor, log_q: torch.Tensor, dx: float) -> tuple[float, float]:
    """(KL(q || p), KL(p || q)) by quadrature on a uniform grid with spacing dx."""
    q, pp = log_q.exp(), log_p.exp()
    return float((q * (log_q - log_p)).sum() * dx), float((pp * (log_p - log_q)).sum() * dx)


def kl_directions(exp: SeedExperiment, out_dir: Path, tiny: bool = False, **_) -> dict[str, Any]:
    p: KLDirections = exp.params
    grid = torch.linspace(-10, 10, p.grid, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    log_p = _bimodal(p, grid)
    fits = []
    for m0 in p.starts:  # reverse KL: gradient descent from each start
        m = torch.tensor(m0, dtype=torch.float64, requires_grad=True)
        log_s = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([m, log_s], lr=p.lr)
        for _ in range(50 if tiny else p.steps):
            opt.zero_grad()
            log_q = torch.distributions.Normal(m, log_s.exp()).log_prob(grid)
            loss = (log_q.exp() * (log_q - log_p)).sum() * dx
            loss.backward()
            opt.step()
        fits.append((m0, m.item(), log_s.exp().item()))
    w = torch.exp(log_p) * dx  # forward KL: moment matching
    mean = float((w * grid).sum())
    sd = float((w * (grid - mean) ** 2).sum()) ** 0.5
    rows = []
    for label, (m, s) in [(f"KL(q‖p) from m₀ = {m0:+.1f}", (mm, ss)) for m0, mm, ss in fits] + [("KL(p‖q): moment matching", (mean, sd))]:
        rev, fwd = kl_both_ways(log_p, torch.distributions.Normal(m, s).log_prob(grid), dx)
        rows.append({"fit": label, "mean": m, "sd": s, "KL(q‖p)": rev, "KL(p‖q)": fwd})
    fig, ax = report.axes(figsize=(7, 3.8))
    ax.fill_between(grid.numpy(), log_p.exp().numpy(), color="0.85", label="target p (bimodal)")
    for i, r in enumerate(rows):
        q = torch.distributions.Normal(r["mean"], r["sd"]).log_prob(grid).exp()
        ax.plot(grid.numpy(), q.numpy(), lw=1.6, ls="-" if i < len(fits) else "--",
                label=f"{r['fit']}: N({r['mean']:.2f}, {r['sd']:.2f}²)")
    ax.set_xlim(-p.separation - 4 * p.scale - 2, p.separation + 4 * p.scale + 2)
    ax.set_xlabel("z")
    report.finish(fig, ax, out_dir / f"{exp.name}.png", exp.title, legend_loc="upper right")
    table = _table(rows, ["fit", "mean", "sd", "KL(q‖p)", "KL(p‖q)"])
    half = p.separation / 2
    on_mode = [r for r in rows[: len(fits)] if abs(abs(r["mean"]) - half) < 0.1 * half]
    stuck = [f"from m₀ = {m0:+.1f} it stops at N({r['mean']:.2f}, {r['sd']:.2f}²), a broad local optimum between the modes "
             f"(KL(q‖p) = {r['KL(q‖p)']:.3f})" for (m0, _, _), r in zip(fits, rows) if r not in on_mode]
    caption = (f"Minimising KL(q‖p), the ELBO's direction, locks onto one mode with the mode's own width in {len(on_mode)} of "
               f"{len(fits)} starts (which mode depends on the start; KL(q‖p) = {min(r['KL(q‖p)'] for r in rows):.3f} there, "
               f"log 2 = {math.log(2):.3f} for two equal, well separated modes)" + ("; " + "; ".join(stuck) if stuck else "")
               + ": the reverse KL is not convex. Minimising KL(p‖q) matches the mean and variance of p and puts its mass "
               "between the modes, where p has almost none. Each fit is poor in the other fit's divergence.")
    return {"figure": f"{exp.name}.png", "table": table, "caption": caption, "rows": rows}


# --------------------------------------------------------------------------- score function vs reparameterisation


def gradient_variance(exp: SeedExperiment, out_dir: Path, tiny: bool = False, **_) -> dict[str, Any]:


    p: GradientVariance = exp.params
    if p.config not in bundled_configs():
        raise ConfigError(f"{exp.name}: params.config: no bundled config {p.config!r}")
    cfg = load_config(bundled_configs()[p.config])
    spec = cfg.spec
    if p.guide not in spec.guides:
        raise ConfigError(f"{exp.name}: params.guide: model {spec.name!r} has no guide {p.guide!r}")
    data = spec.load(cfg.data, cfg.model_args, cfg.seed)
    x = data.x.double()[: (40 if tiny else p.points)]
    init = spec.init_params(x, cfg.model_args, cfg.seed)
    pyro.set_rng_seed(cfg.seed)
    g = spec.guides[p.guide]
    guide = g.build(x, init, **cfg.guide_args.for_builder(g.build))
    model = spec.learnable(init, cfg.model_args)
    samples = p.samples[:3] if tiny else p.samples
    rows = variance_curve(model, guide, x, samples, 10 if tiny else p.repeats, seed=cfg.seed)
    fig, ax = report.axes(figsize=(6.5, 4))
    for est in ("reparameterised", "score function"):
        mine = [r for r in rows if r["estimator"] == est]
        ax.loglog([r["samples"] for r in mine], [r["total_variance"] for r in mine], "o-", label=est)
    ax.set_xlabel("samples S per gradient estimate")
    ax.set_ylabel("total variance tr Cov(ĝ_S)")
    report.finish(fig, ax, out_dir / f"{exp.name}.png", f"{exp.title} ({spec.name}, {p.guide} guide, {x.shape[0]} points)",
                   legend_loc="upper right")
    ratio = {r["samples"]: r["total_variance"] for r in rows if r["estimator"] == "score function"}
    ratio = {s: ratio[s] / r["total_variance"] for r in rows if r["estimator"] == "reparameterised" for s in [r["samples"]]}
    caption = (f"Both estimators are unbiased and their variance falls as 1/S; the score function's is "
               f"{min(ratio.values()):.3g} to {max(ratio.values()):.3g} times the reparameterised one's at the same S, "
               "so matching it would take that many times more samples.")
    return {"figure": f"{exp.name}.png", "table": _table(rows, ["estimator", "samples", "total_variance", "snr"]),
            "caption": caption, "rows": rows}


# --------------------------------------------------------------------------- EM as VI


def em_as_vi(exp: SeedExperiment, out_dir: Path, tiny: bool = False, **_) -> dict[str, Any]:
    """Track log p(x; theta_t) and the ELBO(q, theta) along EM's alternation, per point."""
    p: EMAsVI = exp.params
    spec = MODELS["gmm"]
    args = GMMArgs(num_components=p.num_components)
    x = spec.load(DataOptions(name=p.data), args, 0).x.double()
    n = x.shape[0]
    gen = torch.Generator().manual_seed(p.seed)
    init = spec.init_params(x, args, p.seed)
    params = dataclasses.replace(init, locs=x[torch.randperm(n, generator=gen)[: p.num_components]])
    rows = []
    for t in range(3 if tiny else p.iterations):
        log_p = float(gmm_exact.log_evidence(x, params)) / n
        q = gmm_exact.posterior(x, params)  # E-step: q = p(z | x, theta_t)
        after_e = float(gmm_exact.elbo(x, params, q)) / n
        params = gmm_exact.m_step(x, q, args.covariance, args.reg_covar)  # M-step: theta_{t+1} maximises ELBO(q, .)
        after_m = float(gmm_exact.elbo(x, params, q)) / n
        rows.append({"iteration": t, "log p(x; θ_t)": log_p, "ELBO after E-step": after_e, "ELBO after M-step": after_m,
                     "log p(x; θ_t+1)": float(gmm_exact.log_evidence(x, params)) / n})
    em_as_vi_figure(rows, out_dir / f"{exp.name}.png", f"{exp.title} (GMM, K = {p.num_components}, {p.data})")
    touch = max(abs(r["ELBO after E-step"] - r["log p(x; θ_t)"]) for r in rows)
    below = min(r["log p(x; θ_t+1)"] - r["ELBO after M-step"] for r in rows)
    rise = min(r["ELBO after M-step"] - r["ELBO after E-step"] for r in rows)
    caption = (f"After every E-step the bound equals log p(x) (largest difference {touch:.1e} nats per point); every "
               f"M-step raises it (smallest rise {rise:.2e}), and log p(x; θ_t+1) stays above it by at least "
               f"{below:.2e}: the KL that the next E-step removes.")
    return {"figure": f"{exp.name}.png", "table": _table(rows, list(rows[0])), "caption": caption, "rows": rows}


def em_as_vi_figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels on a half-step axis (the E-step of iteration t at t, its M-step at t + 0.5). Top: log p(x; θ) and
    the ELBO after each step: the E-step lifts the bound onto log p(x), the M-step raises both. Bottom, log scale:
    the differences that the top panel cannot show once EM settles: the M-step's rise of the bound, and the gap
    log p(x; θ_t+1) − ELBO that the M-step opens and the next E-step closes (after an E-step the gap is round-off,
    drawn at 1e-16)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, low) = plt.subplots(2, 1, figsize=(7, 6.4), dpi=120, sharex=True, layout="constrained",
                                   gridspec_kw={"height_ratios": [3, 2]})
    ts = [r["iteration"] for r in rows]
    xs = [x for t in ts for x in (t, t + 0.5)] + [ts[-1] + 1]
    log_p = [v for r in rows for v in (r["log p(x; θ_t)"], r["log p(x; θ_t+1)"])] + [rows[-1]["log p(x; θ_t+1)"]]
    # log p(x; θ) changes only at the M-step: a step function, level between E-step t and M-step t
    top.step(xs, log_p, where="post", color="k", lw=1.4, label="log p(x; θ) / point")
    ys = [v for r in rows for v in (r["ELBO after E-step"], r["ELBO after M-step"])]
    top.plot(xs[:-1], ys, "-", color="0.6", lw=0.8)
    top.plot(ts, [r["ELBO after E-step"] for r in rows], "o", color="C0", ms=6, mfc="none", mew=1.5,
             label="ELBO after the E-step (q = posterior, at t): touches log p(x)")
    top.plot([t + 0.5 for t in ts], [r["ELBO after M-step"] for r in rows], "s", color="C1", ms=5,
             label="ELBO after the M-step (same q, new θ, at t + ½): raised, below log p(x)")
    if len(rows) > 2:  # zoom past the poor start (it would flatten every later step): note it off the scale
        report.fit_ylim(top, [v for r in rows[1:] for v in (r["ELBO after E-step"], r["log p(x; θ_t+1)"])])
        if rows[0]["log p(x; θ_t)"] < top.get_ylim()[0]:
            top.text(0.02, 0.95, f"zoomed past the start: at t = 0, log p(x) = {rows[0]['log p(x; θ_t)']:.3f} (below the axis)",
                     transform=top.transAxes, fontsize=7, va="top")
    top.set_ylabel("nats per data point")
    top.legend(fontsize=7, loc="lower right")
    top.grid(alpha=0.3)
    floor = 1e-16
    low.semilogy([t + 0.5 for t in ts], [max(r["ELBO after M-step"] - r["ELBO after E-step"], floor) for r in rows], "s-",
                 color="C1", ms=4, lw=1, label="M-step's rise of the bound: ELBO after M − ELBO after E")
    low.semilogy([t + 0.5 for t in ts], [max(r["log p(x; θ_t+1)"] - r["ELBO after M-step"], floor) for r in rows], "^-",
                 color="C2", ms=4, lw=1, label="gap after the M-step: log p(x; θ_t+1) − ELBO (the next E-step closes it)")
    low.semilogy(ts, [max(abs(r["ELBO after E-step"] - r["log p(x; θ_t)"]), floor) for r in rows], "o", color="C0",
                 mfc="none", ms=5, label="gap after the E-step: |log p(x; θ_t) − ELBO| (round-off; floor 1e-16)")
    low.set_xlabel("EM iteration: E-step at t, M-step at t + ½")
    low.set_ylabel("nats per point (log scale)")
    low.set_xticks(range(ts[-1] + 2))
    low.legend(fontsize=6.5, loc="upper right")
    low.grid(alpha=0.3, which="both")
    top.set_title(textwrap.fill(title, int(13 * fig.get_figwidth())), fontsize=9)
    report.save_png(fig, path)


# --------------------------------------------------------------------------- gap split from a comparison


def gap_split(exp: SeedExperiment, out_dir: Path, tiny: bool = False, progress: bool = False, log=print) -> dict[str, Any]:
    p: GapSplit = exp.params
    overrides = tuple(p.overrides) + (tiny_overrides() if tiny else ())
    result = compare(CompareOptions(p.model, p.data or None, 1 if tiny else p.seeds, (), overrides, str(out_dir / "compare"),
                                    progress, draws=200, points=2, config=p.config or None), log=log)
    rows = [e for e in result.summary if e.get("approximation_gap") is not None and e["kind"] != "reference"]
    per_seed = [[r["total_gap"] for r in result.rows if r["method"] == e["method"] and r.get("total_gap") is not None]
                for e in rows]
    gap_split_figure(rows, per_seed, out_dir / f"{exp.name}.png", f"{exp.title}: {result.title}")
    caption = "; ".join(f"{e['method']}: total {e['total_gap']:.4f} = approximation {e['approximation_gap']:.4f} + "
                        f"amortisation {e['amortisation_gap']:.4f}" for e in rows)
    return {"figure": f"{exp.name}.png", "table": _table(rows, ["method", "total_gap", "approximation_gap", "amortisation_gap"]),
            "caption": caption + " (nats per point, at each guide's own parameters).", "rows": rows,
            "compare_dir": str(result.out_dir)}


def gap_split_figure(rows: list[dict[str, Any]], per_seed: list[list[float]], path: Path, title: str) -> None:
    """One stacked bar per guide (approximation + amortisation gap, means over seeds) and each seed's total gap as a
    tick, joined by its min-max range over seeds: a KL divergence is >= 0, and so is every end of the range and the
    axis (a mean ± sd bar would reach below 0 where the seeds spread)."""
    fig, ax = report.axes(figsize=(6.5, 3.8))
    names = [e["method"] for e in rows]
    approx = [e["approximation_gap"] for e in rows]
    amort = [e["amortisation_gap"] for e in rows]
    ax.bar(names, approx, color="C0", label="approximation gap KL(q* ‖ p), mean over seeds")
    ax.bar(names, amort, bottom=approx, color="C1", label="amortisation (or optimisation) gap ELBO(q*) − ELBO(q)")
    seeds_n = max((len(v) for v in per_seed), default=0)
    for i, values in enumerate(per_seed):
        if len(values) > 1:
            ax.vlines(i, min(values), max(values), color="k", lw=1.4, zorder=3,
                      label="total gap: min–max over seeds" if i == 0 else None)
        ax.plot([i] * len(values), values, "k_", ms=16, mew=1.6, zorder=4,
                label=f"total gap KL(q ‖ p), each of {seeds_n} seed{'s' if seeds_n > 1 else ''}" if i == 0 else None)
    top = max([a + b for a, b in zip(approx, amort)] + [v for vs in per_seed for v in vs] + [1e-12])
    ax.set_ylim(0, 1.25 * top)  # the support of a KL divergence: nothing below 0
    ax.set_ylabel("KL divergence, nats per data point (≥ 0)")
    report.finish(fig, ax, path, title, legend_loc="upper right")


def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
