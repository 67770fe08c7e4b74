"""Posterior draws for the comparison's pictures and ArviZ export: each trained guide's q, drawn with
``pyro.infer.Predictive`` run on the guide itself, and the exact posterior p(z | x, theta) at each guide's own
parameters (the model's ``ExactReference.draws``, built on :mod:`vizoo.models.exact.draws`).

Draws come in two layouts: the sites' own (``{site: (S, *site shape)}``, what Predictive and the exact
reference return, and what :func:`vizoo.experiments.inference_data.to_inference_data` scores), and the
pictures' tables (``{site: (S, P, coords)}`` for P chosen data points, categorical values one-hot).
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.util import site_is_subsample

from ..models.spec import ModelSpec
from .run import RunResult

SEQUENTIAL_DRAWS = 200  # posterior draws of a guide that cannot be vectorised over draws (one call per draw)
DRAW_CHUNK = 100  # draws per vectorised call


@torch.no_grad()
def guide_draws(guide, x: torch.Tensor, num_samples: int, sites: list[str] | None = None,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of the guide's ``sites`` (default: every latent site of the guide, observed and
    subsample sites aside) with ``pyro.infer.Predictive`` run on the guide itself (q is all we need; replaying the
    model on every draw would score the whole data set each time): vectorised over draws where the guide allows
    it, else one draw at a time."""

    if sites is None:
        with poutine.block(), pyro.validation_enabled(False):
            trace = poutine.trace(guide).get_trace(x)
        sites = [name for name, site in trace.nodes.items()
                 if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]
        if not sites:
            return {}
    pyro.set_rng_seed(seed)
    try:  # vectorised, DRAW_CHUNK draws per call: a guide's intermediates (LDA's per-token tables) scale with them
        parts = []
        with pyro.validation_enabled(False):
            for start in range(0, num_samples, DRAW_CHUNK):
                size = min(DRAW_CHUNK, num_samples - start)
                parts.append(Predictive(guide, num_samples=size, return_sites=sites, parallel=True)(x))
        return {s: torch.cat([p[s] for p in parts]) for s in parts[0]}
    except (RuntimeError, ValueError, NotImplementedError, IndexError):
        pyro.set_rng_seed(seed)  # one guide call per draw: at most SEQUENTIAL_DRAWS of them
        return Predictive(guide, num_samples=min(num_samples, SEQUENTIAL_DRAWS), return_sites=sites)(x)


def point_sites(model, guide, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Latent sites of the guide that are local to the data plate: name -> (point axis, cardinality; 0 if not
    categorical with more than two values)."""

    n = x.shape[0]
    with poutine.block(), pyro.validation_enabled(False):
        trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(x)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site) or name not in model_trace.nodes:
            continue
        frames = [f for f in site["cond_indep_stack"] if f.size == n]
        if not frames:
            continue
        value = site["value"]
        event = site["fn"].event_dim
        axis = value.dim() - event + frames[0].dim
        fn = model_trace.nodes[name]["fn"]
        k = 0
        if fn.has_enumerate_support and event == 0 and not isinstance(fn, dist.Bernoulli):
            k = fn.enumerate_support(expand=False).shape[0]  # categorical: one-hot, so means are probabilities
        out[name] = (axis, k)
    return out


def take(value: torch.Tensor, axis: int, points: torch.Tensor | None, cardinality: int) -> torch.Tensor:
    """(S, P, coords): the rows ``points`` (all if None) along the point axis (of the unbatched site), categorical one-hot."""
    v = value.movedim(axis + 1, 1)
    v = v if points is None else v[:, points]
    if cardinality:
        v = torch.nn.functional.one_hot(v.long(), cardinality)
    return v.reshape(v.shape[0], v.shape[1], -1).double().detach()


def select_points(spec: ModelSpec, results: list[RunResult], points: int, candidates: int = 400) -> torch.Tensor:
    """The ``points`` data points the pictures show: among the first ``candidates``, those whose exact posterior (at the first
    guide's parameters, from 256 draws) is most interesting: the largest covariance between binary latents,
    else the largest posterior variance summed over coordinates. The first points where nothing is exact."""
    res = results[0]
    n = res.x.shape[0]
    method = next(iter(res.trained), None)
    if method is None or not res.metrics["enumerable"] or spec.exact.draws is None:
        return torch.arange(min(points, n), device=res.x.device)
    m = min(n, candidates)
    sites = point_sites(res.models[method], res.trained[method], res.x)
    with torch.no_grad():
        exact = spec.exact.draws(res.x[:m], res.fits[method], 256, torch.Generator(res.x.device).manual_seed(1))
    taken = {s: take(v, sites[s][0], None, sites[s][1]) for s, v in exact.items() if s in sites}
    binary = binary_sites(taken)
    if binary:  # covariance, not correlation: a rare bit's correlation from 256 draws is noise
        v = taken[binary[0]] - taken[binary[0]].mean(0)
        cov = torch.einsum("spi,spj->pij", v, v) / (v.shape[0] - 1)
        score = (cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))).abs().amax((-2, -1))
    else:
        score = sum(v.var(0).sum(-1) for v in taken.values())
    return score.argsort(descending=True)[:points]  # most interesting first


def posterior_draws(spec: ModelSpec, results: list[RunResult], num_draws: int, points: torch.Tensor):
    """Seed 0's posterior draws. Returns (tables, sources): tables, for the data points ``points``: "<method>" ->
    {site: (S, P, coords)} from the guide (pyro.infer.Predictive), and "exact | <method>" from the exact posterior
    at that method's parameters; sources, under the same keys: (x, params, {site: (S, *site shape)} for every
    point), what :func:`vizoo.experiments.inference_data.to_inference_data` scores (the tables are these draws'
    rows ``points``, so both come from the same draws)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    sources: dict[str, tuple[torch.Tensor, Any, dict[str, torch.Tensor]]] = {}
    gen = torch.Generator(results[0].x.device).manual_seed(0) if results else None  # draws on the data's device
    for res in results:
        for method, guide in res.trained.items():
            model = res.models[method]
            sites = point_sites(model, guide, res.x)
            if not sites:
                continue
            pred = guide_draws(guide, res.x, num_draws, list(sites))
            out[method] = {s: take(pred[s], sites[s][0], points, sites[s][1]) for s in sites if s in pred}
            sources[method] = (res.x, res.fits[method], pred)
            if res.metrics["enumerable"] and spec.exact.draws is not None and not getattr(guide, "point_mass", False):
                with torch.no_grad():
                    exact = spec.exact.draws(res.x, res.fits[method], num_draws, gen)
                out[f"exact | {method}"] = {s: take(v, sites[s][0], points, sites[s][1]) for s, v in exact.items()
                                            if s in sites}
                sources[f"exact | {method}"] = (res.x, res.fits[method], exact)
    return out, sources

def binary_sites(v: dict[str, torch.Tensor]) -> list[str]:
    """Sites of a draws table whose coordinates are bits (0/1, at least two, not one-hot categories)."""
    return [s for s, t in v.items() if t.shape[-1] >= 2 and bool(((t == 0) | (t == 1)).all()) and not one_hot(t)]


def one_hot(t: torch.Tensor) -> bool:
    return bool((t.sum(-1) == 1).all())
