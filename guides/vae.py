r"""Guides for the VAE (:mod:`models.vae`): the same diagonal-Gaussian family per layer, amortised or free.

* ``amortised``: the seed's hierarchical inference network, reparameterised,
  q(h | x) = q(h^1 | x) q(h^2 | h^1) ... q(h^L | h^{L-1}), each factor N(mu(.), diag sigma^2(.)) from an MLP.
* ``mean_field``: free (loc, scale) per data point and layer, q(h_n) = prod_l N(h^l_n | m^l_n, diag s^l_n^2)
  (no network). With L = 1 both guides are in one family, so on the same decoder the amortised ELBO can be
  no better than the per-point optimum: the difference is the amortisation gap.

Valid estimators: ``Trace_ELBO`` and ``TraceGraph_ELBO``; the amortised guide's networks emit no ``param``
statements (:func:`models.vae.network`), so train it with ``differentiable_loss(...).backward()`` (as
``experiments.train`` does): ``Trace_ELBO.loss_and_grads`` would skip the backward pass. Both guides are reparameterised by default;
``reparameterised = False`` hides rsample from every site (:class:`ScoreFunctionNormal`), so the same guide is
trained with the score-function estimator (the seed's comparison; see :mod:`experiments.gradients`).
Both take ``subsample_size`` (minibatches) or ``subsample`` (given point indices) for their plate.
``probs(x, params)`` gives q(h^1 | x) as :class:`models.exact.ppca.GaussianQ`, which the linear (PPCA)
case's exact reference scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from ..models.exact.ppca import GaussianQ
from ..models.vae import GaussianLayer, network, rows
from .nets import Standardise

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO")
WHY_NOT = "the latents are continuous: TraceEnum_ELBO has nothing to enumerate; TraceMeanField_ELBO is not checked here"


class ScoreFunctionNormal(dist.Normal):
    """A Normal whose samples carry no pathwise gradient, so Pyro's estimators use the score function.
    (A class attribute, not ``has_rsample_(False)``: when a plate broadcasts ``Normal(...).to_event(1)`` with
    that flag, Pyro copies it onto the ``Independent`` wrapper, whose ``has_rsample`` has no setter, and raises.)"""

    has_rsample = False


def _normal(loc: Tensor, scale: Tensor, reparameterised: bool):
    return (dist.Normal if reparameterised else ScoreFunctionNormal)(loc, scale).to_event(1)


class Amortised(PyroModule):
    """q(h^1 | x) = N(GaussianLayer(standardised x)); q(h^{l+1} | h^l) = N(GaussianLayer(h^l))."""

    def __init__(self, x_train: Tensor, latent_sizes: Sequence[int], hidden: Sequence[int] = (200,),
                 reparameterised: bool = True):
        super().__init__()
        self.reparameterised = reparameterised

        self.standardise = Standardise(x_train)
        sizes = list(latent_sizes)
        self.first = GaussianLayer(x_train.shape[1], hidden, sizes[0]).to(x_train.dtype)
        self.up = nn.ModuleList(GaussianLayer(sizes[l], hidden, sizes[l + 1]).to(x_train.dtype) for l in range(len(sizes) - 1))

    def probs(self, x: Tensor, params=None) -> GaussianQ:
        loc, scale = self.first(self.standardise(x))
        return GaussianQ(loc, scale**2)

    def layers(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(loc, scale) of every layer's q, each conditioned on the layer below's mean: a summary of q(h | x)
        (exact for layer 1), for pictures and to start a per-point fit."""
        out = [self.first(self.standardise(x))]
        for layer in self.up:
            out.append(layer(out[-1][0]))
        return out

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
        first, up = network(self, "first"), network(self, "up")  # no param statements (see models.vae.network)
        with pyro.plate("points", x.shape[0], subsample_size=subsample_size, subsample=subsample) as idx:
            loc, scale = first(network(self, "standardise")(rows(x, idx)))
            h = pyro.sample("h1", _normal(loc, scale, self.reparameterised))
            for l, layer in enumerate(up):
                loc, scale = layer(h)
                h = pyro.sample(f"h{l + 2}", _normal(loc, scale, self.reparameterised))


class MeanField(PyroModule):
    """Free locs[l]: (N, K_l) and scales[l]: (N, K_l) > 0 per point and layer (start: N(0, I))."""

    def __init__(self, num_points: int, latent_sizes: Sequence[int], dtype=torch.float64, reparameterised: bool = True,
                 start: Sequence[tuple[Tensor, Tensor]] | None = None):
        super().__init__()
        self.num_layers = len(latent_sizes)
        self.reparameterised = reparameterised
        for l, k in enumerate(latent_sizes):
            loc, scale = start[l] if start is not None else (torch.zeros(num_points, k), torch.ones(num_points, k))
            setattr(self, f"loc{l + 1}", PyroParam(loc.detach().clone().to(dtype)))
            setattr(self, f"scale{l + 1}", PyroParam(scale.detach().clone().to(dtype), constraint=constraints.positive))
        self.num_points = num_points

    def _check(self, x: Tensor) -> None:
        if x.shape[0] != self.num_points:
            raise ValueError(f"the mean-field guide was built for {self.num_points} points, got {x.shape[0]}: "
                             "free per-point parameters do not transfer to new data (use the amortised guide)")

    def probs(self, x: Tensor, params=None) -> GaussianQ:
        self._check(x)
        return GaussianQ(self.loc1, self.scale1**2)

    def layers(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        self._check(x)
        return [(getattr(self, f"loc{l + 1}"), getattr(self, f"scale{l + 1}")) for l in range(self.num_layers)]

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
        self._check(x)
        with pyro.plate("points", x.shape[0], subsample_size=subsample_size, subsample=subsample) as idx:
            for l in range(self.num_layers):
                loc, scale = getattr(self, f"loc{l + 1}")[idx], getattr(self, f"scale{l + 1}")[idx]
                pyro.sample(f"h{l + 1}", _normal(loc, scale, self.reparameterised))


def amortised(x: Tensor, init, hidden: Sequence[int] = (200,), reparameterised: bool = True) -> Amortised:
    return Amortised(x, init.args.latent_sizes, hidden, reparameterised)


def mean_field(x: Tensor, init, reparameterised: bool = True) -> MeanField:
    return MeanField(x.shape[0], init.args.latent_sizes, x.dtype, reparameterised)
