"""The comparison's figures: ELBO against wall time (``elbo_time.png``), posterior marginals of a few points,
exact beside each guide (``marginals.png``), and the posterior correlation of binary latents that a factorised
q cannot hold (``correlation.png``). The draws come from :mod:`vizoo.experiments.posterior_draws`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import report
from .posterior_draws import binary_sites
from .run import RunResult


def plot_elbo_time(path: Path, results: list[RunResult]) -> None:
    """Every guide's ELBO per point against seconds of training, with the reference fit's objective line."""

    fig, ax = report.axes(figsize=(7, 4.2))
    values = []
    for res in results:
        for name, g in res.metrics["guides"].items():
            curve, times = np.asarray(g["elbo_curve"], float), np.asarray(g.get("elbo_times") or [], float)
            if curve.size == 0 or times.size != curve.size:
                continue
            smooth = report.smooth(curve)
            point_mass = getattr(res.trained.get(f"SVI {name}"), "point_mass", False)
            label = f"SVI {name} ({g['elbo']})" + (": log p(x, z*), not a bound" if point_mass else "")
            ax.plot(times[-len(smooth):], smooth, lw=1.5, ls=":" if point_mass else "-", label=label)
            if not point_mass:  # a MAP objective may climb far above every bound: leave it off the scale
                values += [float(np.percentile(curve, 20)), float(curve[-1])]
    em = results[0].metrics.get("exact")
    if em:
        level = em.get("log_likelihood_per_point", em.get("elbo_per_point"))
        ax.axhline(level, color="k", ls="--", lw=1.2, label=f"{em['method']} ({em['wall_time_s']:.2f} s): {em['objective']} / point = {level:.4f}")
        values.append(level)
    report.fit_ylim(ax, values)
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log scale)")
    ax.set_ylabel("nats per data point")
    report.finish(fig, ax, path, f"ELBO against wall time: {results[0].metrics['title']}", legend_loc="lower right")


def _pairs(draws: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """Methods with exact draws beside them, in order."""
    return [m for m in draws if not m.startswith("exact | ") and f"exact | {m}" in draws] or \
        [m for m in draws if not m.startswith("exact | ")]


def plot_marginals(path: Path, draws: dict[str, dict[str, torch.Tensor]], points: list[int], max_coords: int = 12) -> None:
    """Rows: methods; columns: data points. Discrete coordinates: P(value) (bars); continuous: mean ± 2 sd.
    The exact posterior at the method's own parameters is drawn beside the guide's q."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _pairs(draws)
    fig, axes = plt.subplots(len(methods), len(points), figsize=(3.6 * len(points), 2.3 * len(methods) + 0.6), dpi=110, squeeze=False)
    for r, method in enumerate(methods):
        for c, point in enumerate(points):
            ax = axes[r, c]
            offset, ticks = 0, []
            for label, mine, colour, shift in ((f"exact | {method}", draws.get(f"exact | {method}"), "k", -0.2),
                                               (method, draws[method], "C1", 0.2)):
                if mine is None:
                    continue
                pos = 0
                for site, v in mine.items():
                    if c >= v.shape[1]:
                        continue
                    vals = v[:, c, :max_coords]
                    xs = torch.arange(vals.shape[1]) + pos
                    discrete = bool(((vals == 0) | (vals == 1)).all())
                    if discrete:
                        ax.bar(xs + shift, vals.mean(0), width=0.4, color=colour, alpha=0.8, label=label if pos == 0 else None)
                    else:
                        ax.errorbar(xs + shift, vals.mean(0), yerr=2 * vals.std(0), fmt="o", ms=3, color=colour,
                                    label=label if pos == 0 else None)
                    if shift > 0:
                        ticks += [(float(x), f"{site}[{i}]") for i, x in enumerate(xs)]
                    pos += vals.shape[1] + 1
                offset = max(offset, pos)
            if ticks:
                ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks], rotation=90, fontsize=6)
            ax.set_title(f"{method}, point {point}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=6)
    fig.suptitle("Posterior marginals: exact p(z | x, θ) (black) beside each guide's q (orange), at the guide's own θ;\n"
                 "discrete: probability of 1 (one-hot for categories), continuous: mean ± 2 sd", fontsize=8)
    fig.tight_layout()
    report.save_png(fig, path)


def correlations(v: torch.Tensor) -> torch.Tensor:
    """(P, K, K) correlation of the coordinates of v: (S, P, K) across draws (NaN-free: constant bits give 0)."""
    c = v - v.mean(0)
    cov = torch.einsum("spi,spj->pij", c, c) / (v.shape[0] - 1)
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()
    return cov / (sd[..., :, None] * sd[..., None, :])


def plot_correlation(path: Path, draws: dict[str, dict[str, torch.Tensor]], points: list[int]) -> bool:
    """For binary latents: the exact posterior correlation between latent bits at the point (of those drawn) where
    it is strongest, beside each guide's (zero for mean field by construction). False if there are none.
    Ticks are the latent bits' indices; the diagonal (each bit with itself, 1 by definition) is grey and marked 1,
    so the colour scale is spent on the off-diagonal; with few bits every cell carries its value."""
    fig = correlation_figure(draws, points)
    if fig is None:
        return False
    report.save_png(fig, path)
    return True


def correlation_figure(draws: dict[str, dict[str, torch.Tensor]], points: list[int]):
    """The figure of :func:`plot_correlation` (not saved), or None without binary latents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in _pairs(draws) if f"exact | {m}" in draws and binary_sites(draws[f"exact | {m}"])]
    if not methods:
        return None
    fig, axes = plt.subplots(len(methods), 2, figsize=(7.2, 3.3 * len(methods) + 0.5), dpi=110, squeeze=False,
                             layout="constrained")
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")  # the diagonal (NaN) grey
    for r, method in enumerate(methods):
        site = binary_sites(draws[f"exact | {method}"])[0]
        exact = correlations(draws[f"exact | {method}"][site])
        off = exact - torch.diag_embed(torch.diagonal(exact, dim1=-2, dim2=-1))
        p = int(off.abs().amax((-2, -1)).argmax())
        name = method.removeprefix("SVI ")
        for c, (label, v) in enumerate(((f"exact p(z | x) at {name}'s θ", exact[p]), (f"{method}: q", correlations(draws[method][site])[p]))):
            ax = axes[r, c]
            k = v.shape[0]
            v = v.clone()
            v.fill_diagonal_(float("nan"))  # 1 by definition: grey, marked "1"
            im = ax.imshow(v.cpu().numpy(), vmin=-1, vmax=1, cmap=cmap)
            ticks = list(range(k)) if k <= 12 else list(range(0, k, max(1, k // 8)))
            ax.set_xticks(ticks, [str(i) for i in ticks])
            ax.set_yticks(ticks, [str(i) for i in ticks])
            ax.set_xlabel(f"{site} index", fontsize=7)
            ax.set_ylabel(f"{site} index", fontsize=7)
            ax.tick_params(labelsize=6)
            if k <= 8:
                for i in range(k):
                    for j in range(k):
                        text = "1" if i == j else f"{round(float(v[i, j]), 2) + 0.0:.2f}"  # no "-0.00"
                        ax.text(j, i, text, ha="center", va="center", fontsize=6,
                                color="white" if i != j and abs(float(v[i, j])) > 0.6 else "black")
            ax.set_title(f"{label}\ncorr({site}), data point {points[p]}", fontsize=7)
        bar = fig.colorbar(im, ax=axes[r].tolist(), shrink=0.8)
        bar.set_label("correlation", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle("Posterior correlation of binary latents (from draws): explaining away, which a factorised q cannot\n"
                 "hold; the diagonal is 1 (grey)", fontsize=8)
    return fig
