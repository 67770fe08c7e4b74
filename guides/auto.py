"""Pyro's own autoguides as outside baselines for the guide comparison (``vizoo compare``).

They apply to a model whose local latent sites are all continuous (the VAE, factor analysis, declared models
with gaussian latents): ``AutoNormal`` is the diagonal-Gaussian mean-field family, with its own per-point
parameters and its own initialisation (so it is the same family as the hand-written ``mean_field`` guide,
reached by Pyro's code instead of ours); ``AutoDelta`` is a point mass per latent, which turns SVI into
joint MAP over latents and parameters: its objective log p(x, z*) is not a bound on log p(x). Discrete
latents have no autoguide here: Pyro's answer for them is enumeration, which the hand-written guides and
the exact references already do.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from ..models.datasets import take_rows

KINDS: dict[str, type] = {"AutoNormal": AutoNormal, "AutoDelta": AutoDelta}
SUMMARIES = {
    "AutoNormal": "Pyro's AutoNormal: q(z_n) = N(loc_n, diag scale_n^2), per point (outside baseline)",
    "AutoDelta": "Pyro's AutoDelta: a point mass z_n* per point, joint MAP; its objective is not a bound (outside baseline)",
}


def why_not(model: nn.Module, x: Tensor) -> str:
    """Why Pyro's autoguides do not apply to ``model`` on data ``x`` ("" when they do): a discrete latent site."""
    with poutine.block(), pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace(take_rows(x, torch.arange(min(2, x.shape[0]), device=x.device)))  # dense or sparse
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            if site["fn"].support.is_discrete:
                return f"its latent site {name!r} is discrete (autoguides need continuous latents; Pyro enumerates discrete ones)"
    return ""


class AutoBaseline(nn.Module):
    """An autoguide of ``kind`` for ``model``, with its parameters created at once (so the optimiser sees them).
    ``point_mass`` tells the evaluation that log q is not a density (AutoDelta)."""

    def __init__(self, kind: str, model: Callable, x: Tensor):
        super().__init__()
        self.auto = KINDS[kind](model)
        self.point_mass = kind == "AutoDelta"
        with poutine.block():
            self.auto(x)  # sets up the prototype trace and the per-point parameters
        # the parameters of the sites in the data's plate are free per point (experiments/param_groups.py)
        sites = {name for name, site in self.auto.prototype_trace.iter_stochastic_nodes()
                 if any(f.vectorized and (f.full_size or f.size) == x.shape[0] for f in site["cond_indep_stack"])}
        prefixes = ("auto.locs.", "auto.scales.") if kind == "AutoNormal" else ("auto.",)
        names = [n.removesuffix("_unconstrained") for n, _ in self.named_parameters()]
        self.local_parameters = tuple(n for n in names if any(n.startswith(p) and n[len(p):] in sites for p in prefixes))

    def forward(self, x: Tensor, **kwargs) -> None:
        self.auto(x, **kwargs)
