"""ArviZ: posterior draws as ``InferenceData``, with the data and the pointwise log-likelihood, and the guide
comparison's export of them (``arviz/<method>.nc``, ``arviz_summary.md``, ``forest.png``).

:func:`to_inference_data` is the one constructor (the comparison and the Python API both call it). Its groups:

* ``posterior``: the draws, chain 1 x draw x the site's own shape (or the caller's tables, e.g. the comparison's
  few chosen points with one-hot categories);
* ``observed_data``: the data x, first axis ``observation``;
* ``log_likelihood``: ``x``, chain 1 x draw x observation, log p(x_n | z_n^(s), theta) for every data point n
  and draw s, at the fitted parameters theta, so that ``az.loo`` and ``az.compare`` run. Where the model
  cannot be scored for all draws at once (the factorial HMM's Markov chains), it holds the first
  ``SEQUENTIAL_DRAWS`` draws only (its own ``draw`` coordinate, shorter than the posterior's).

The pointwise log-likelihood is computed generically (:func:`pointwise_log_likelihood`): the model is
conditioned on each draw (``poutine.condition``), traced, and the observed site's ``log_prob`` summed over
every dimension but the data plate's; vectorised over draws under an extra outer plate where the model
broadcasts (checked against one draw scored alone), otherwise one draw at a time. It exists where

1. the draws hold every latent site of the model (nothing left to be sampled from the prior), and
2. the model observes x itself (the observed value has x's shape) inside a plate over the data points.

Which models and methods get it (both the exact posterior's draws and each guide's, where they have draws):
the mixtures (gmm, declared_gmm, bernoulli_mixture), the binary latent-feature models (noisy_or, lfdm,
declared_noisy_or, declared_lfdm, diagnosis, sigmoid_belief_net), factor analysis, the VAEs and the factorial
HMM (one value per sequence: log p(y_n | s_n), summed over its steps). LDA does not: its observed site is the
corpus's word tokens (a plate over entries, not over documents) and each token's topic z is summed out rather
than drawn, so there is no per-document log p(x_d | draw) to read off the trace. Methods without posterior
draws (the collapsed "marginal" GMM guide, which has no latent site) get no InferenceData at all.

Reading ``az.loo``: z_n is local to point n, so leaving x_n out returns z_n to its prior, and the LOO predictive
is p(x_n | theta) = sum_z p(z) p(x_n | z, theta), estimated by importance sampling from p(z_n | x_n) with
weights 1 / p(x_n | z_n): the harmonic-mean identity E_{p(z|x)}[1 / p(x | z)] = 1 / p(x). With the exact
posterior's draws, elpd_loo therefore tends to log p(x) = sum_n log p(x_n | theta) as draws grow, but a
latent value the draws never visit loses its prior mass: where the posterior of z_n is sharp (well separated
clusters), elpd_loo exceeds log p(x) by up to -log p(z_n = the visited value) per point, and the Pareto k
diagnostics do not flag it (the weights are all equal). Conversely, with discrete latents the weights take a
few distinct values, so the Pareto k fit is degenerate and often reports k > 1 where the estimate is accurate
(two overlapping components: elpd_loo -55.16 against log p(x) = -55.14, every k "very bad"). Parameters are fixed point estimates: there is no
posterior over theta in these groups.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..models.spec import ModelSpec
from . import report

CHUNK_ELEMENTS = 20_000_000  # draws per vectorised call: about this many data elements (draws x x.numel())
SEQUENTIAL_DRAWS = 200  # draws scored where the model cannot be vectorised over draws (one trace per draw)


def to_inference_data(spec: ModelSpec, x: torch.Tensor, params: Any, draws: dict[str, torch.Tensor], *,
                      posterior: dict[str, torch.Tensor] | None = None, dims: dict[str, list[str]] | None = None,
                      coords: dict[str, Any] | None = None):
    """InferenceData of one method's posterior draws (see the module docstring).

    spec: the model's spec (its ``model(x, params)`` is what is scored). x: the data, (N, ...). params: the
    fitted parameters the draws belong to (``spec.fitted``, ``RunResult.fits[method]``). draws: {site:
    (S, *site shape)} for every latent site, over all N points, in the model's own layout (what
    ``spec.exact.draws(x, params, S, generator)`` and ``pyro.infer.Predictive(guide, parallel=True)`` return).
    posterior / dims / coords: the posterior group instead of ``draws`` ({name: (S, ...)}), with its dims and
    coords (the comparison's chosen points). The log-likelihood group is left out where the model does not
    allow it (``pointwise_log_likelihood`` returns None)."""
    import arviz as az

    post = draws if posterior is None else posterior
    groups: dict[str, Any] = {"posterior": {s: _numpy(v)[None] for s, v in post.items()}}
    dims = dict(dims or {})
    obs = _numpy(x)
    groups["observed_data"] = {"x": obs}
    dims["x"] = ["observation"]
    log_lik = pointwise_log_likelihood(spec, x, params, draws)
    if log_lik is not None:
        groups["log_likelihood"] = {"x": _numpy(log_lik)[None]}  # (chain 1, draw, observation)
    coords = {**(coords or {}), "observation": np.arange(obs.shape[0])}
    return az.from_dict(**groups, dims=dims, coords=coords)


def _numpy(v: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; sparse counts (LDA) as the dense (documents, words) table ArviZ's observed_data holds."""
    v = v.detach().cpu()
    return (v.to_dense() if v.layout != torch.strided else v).numpy()


@torch.no_grad()
def pointwise_log_likelihood(spec: ModelSpec, x: torch.Tensor, params: Any, draws: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(S, N): log p(x_n | z_n^(s), params) for each draw s and data point n, or None where the model has no such
    per-point term (see the module docstring). Vectorised over draws where the model broadcasts; else one draw at
    a time, for the first ``SEQUENTIAL_DRAWS`` draws only (S is then smaller than the number of draws)."""
    if not draws:
        return None
    num = next(iter(draws.values())).shape[0]
    n = x.shape[0]
    with poutine.block(), pyro.validation_enabled(False):
        prior = poutine.trace(spec.model).get_trace(x, params)  # the latent sites and their shapes
        latents = {name: site for name, site in prior.nodes.items()
                   if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}
        if any(name not in draws or tuple(draws[name].shape[1:]) != tuple(site["value"].shape)
               for name, site in latents.items()):
            return None  # a latent site is not drawn (or has another layout): it would come from the prior
        observed = [name for name, site in prior.nodes.items() if site["type"] == "sample" and site["is_observed"]
                    and tuple(site["value"].shape) == tuple(x.shape) and any(f.size == n for f in site["cond_indep_stack"])]
        if not observed:
            return None
        one = _score(spec, x, params, {s: v[:1] for s, v in draws.items()}, observed, n, batched=False)
        try:
            nesting = max((-f.dim for name in [*latents, *observed] for f in prior.nodes[name]["cond_indep_stack"]), default=0)
            out = _vectorised(spec, x, params, draws, latents, nesting, observed, n)
            if out.shape != (num, n) or not torch.allclose(out[:1], one, rtol=1e-6, atol=1e-6):
                out = None
        except (RuntimeError, ValueError, IndexError, NotImplementedError):
            out = None
        if out is None:  # the model does not broadcast over an extra batch dimension: one draw at a time
            out = torch.cat([one] + [_score(spec, x, params, {s: v[i:i + 1] for s, v in draws.items()}, observed, n,
                                            batched=False) for i in range(1, min(num, SEQUENTIAL_DRAWS))])
    return out.double()


def _vectorised(spec, x, params, draws, latents, nesting, observed, n) -> torch.Tensor:
    """(S, N) in chunks of draws, each under an outer plate of draws (left of every plate of the model)."""
    shaped = {}
    for name, site in latents.items():
        batch_dims = site["value"].dim() - site["fn"].event_dim
        v = draws[name]
        shaped[name] = v.reshape(v.shape[:1] + (1,) * (nesting - batch_dims) + v.shape[1:])
    num = next(iter(draws.values())).shape[0]
    chunk = max(1, CHUNK_ELEMENTS // max(1, x.numel()))
    parts = []
    for start in range(0, num, chunk):
        part = {s: v[start:start + chunk] for s, v in shaped.items()}
        parts.append(_score(spec, x, params, part, observed, n, batched=True, nesting=nesting))
    return torch.cat(parts)


def _score(spec, x, params, values, observed, n, batched: bool, nesting: int = 0) -> torch.Tensor:
    """(S', N): the observed sites' log-probability per point, with the latents conditioned on ``values``
    ((S', ...) each: under an outer plate of S' draws if ``batched``, else S' = 1 and the draw axis dropped)."""
    num = next(iter(values.values())).shape[0]
    data = values if batched else {s: v[0] for s, v in values.items()}
    model = poutine.condition(spec.model, data=data)

    def run():
        if batched:
            with pyro.plate("_draws", num, dim=-(nesting + 1), device=x.device):
                model(x, params)
        else:
            model(x, params)

    trace = poutine.trace(run).get_trace()
    total = 0.0
    for name in observed:
        site = trace.nodes[name]
        lp = site["fn"].log_prob(site["value"])
        frame = min((f for f in site["cond_indep_stack"] if f.size == n and f.name != "_draws"), key=lambda f: f.dim)
        if batched:
            if lp.dim() != nesting + 1:
                raise ValueError("the observed site does not broadcast over the draws")
            lp = lp.expand((num,) + lp.shape[1:])
            axis = lp.dim() + frame.dim
            lp = lp.movedim(axis, 1).reshape(num, n, -1).sum(-1)
        else:
            lp = lp.reshape((1,) * max(0, -frame.dim - lp.dim()) + lp.shape)
            axis = lp.dim() + frame.dim
            lp = lp.movedim(axis, 0).reshape(n, -1).sum(-1)[None]
        total = total + lp
    return total


def export_arviz(spec: ModelSpec, out_dir: Path, draws: dict[str, dict[str, torch.Tensor]], points: list[int],
                 sources: dict[str, tuple[torch.Tensor, Any, dict[str, torch.Tensor]]] | None = None,
                 max_coords: int = 12) -> bool:
    """Each method's draws as ArviZ InferenceData (netCDF, ``arviz/<method>.nc``): the posterior group holds the
    pictures' tables ``draws[method]`` (dims point (the data rows ``points``) and coordinate); where
    ``sources[method]`` = (x, params, draws of every point in the model's layout) is given, observed_data and
    the pointwise log_likelihood of every point too (:func:`to_inference_data`). Also ``arviz_summary.md``
    (az.summary of the first of ``points`` per method) and ``forest.png`` (az.plot_forest of that point,
    methods side by side)."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "arviz").mkdir(exist_ok=True)
    data, parts = {}, [f"## ArviZ: posterior summaries of data point {points[0]}", ""]
    for method, sites in draws.items():
        dims = {s: ["point", f"{s}_coord"] for s in sites}  # posterior: (chain 1, draw, point, coord)
        if sources and method in sources:
            idata = to_inference_data(spec, *sources[method], posterior=sites, dims=dims, coords={"point": points})
        else:
            idata = az.from_dict(posterior={s: v.cpu().numpy()[None] for s, v in sites.items()}, dims=dims, coords={"point": points})
        fname = method.replace("exact | ", "exact_at_").replace("SVI ", "").replace(" ", "_")
        idata.to_netcdf(str(out_dir / "arviz" / f"{fname}.nc"))
        point0 = idata.posterior.isel(point=0).isel({f"{s}_coord": slice(0, max_coords) for s in sites})
        data[method] = point0
        table = az.summary(point0, kind="stats", round_to=3)
        parts += [f"### {method}", "", table.to_markdown() if _has_tabulate() else "```\n" + table.to_string() + "\n```", ""]
    report.write_atomic(out_dir / "arviz_summary.md", "\n".join(parts))
    fig = forest_figure(draws, points, data, max_coords)
    report.save_png(fig, out_dir / "forest.png")
    plt.close("all")
    return True


def _discrete(draws: dict[str, dict[str, torch.Tensor]], site: str) -> bool:
    """Every method's draws of ``site`` are 0/1 (bits, or one-hot categories)."""
    return all(bool(((v[site] == 0) | (v[site] == 1)).all()) for v in draws.values() if site in v)


def forest_figure(draws: dict[str, dict[str, torch.Tensor]], points: list[int], data: dict[str, Any] | None = None,
                  max_coords: int = 12):
    """The forest figure of data point ``points[0]``, methods side by side (each guide's q and the exact posterior at
    its θ, same colour: exact hollow, q filled). Discrete latents (0/1 bits, one-hot categories): a dot plot of the
    posterior probability of each bit being 1 (each category), where an interval over {0, 1} would say little.
    Continuous latents: ``az.plot_forest`` (posterior mean and 90% HDI) of ``data`` (method -> that point's
    posterior, an xarray Dataset). The legend sits below the panels, outside every axes. Returns the figure."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = list(draws)
    sites = list(dict.fromkeys(s for v in draws.values() for s in v))
    discrete = [s for s in sites if _discrete(draws, s)]
    continuous = [s for s in sites if s not in discrete and data is not None]
    guides = list(dict.fromkeys(m.removeprefix("exact | ") for m in names))
    colour = {g: f"C{i % 10}" for i, g in enumerate(guides)}
    rows_d = [(s, i) for s in discrete for i in range(min(max_coords, next(v[s] for v in draws.values() if s in v).shape[-1]))]
    rows_c = sum(min(max_coords, next(v[s] for v in draws.values() if s in v).shape[-1]) for s in continuous)
    panels = [k for k, n in (("discrete", len(rows_d)), ("continuous", rows_c)) if n]
    height = 1.6 + 0.1 * len(names) * max(len(rows_d), rows_c) + 0.25 * len(names)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.4, min(height, 14)), dpi=110,
                             squeeze=False, layout="constrained")
    handles, labels = [], []
    for ax, kind in zip(axes[0], panels):
        if kind == "discrete":
            width = 0.8 / max(1, len(names))
            for j, m in enumerate(names):
                exact = m.startswith("exact | ")
                ys, ps = [], []
                for r, (s, i) in enumerate(rows_d):
                    if s in draws[m]:
                        ys.append(r - 0.4 + width * (j + 0.5))
                        ps.append(float(draws[m][s][:, 0, i].mean()))
                h = ax.scatter(ps, ys, s=22, marker="o" if exact else "D", facecolors="none" if exact else colour[m.removeprefix("exact | ")],
                               edgecolors=colour[m.removeprefix("exact | ")], linewidths=1.2, zorder=3)
                handles.append(h)
                labels.append(m)
            categorical = {s for s in discrete if all(bool((v[s].sum(-1) == 1).all()) for v in draws.values() if s in v)}
            ax.set_yticks(range(len(rows_d)), [f"{s} = {i}" if s in categorical else f"{s}[{i}]" for s, i in rows_d], fontsize=7)
            ax.set_ylim(len(rows_d) - 0.5, -0.5)  # first coordinate on top
            ax.set_xlim(-0.04, 1.04)
            ax.set_xlabel("posterior probability: P(bit = 1); for a category, P(z = k)", fontsize=7)
            ax.tick_params(labelsize=7)
            for r in range(1, len(rows_d)):
                ax.axhline(r - 0.5, color="0.85", lw=0.6)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title("discrete latents: probabilities from the draws", fontsize=8)
        else:
            az.plot_forest([data[m][continuous] for m in names], model_names=names, combined=True, hdi_prob=0.9, ax=ax,
                           textsize=7)
            legend = ax.get_legend()
            if legend is not None:
                if not handles:  # the discrete panel's handles name the same methods
                    handles = list(legend.legend_handles)
                    labels = [t.get_text() for t in legend.get_texts()]
                legend.remove()
            ax.set_title("continuous latents: mean and 90% HDI", fontsize=8)
    if not handles:
        handles = [Line2D([], [], color=colour[m.removeprefix("exact | ")]) for m in names]
        labels = names
    fig.legend(handles, labels, loc="outside lower center", ncol=min(2, len(labels)), fontsize=7, frameon=False)
    marks = " (hollow: exact, filled: q)" if rows_d else ""
    title = (f"Posterior of data point {points[0]}: the exact posterior at each guide's θ beside the guide's q{marks}, "
             f"from {next(iter(next(iter(draws.values())).values())).shape[0]} draws")
    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=8)  # wrapped to the figure, never clipped
    return fig


def _has_tabulate() -> bool:
    """pandas writes Markdown tables only with the optional ``tabulate`` package installed."""

    return importlib.util.find_spec("tabulate") is not None
