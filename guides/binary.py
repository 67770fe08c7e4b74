r"""Guides for models with K binary latents per point (:mod:`guides.noisy_or`, :mod:`guides.lfdm` use these).

Both guides are in one family, mean field over the K bits of each point,

    q(z) = prod_n prod_k Bern(z_nk | b_nk),

and differ in where b_nk comes from:

* :class:`MeanField`: b_n = sigmoid(logits_n), free logits per point (N x K parameters).
* :class:`Amortised`: b_n = sigmoid(g(phi(x_n); lambda)), an MLP shared across points on the model's
  input features phi (the symptoms; log(1 + counts) for documents). Same family, so at the same model
  parameters any gap beyond the best mean field is the amortisation gap.

The whole vector z_n is one site (:class:`models.distributions.BernoulliVector`), site and plate named
as in the model (``d`` in ``points`` for the noisy-OR causes, ``z`` in ``docs`` for document factors).

Valid ELBO estimators: ``Trace_ELBO`` (score function, Rao-Blackwellised per point by the plate),
``TraceGraph_ELBO`` (the same with a baseline: a decaying average or a learned network, see
:class:`guides.nets.Baseline`), ``TraceEnum_ELBO`` (the runner wraps the guide in
``config_enumerate``: the 2^K configurations of each z_n are summed exactly; K <= 12). Not valid:
``TraceMeanField_ELBO``, which needs reparameterised sites.

``probs(x, params)`` -> (N, K) gives the table q(z_nk = 1) that :mod:`models.exact.binary` scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from ..models.distributions import BernoulliVector
from ..models.exact.binary import MAX_PARALLEL_LATENTS, MAX_TABLE
from . import local as local_opt
from .nets import MLP, Baseline, Standardise

LOCAL_SWEEPS = 20
"""The mean-field guide's default ``local_steps`` (CAVI sweeps per SVI step, from the last values), for K <=
:data:`MAX_PARALLEL_LATENTS`; off beyond (each sweep costs K passes over the N x 2^K table)."""
LOCAL_TOL = 1e-10
"""A local update stops early when a sweep gains less than this per point (0: run every sweep)."""

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")
WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and the binary latents are discrete"


def _bits(logits: Tensor):
    """The guide's site distribution. Imported here: :mod:`models` imports the guides to build its registry."""
    return BernoulliVector(logits)


class MeanField(PyroModule):
    """q(z_nk = 1) = sigmoid(logits_nk); ``logits``: (N, K), free per point.

    local_steps > 0 (:mod:`guides.local`): before each SVI step, up to ``local_steps`` sweeps of coordinate
    ascent (CAVI, one bit at a time, expectations by enumeration: ``best_mean_field(x, params, init=, max_sweeps=,
    tol=)`` of the model's exact module, :func:`models.exact.binary.best_mean_field`) from the current q; each
    update maximises the ELBO in its bit, so the ELBO of the points never decreases. ``local_tol``: stop when a
    sweep gains less per point (0: every sweep)."""

    local_parameters = ("logits",)  # free per point (experiments/param_groups.py)

    def __init__(self, site: str, plate: str, logits: Tensor, baseline: Baseline, features: Callable[[Tensor], Tensor],
                 local_steps: int = 0, best_mean_field: Callable | None = None, local_tol: float = LOCAL_TOL):
        super().__init__()
        self.site, self.plate = site, plate
        self.logits = PyroParam(logits.detach().clone())
        self.baseline = baseline
        self.features = features
        self.local_steps, self.local_tol = local_steps, local_tol
        self._best_mean_field = best_mean_field
        if local_steps:
            if best_mean_field is None:
                raise ValueError("local_steps > 0 needs the model's best_mean_field (CAVI by enumeration)")
            local_opt.freeze(self, "logits")

    @torch.no_grad()
    def local_update(self, x: Tensor, idx: Tensor | None, model, final: bool = False) -> None:
        """Up to ``local_steps`` CAVI sweeps (``final``: :data:`guides.local.FINAL_SWEEPS`) for points ``idx``
        (None: all) at the model's current parameters."""
        idx = torch.arange(x.shape[0], device=x.device) if idx is None else idx
        params = model.params
        size = max(1, MAX_TABLE // 2 ** self.logits.shape[-1])  # points per call: their N x 2^K table fits
        for part in idx.split(size):
            probs = torch.sigmoid(self.logits[part])
            fit = self._best_mean_field(x[part], params, init=probs,
                                        max_sweeps=local_opt.FINAL_SWEEPS if final else self.local_steps,
                                        tol=self.local_tol if self.local_tol > 0 else -math.inf)
            local_opt.set_rows(self, "logits", part, torch.logit(fit.probs))

    def probs(self, x: Tensor, params=None) -> Tensor:
        if x.shape[0] != self.logits.shape[0]:
            raise ValueError(
                f"the mean-field guide was built for {self.logits.shape[0]} points, got data with {x.shape[0]}: "
                "free per-point parameters do not transfer to new data (use the amortised guide)"
            )
        return torch.sigmoid(self.logits)

    def forward(self, x: Tensor) -> None:
        with pyro.plate(self.plate, x.shape[0], device=x.device):
            pyro.sample(self.site, _bits(self.logits), infer=self.baseline.infer(lambda: self.features(x)))


class Amortised(PyroModule):
    """q(z_nk = 1 | x_n) = sigmoid(g(phi(x_n))_k); g: Standardise -> MLP(in -> hidden -> K)."""

    def __init__(self, site: str, plate: str, x_train: Tensor, num_latents: int, hidden: Sequence[int],
                 baseline: Baseline, features: Callable[[Tensor], Tensor]):
        super().__init__()
        self.site, self.plate = site, plate
        self.features = features
        inputs = features(x_train)
        self.standardise = Standardise(inputs)
        self.net = MLP(inputs.shape[-1], hidden, num_latents, device=x_train.device).to(x_train.dtype)
        self.baseline = baseline

    def logits(self, x: Tensor, inputs: Tensor | None = None) -> Tensor:
        """(N, K); ``inputs``: features(x), when already computed."""
        return self.net(self.standardise(self.features(x) if inputs is None else inputs))

    def probs(self, x: Tensor, params=None) -> Tensor:
        return torch.sigmoid(self.logits(x))

    def forward(self, x: Tensor, subsample: Tensor | None = None) -> None:
        """``subsample`` (B,): q of these points only (a data-parallel process's shard, experiments/distributed.py)."""
        rows = x if subsample is None else x[subsample]
        inputs = self.features(rows)  # once a step, for the network and its baseline
        with pyro.plate(self.plate, x.shape[0], subsample=subsample, device=x.device):
            pyro.sample(self.site, _bits(self.logits(rows, inputs)), infer=self.baseline.infer(lambda: inputs))


def _start_logits(start: str, marginals: Callable[[], Tensor]) -> Tensor | None:
    if start == "uniform":
        return None
    if start == "posterior":
        return torch.logit(marginals().clamp(1e-6, 1 - 1e-6))
    raise ValueError(f"guide_args.start must be 'uniform' or 'posterior', got {start!r}")


def build_mean_field(site: str, plate: str, x: Tensor, num_latents: int, features: Callable[[Tensor], Tensor],
                     marginals: Callable[[], Tensor], hidden: Sequence[int], start: str, baseline: str,
                     local_steps: int | None = 0, best_mean_field: Callable | None = None) -> MeanField:
    """start="uniform": b = 1/2. start="posterior": b = the exact posterior marginals at the initial parameters.
    local_steps: CAVI sweeps before each SVI step (0 off; None, what a run's config gives when
    ``guide_args.local_steps`` is unset: :data:`LOCAL_SWEEPS` for K <= 12, else 0; see :class:`MeanField`), with
    ``best_mean_field(x, params, init=, max_sweeps=, tol=)``, the model's CAVI."""
    local_steps = local_opt.check_local_steps(local_steps, LOCAL_SWEEPS if num_latents <= MAX_PARALLEL_LATENTS else 0)
    shape = (x.shape[0], num_latents)
    logits = _start_logits(start, marginals)
    logits = x.new_zeros(shape) if logits is None else logits
    return MeanField(site, plate, logits, Baseline(baseline, features(x).shape[-1], hidden, x.dtype, x.device), features,
                     local_steps, best_mean_field)


def build_amortised(site: str, plate: str, x: Tensor, num_latents: int, features: Callable[[Tensor], Tensor],
                    marginals: Callable[[], Tensor], hidden: Sequence[int], start: str, baseline: str) -> Amortised:
    """start="uniform": the last layer is zero, b = 1/2. start="posterior": the network is first fitted
    to the exact posterior marginals at the initial parameters (cross-entropy, Adam, 300 steps)."""
    guide = Amortised(site, plate, x, num_latents, hidden, Baseline(baseline, features(x).shape[-1], hidden, x.dtype, x.device),
                      features)
    target = _start_logits(start, marginals)
    if target is not None:
        fit_to_marginals(guide, x, torch.sigmoid(target))
    return guide


def fit_to_marginals(guide: Amortised, x: Tensor, target: Tensor, steps: int = 300, lr: float = 0.02) -> float:
    """Fit the network so q(z_nk = 1 | x_n) matches ``target`` (N, K); returns the final mean cross-entropy."""
    optim = torch.optim.Adam(guide.net.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(guide.logits(x), target, reduction="sum") / x.shape[0]
        optim.zero_grad()
        loss.backward()
        optim.step()
    optim.zero_grad(set_to_none=True)  # leave no gradient behind for the SVI loop to add to
    return float(loss.detach())
