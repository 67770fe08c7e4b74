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

from collections.abc import Callable, Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from ..models.distributions import BernoulliVector
from .nets import MLP, Baseline, Standardise

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")
WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and the binary latents are discrete"


def _bits(logits: Tensor):
    """The guide's site distribution. Imported here: :mod:`models` imports the guides to build its registry."""
    return BernoulliVector(logits)


class MeanField(PyroModule):
    """q(z_nk = 1) = sigmoid(logits_nk); ``logits``: (N, K), free per point."""

    def __init__(self, site: str, plate: str, logits: Tensor, baseline: Baseline, features: Callable[[Tensor], Tensor]):
        super().__init__()
        self.site, self.plate = site, plate
        self.logits = PyroParam(logits.detach().clone())
        self.baseline = baseline
        self.features = features

    def probs(self, x: Tensor, params=None) -> Tensor:
        if x.shape[0] != self.logits.shape[0]:
            raise ValueError(
                f"the mean-field guide was built for {self.logits.shape[0]} points, got data with {x.shape[0]}: "
                "free per-point parameters do not transfer to new data (use the amortised guide)"
            )
        return torch.sigmoid(self.logits)

    def forward(self, x: Tensor) -> None:
        with pyro.plate(self.plate, x.shape[0]):
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
        self.net = MLP(inputs.shape[-1], hidden, num_latents).to(x_train.dtype)
        self.baseline = baseline

    def logits(self, x: Tensor, inputs: Tensor | None = None) -> Tensor:
        """(N, K); ``inputs``: features(x), when already computed."""
        return self.net(self.standardise(self.features(x) if inputs is None else inputs))

    def probs(self, x: Tensor, params=None) -> Tensor:
        return torch.sigmoid(self.logits(x))

    def forward(self, x: Tensor) -> None:
        inputs = self.features(x)  # once a step, for the network and its baseline
        with pyro.plate(self.plate, x.shape[0]):
            pyro.sample(self.site, _bits(self.logits(x, inputs)), infer=self.baseline.infer(lambda: inputs))


def _start_logits(start: str, marginals: Callable[[], Tensor]) -> Tensor | None:
    if start == "uniform":
        return None
    if start == "posterior":
        return torch.logit(marginals().clamp(1e-6, 1 - 1e-6))
    raise ValueError(f"guide_args.start must be 'uniform' or 'posterior', got {start!r}")


def build_mean_field(site: str, plate: str, x: Tensor, num_latents: int, features: Callable[[Tensor], Tensor],
                     marginals: Callable[[], Tensor], hidden: Sequence[int], start: str, baseline: str) -> MeanField:
    """start="uniform": b = 1/2. start="posterior": b = the exact posterior marginals at the initial parameters."""
    shape = (x.shape[0], num_latents)
    logits = _start_logits(start, marginals)
    logits = torch.zeros(shape, dtype=x.dtype) if logits is None else logits
    return MeanField(site, plate, logits, Baseline(baseline, features(x).shape[-1], hidden, x.dtype), features)


def build_amortised(site: str, plate: str, x: Tensor, num_latents: int, features: Callable[[Tensor], Tensor],
                    marginals: Callable[[], Tensor], hidden: Sequence[int], start: str, baseline: str) -> Amortised:
    """start="uniform": the last layer is zero, b = 1/2. start="posterior": the network is first fitted
    to the exact posterior marginals at the initial parameters (cross-entropy, Adam, 300 steps)."""
    guide = Amortised(site, plate, x, num_latents, hidden, Baseline(baseline, features(x).shape[-1], hidden, x.dtype), features)
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
