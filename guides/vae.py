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

import math
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
from . import sharding
from .nets import Standardise

LOCAL_LR = 0.1
"""The per-point guide's inner Adam step size (``local_steps`` > 0; ``guide_args.local_lr`` unset). Measured on
1,000 MNIST digits (benchmarks/bench_fair.py): with 2 or 3 inner steps, 0.1 reached the encoder's training ELBO
soonest of 0.05, 0.1 and 0.2 (with 1 step, 0.2 and 0.1 were within 10% of each other; 0.3 no better)."""
LOCAL_BETAS = (0.9, 0.999)
LOCAL_EPS = 1e-8
"""The inner Adam's moment decays and denominator guard (torch's defaults)."""
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
    r"""Free locs[l]: (N, K_l) and scales[l]: (N, K_l) > 0 per point and layer (start: N(0, I)).

    local_steps > 0 (:mod:`guides.local`): before each SVI step, ``local_steps`` Adam steps of size ``local_lr``
    on the batch's (loc, log scale) of every layer, on the reparameterised one-sample ELBO of those points with
    the decoder fixed; the outer optimiser then moves only the decoder. Each point keeps its own Adam state
    between its batches (per-point local state, like its parameters, so in the state dict and in checkpoints):

        m_n <- b1 m_n + (1 - b1) g_n,   v_n <- b2 v_n + (1 - b2) g_n^2,   t_n <- t_n + 1
        phi_n <- phi_n - local_lr * (m_n / (1 - b1^t_n)) / (sqrt(v_n / (1 - b2^t_n)) + eps)

    phi_n = (loc_n, log scale_n) of every layer, g_n = -d ELBO_n / d phi_n (point n's own term, unscaled by the
    minibatch's N / B, so a point's moments mean the same whatever batch it was in), (b1, b2, eps) =
    :data:`LOCAL_BETAS`, :data:`LOCAL_EPS` (torch's Adam defaults). Buffers ``local_m_*``, ``local_v_*``: (N, K_l);
    ``local_t``: (N,), every point's inner steps so far. So with the decoder fixed, the visits of one point are
    one continuous Adam run on its ELBO, where a fresh optimiser per visit would restart its moments (and its
    bias correction: each visit's first step would move every coordinate by about ``local_lr`` whatever its
    gradient). Not exact and not free (each inner step is a forward and backward pass over the batch), so off
    by default; on MNIST the outer optimiser with the per-point group's own step size (``svi.lr_local``), no inner
    step, reached the encoder's training ELBO as soon (docs/models/vae.md, "Local steps")."""

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
        self.local_lr = check_local_lr(local_lr)
        self.local_steps = local_steps
        if local_steps:
            local_opt.freeze(self, *(f"{kind}{l + 1}" for l in range(self.num_layers) for kind in ("loc", "scale")))
            for l, k in enumerate(latent_sizes):  # each point's inner Adam state (see the class docstring)
                for name in (f"local_m_loc{l + 1}", f"local_v_loc{l + 1}", f"local_m_logscale{l + 1}",
                             f"local_v_logscale{l + 1}"):
                    self.register_buffer(name, torch.zeros(num_points, k, dtype=dtype, device=device))
            self.register_buffer("local_t", torch.zeros(num_points, dtype=torch.int64, device=device))

    @torch.no_grad()
    def local_update(self, x: Tensor, idx: Tensor | None, model, final: bool = False) -> None:
        """``local_steps`` inner Adam steps on the (loc, log scale) of points ``idx`` (None: all, in chunks of
        :data:`LOCAL_CHUNK`; distinct indices), each point continuing its own Adam state; the decoder ``model``
        fixed (no gradient reaches it); ``final`` changes nothing."""
        self._check(x)
        parts = torch.arange(x.shape[0], device=x.device).split(LOCAL_CHUNK) if idx is None else (idx,)
        (b1, b2), eps, lr = LOCAL_BETAS, LOCAL_EPS, self.local_lr
        for part in parts:
            layers = range(1, self.num_layers + 1)
            locs = [getattr(self, f"loc{l}")[part].clone().requires_grad_() for l in layers]
            logs = [getattr(self, f"scale{l}")[part].log().requires_grad_() for l in layers]
            names = [f"loc{l}" for l in layers] + [f"logscale{l}" for l in layers]
            ms = [getattr(self, f"local_m_{n}")[part] for n in names]  # gathered copies: (B, K_l)
            vs = [getattr(self, f"local_v_{n}")[part] for n in names]
            t = self.local_t[part]
            scale = part.numel() / x.shape[0]  # the plate scales the batch's ELBO by N / B: undo it

            def batch_guide(x: Tensor, subsample: Tensor) -> None:
                with pyro.plate("points", x.shape[0], subsample=subsample, device=x.device):
                    for l in range(self.num_layers):
                        pyro.sample(f"h{l + 1}", _normal(locs[l], logs[l].exp(), reparameterised=True))

            elbo = Trace_ELBO()
            for _ in range(self.local_steps):
                with torch.enable_grad():
                    loss = elbo.differentiable_loss(model, batch_guide, x, subsample=part)
                    grads = torch.autograd.grad(loss, locs + logs)  # the decoder's gradients are left alone
                t = t + 1
                bias1 = (1 - b1 ** t.to(x.dtype)).unsqueeze(-1)  # (B, 1): each point's own step count
                bias2 = (1 - b2 ** t.to(x.dtype)).unsqueeze(-1)
                for p, g, m, v in zip(locs + logs, grads, ms, vs):
                    g = g * scale
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.sub_(lr / bias1 * m / ((v / bias2).sqrt() + eps))
            for n, m, v in zip(names, ms, vs):
                getattr(self, f"local_m_{n}")[part] = m
                getattr(self, f"local_v_{n}")[part] = v
            self.local_t[part] = t
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
                loc, scale = sharding.rows(self, f"loc{l + 1}", idx), sharding.rows(self, f"scale{l + 1}", idx)
                pyro.sample(f"h{l + 1}", _normal(loc, scale, self.reparameterised))


def amortised(x: Tensor, init, hidden: Sequence[int] = (200,), reparameterised: bool = True) -> Amortised:
    return Amortised(x, init.args.latent_sizes, hidden, reparameterised)


def check_local_lr(local_lr: float | None) -> float:
    """The inner Adam's step size (None: :data:`LOCAL_LR`), refused unless a finite number > 0 (one line naming
    the field)."""
    lr = LOCAL_LR if local_lr is None else local_lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"guide_args.local_lr must be a number > 0, got {local_lr!r}")
    return float(lr)


def mean_field(x: Tensor, init, reparameterised: bool = True, local_steps: int | None = 0,
               local_lr: float | None = None) -> MeanField:
    """local_steps: inner Adam steps on each batch's per-point parameters before each SVI step (None or 0:
    off); local_lr: their step size (None: :data:`LOCAL_LR`). See :class:`MeanField`."""
    return MeanField(x.shape[0], init.args.latent_sizes, x.dtype, reparameterised,
                     local_steps=local_opt.check_local_steps(local_steps, 0), local_lr=check_local_lr(local_lr),
                     device=x.device)
