r"""Guides generated for a declared model (:mod:`models.declared`): one family, two ways to fill it in.

Both guides are mean field over the latent groups of each point (and over the bits of a bernoulli group),

    q(z_n) = prod_g q(z_ng),   bernoulli: prod_k Bern(b_ngk);  categorical: Cat(phi_ng);  gaussian: N(m_ng, diag s_ng^2)

and differ in where the parameters come from:

* :class:`MeanField`: free per point and group (N x size each; a gaussian group has a loc and a scale).
* :class:`Amortised`: one MLP g(phi(x_n); lambda) from the point's observed groups (counts as log(1 + x),
  standardised) to every group's parameters at once. Same family, so at the same model parameters any
  gap beyond the best mean field is the amortisation gap.

Sites are named after the groups, in the declaration's plate, in the model's (topological) order.

Valid ELBO estimators (:func:`valid_elbos`): ``Trace_ELBO`` and ``TraceGraph_ELBO`` always (discrete sites
get a baseline, :class:`guides.nets.Baseline`); ``TraceEnum_ELBO`` when some latent group is discrete and the
joint supports are small enough to hold for every point (the gaussian groups are still sampled);
``TraceMeanField_ELBO`` when every latent group is gaussian (all sites reparameterised).

``probs(x, params)`` gives what the exact references score: {group: (N, size)}, q(bit = 1) for bernoulli
groups and q(z = k) for categorical ones (:mod:`models.exact.declared`); {group: (loc, scale)} for gaussian
ones (:mod:`models.exact.linear_gaussian`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from ..models.declaration import Declaration, Group
from ..models.distributions import BernoulliVector
from ..models.exact.declared import MAX_PARALLEL_CONFIGURATIONS
from .nets import MLP, Baseline, Standardise

_PARALLEL_SUPPORT = {"bernoulli": lambda g: 2**g.size, "categorical": lambda g: g.size}


def valid_elbos(decl: Declaration) -> tuple[tuple[str, ...], str]:
    """The estimators the generated guides are valid with, and why the others are not."""
    discrete = [g for g in decl.latents if g.family != "gaussian"]
    if not discrete:
        return ("Trace_ELBO", "TraceGraph_ELBO", "TraceMeanField_ELBO"), \
            "every latent group is gaussian: there is nothing to enumerate (TraceEnum_ELBO) and no closed form (Analytic_ELBO)"
    support = 1
    for g in discrete:
        support *= _PARALLEL_SUPPORT[g.family](g)
    why = f"TraceMeanField_ELBO needs reparameterised sites, and {', '.join(g.name for g in discrete)} are discrete"
    if support > MAX_PARALLEL_CONFIGURATIONS:
        return ("Trace_ELBO", "TraceGraph_ELBO"), (
            f"{why}; TraceEnum_ELBO would hold {support:,} joint configurations per point, more than the limit "
            f"{MAX_PARALLEL_CONFIGURATIONS:,}")
    return ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO"), why


def features(decl: Declaration, x: Tensor) -> Tensor:
    """The network's view of a point: its observed groups, counts as log(1 + x): (N, sum of sizes)."""
    cols = decl.columns()
    parts = [torch.log1p(x[:, cols[g.name]]) if g.family == "categorical" else x[:, cols[g.name]] for g in decl.observed]
    return torch.cat(parts, -1)


def _site(g: Group, raw: dict[str, Tensor]):
    """The guide's distribution for group g from its raw parameters (logits; loc and scale)."""
    if g.family == "bernoulli":
        return BernoulliVector(raw["logits"])
    if g.family == "categorical":
        return dist.Categorical(logits=raw["logits"])
    return dist.Normal(raw["loc"], raw["scale"]).to_event(1)


def _table(g: Group, raw: dict[str, Tensor]) -> Tensor:
    return torch.sigmoid(raw["logits"]) if g.family == "bernoulli" else torch.softmax(raw["logits"], -1)


class _Guide(PyroModule):
    """What both guides share: the sites, the baselines of discrete sites, the tables for the exact reference."""

    def __init__(self, decl: Declaration, x: Tensor, hidden: Sequence[int], baseline: str):
        super().__init__()
        self.decl = decl
        width = features(decl, x).shape[-1]
        self.baselines = nn.ModuleDict({g.name: Baseline(baseline, width, hidden, x.dtype, x.device)
                                        for g in decl.latents if g.family != "gaussian"})

    def raw(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        raise NotImplementedError

    def probs(self, x: Tensor, params=None) -> dict:
        """What the exact references score: {group: (N, size)} for the discrete groups, q(bit = 1) or q(z = k);
        {group: (loc, scale)}, each (N, size), for the gaussian ones."""
        raw = self.raw(x)
        return {g.name: (raw[g.name]["loc"], raw[g.name]["scale"]) if g.family == "gaussian" else _table(g, raw[g.name])
                for g in self.decl.latents}

    def forward(self, x: Tensor) -> None:
        raw = self.raw(x)
        inputs = None
        with pyro.plate(self.decl.plate, x.shape[0], device=x.device):
            for g in self.decl.latents:
                infer = {}
                if g.name in self.baselines:
                    def get_inputs():
                        nonlocal inputs
                        inputs = features(self.decl, x) if inputs is None else inputs
                        return inputs
                    infer = self.baselines[g.name].infer(get_inputs)
                pyro.sample(g.name, _site(g, raw[g.name]), infer=infer)


class MeanField(_Guide):
    """Free parameters per point: ``<group>_logits`` (N, size), or ``<group>_loc`` and ``<group>_scale`` (N, size)."""

    def __init__(self, decl: Declaration, x: Tensor, hidden: Sequence[int], baseline: str):
        super().__init__(decl, x, hidden, baseline)
        n = x.shape[0]
        self.num_points = n
        for g in decl.latents:
            if g.family == "gaussian":
                setattr(self, f"{g.name}_loc", PyroParam(x.new_zeros(n, g.size)))
                setattr(self, f"{g.name}_scale", PyroParam(x.new_ones(n, g.size), constraint=constraints.positive))
            else:
                setattr(self, f"{g.name}_logits", PyroParam(x.new_zeros(n, g.size)))
        # all of them are free per point (experiments/param_groups.py)
        self.local_parameters = tuple(f"{g.name}_{kind}" for g in decl.latents
                                      for kind in (("loc", "scale") if g.family == "gaussian" else ("logits",)))

    def raw(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        if x.shape[0] != self.num_points:
            raise ValueError(f"the mean-field guide was built for {self.num_points} points, got data with {x.shape[0]}: "
                             "free per-point parameters do not transfer to new data (use the amortised guide)")
        out = {}
        for g in self.decl.latents:
            if g.family == "gaussian":
                out[g.name] = {"loc": getattr(self, f"{g.name}_loc"), "scale": getattr(self, f"{g.name}_scale")}
            else:
                out[g.name] = {"logits": getattr(self, f"{g.name}_logits")}
        return out


class Amortised(_Guide):
    """One network, features(x_n) -> Standardise -> MLP -> every group's parameters (a gaussian group's scale
    through a softplus). The last layer starts at zero, so q starts at fair bits, uniform categories and N(0, 1)."""

    def __init__(self, decl: Declaration, x: Tensor, hidden: Sequence[int], baseline: str):
        super().__init__(decl, x, hidden, baseline)
        inputs = features(decl, x)
        self.standardise = Standardise(inputs)
        self.sizes = [g.size * (2 if g.family == "gaussian" else 1) for g in decl.latents]
        self.net = MLP(inputs.shape[-1], hidden, sum(self.sizes), device=x.device).to(x.dtype)

    def raw(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        out = {}
        heads = self.net(self.standardise(features(self.decl, x))).split(self.sizes, -1)
        for g, head in zip(self.decl.latents, heads):
            if g.family == "gaussian":
                loc, s = head.chunk(2, -1)
                out[g.name] = {"loc": loc, "scale": F.softplus(s + 0.5413248546129181)}  # softplus^-1(1): unit scale at zero
            else:
                out[g.name] = {"logits": head}
        return out


def mean_field(decl: Declaration, x: Tensor, init=None, hidden: Sequence[int] = (32,), baseline: str = "average") -> MeanField:
    """Free parameters per point, started at fair bits, uniform categories and N(0, 1); ``hidden`` sizes only a
    network baseline."""
    return MeanField(decl, x, hidden, baseline)


def amortised(decl: Declaration, x: Tensor, init=None, hidden: Sequence[int] = (32,), baseline: str = "average") -> Amortised:
    """One MLP with the given hidden sizes from the observed groups to every latent group's parameters."""
    return Amortised(decl, x, hidden, baseline)
