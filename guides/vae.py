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
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from ..models.exact.ppca import GaussianQ
from ..models.vae import GaussianLayer, network, rows
from . import local as local_opt
from .nets import Standardise

LOCAL_LR = 0.05
"""The per-point guide's inner Adam step size (``local_steps`` > 0)."""
LOCAL_CHUNK = 1024
"""Points per inner optimisation when a local update covers every point (after the last SVI step)."""

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
        self.first = GaussianLayer(x_train.shape[1], hidden, sizes[0], x_train.device).to(x_train.dtype)
        self.up = nn.ModuleList(GaussianLayer(sizes[l], hidden, sizes[l + 1], x_train.device).to(x_train.dtype)
                                for l in range(len(sizes) - 1))

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
        with pyro.plate("points", x.shape[0], subsample_size=subsample_size, subsample=subsample, device=x.device) as idx:
            loc, scale = first(network(self, "standardise")(rows(x, idx)))
            h = pyro.sample("h1", _normal(loc, scale, self.reparameterised))
            for l, layer in enumerate(up):
                loc, scale = layer(h)
                h = pyro.sample(f"h{l + 2}", _normal(loc, scale, self.reparameterised))


class MeanField(PyroModule):
    """Free locs[l]: (N, K_l) and scales[l]: (N, K_l) > 0 per point and layer (start: N(0, I)).

    local_steps > 0 (:mod:`guides.local`): before each SVI step, ``local_steps`` Adam steps (a fresh Adam, step
    size ``local_lr``) on the batch's (loc, log scale) of every layer, on the reparameterised one-sample ELBO of
    those points with the decoder fixed; the outer optimiser then moves only the decoder. Not exact and not
    free (each inner step is a forward and backward pass over the batch), so off by default."""

    def __init__(self, num_points: int, latent_sizes: Sequence[int], dtype=torch.float64, reparameterised: bool = True,
                 start: Sequence[tuple[Tensor, Tensor]] | None = None, local_steps: int = 0, local_lr: float = LOCAL_LR,
                 device: torch.device | None = None):
        super().__init__()
        self.num_layers = len(latent_sizes)
        self.reparameterised = reparameterised
        for l, k in enumerate(latent_sizes):
            loc, scale = start[l] if start is not None else (torch.zeros(num_points, k, device=device),
                                                             torch.ones(num_points, k, device=device))
            setattr(self, f"loc{l + 1}", PyroParam(loc.detach().clone().to(dtype)))
            setattr(self, f"scale{l + 1}", PyroParam(scale.detach().clone().to(dtype), constraint=constraints.positive))
        self.num_points = num_points
        # free per point (experiments/param_groups.py)
        self.local_parameters = tuple(f"{kind}{l + 1}" for l in range(self.num_layers) for kind in ("loc", "scale"))
        if not local_lr > 0:
            raise ValueError(f"local_lr must be > 0, got {local_lr}")
        self.local_steps, self.local_lr = local_steps, float(local_lr)
        if local_steps:
            local_opt.freeze(self, *(f"{kind}{l + 1}" for l in range(self.num_layers) for kind in ("loc", "scale")))

    @torch.no_grad()
    def local_update(self, x: Tensor, idx: Tensor | None, model, final: bool = False) -> None:
        """``local_steps`` inner Adam steps on the (loc, log scale) of points ``idx`` (None: all, in chunks of
        :data:`LOCAL_CHUNK`), the decoder ``model`` fixed (no gradient reaches it); ``final`` changes nothing."""
        self._check(x)
        parts = torch.arange(x.shape[0], device=x.device).split(LOCAL_CHUNK) if idx is None else (idx,)
        for part in parts:
            locs = [getattr(self, f"loc{l + 1}")[part].clone().requires_grad_() for l in range(self.num_layers)]
            logs = [getattr(self, f"scale{l + 1}")[part].log().requires_grad_() for l in range(self.num_layers)]
            optim = torch.optim.Adam(locs + logs, lr=self.local_lr)

            def batch_guide(x: Tensor, subsample: Tensor) -> None:
                with pyro.plate("points", x.shape[0], subsample=subsample, device=x.device):
                    for l in range(self.num_layers):
                        pyro.sample(f"h{l + 1}", _normal(locs[l], logs[l].exp(), reparameterised=True))

            elbo = Trace_ELBO()
            with torch.enable_grad():
                for _ in range(self.local_steps):
                    loss = elbo.differentiable_loss(model, batch_guide, x, subsample=part)
                    grads = torch.autograd.grad(loss, locs + logs)  # the decoder's gradients are left alone
                    for p, g in zip(locs + logs, grads):
                        p.grad = g
                    optim.step()
            for l in range(self.num_layers):
                local_opt.set_rows(self, f"loc{l + 1}", part, locs[l].detach())
                local_opt.set_rows(self, f"scale{l + 1}", part, logs[l].detach().exp())

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
        with pyro.plate("points", x.shape[0], subsample_size=subsample_size, subsample=subsample, device=x.device) as idx:
            for l in range(self.num_layers):
                loc, scale = getattr(self, f"loc{l + 1}")[idx], getattr(self, f"scale{l + 1}")[idx]
                pyro.sample(f"h{l + 1}", _normal(loc, scale, self.reparameterised))


def amortised(x: Tensor, init, hidden: Sequence[int] = (200,), reparameterised: bool = True) -> Amortised:
    return Amortised(x, init.args.latent_sizes, hidden, reparameterised)


def mean_field(x: Tensor, init, reparameterised: bool = True, local_steps: int | None = 0) -> MeanField:
    """local_steps: inner gradient steps on each batch's per-point parameters before each SVI step (None or 0:
    off; see :class:`MeanField`)."""
    return MeanField(x.shape[0], init.args.latent_sizes, x.dtype, reparameterised,
                     local_steps=local_opt.check_local_steps(local_steps, 0), device=x.device)
