r"""Guides for the Gaussian mixture (:mod:`models.gmm`).

Both guides are in the same family, a categorical per point,

    q(z) = prod_n Cat(z_n | phi_n),

and differ in where phi_n comes from:

* ``mean_field``: phi_n = softmax(logits_n), one free logit vector per data point (N x K parameters).
* ``amortised``: phi_n = softmax(g(x_n; lambda)), g an MLP shared across points; the same family,
  so any extra gap over ``mean_field`` at the same model parameters is the amortisation gap.

A third choice, ``marginal``, has no local guide at all: it pairs with :class:`models.gmm.MarginalGMM`,
where z is summed out in the model, so the ELBO is log p(x) exactly and q(z) is implicitly the exact
posterior. SVI with it is gradient ascent on EM's objective: the fast path for large data (see
benchmarks/). Valid with every estimator, as there is no latent site left to estimate.

Valid ELBO estimators: ``Trace_ELBO`` (score-function gradient for the discrete z, Rao-Blackwellised
per point by the plate), ``TraceGraph_ELBO`` (the same with a decaying-average baseline, set here in
the site's ``infer`` dict), and ``TraceEnum_ELBO`` (the runner wraps the guide in
``config_enumerate``: the expectation over each z_n is summed exactly, no sampling). Not valid:
``TraceMeanField_ELBO``, which needs a fully reparameterised guide; z is discrete.

Each guide also exposes ``probs(x, params)`` -> (N, K), the table q(z_n = k) (``params``, the model's
current parameters, is used only by ``marginal``), which the exact reference (:mod:`models.exact.gmm`)
uses to compute the ELBO and KL(q || p(z|x)) by enumeration.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from ..models.exact import gmm as exact_gmm
from ..models.exact import mixture
from ..models.gmm import GMMParams
from . import local as local_opt
from .nets import MLP, Baseline, Standardise

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")


class MeanField(PyroModule):
    """q(z_n) = Cat(softmax(logits_n)); ``logits``: (N, K), free per point.

    local_steps > 0 (:mod:`guides.local`): before each SVI step the logits are set to the exact posterior
    log p(z_n | x_n; theta) at the current parameters (one closed-form step; more change nothing), and the
    optimiser moves only the model: each step is then a gradient step on log p(x), the ELBO at its optimum."""

    local_parameters = ("logits",)  # free per point (experiments/param_groups.py)

    def __init__(self, num_points: int, num_components: int, init_logits: Tensor | None = None, dtype=torch.float64,
                 baseline: Baseline | None = None, local_steps: int = 0):
        super().__init__()
        self.local_steps = local_steps
        self.baseline = Baseline("average") if baseline is None else baseline
        if init_logits is None:
            init_logits = torch.zeros(num_points, num_components, dtype=dtype)
        if init_logits.shape != (num_points, num_components):
            raise ValueError(f"init_logits must have shape {(num_points, num_components)}, got {tuple(init_logits.shape)}")
        self.logits = PyroParam(init_logits.detach().clone())
        if local_steps:
            local_opt.freeze(self, "logits")

    @torch.no_grad()
    def local_update(self, x: Tensor, idx: Tensor | None, model, final: bool = False) -> None:
        """logits[idx] <- log p(z_n | x_n; model.params): the family's optimum (the exact posterior), in closed form."""
        rows = x if idx is None else x[idx]
        local_opt.set_rows(self, "logits", idx, exact_gmm.log_joint(rows, model.params).log_softmax(-1))

    def probs(self, x: Tensor, params: GMMParams | None = None) -> Tensor:
        if x.shape[0] != self.logits.shape[0]:
            raise ValueError(
                f"the mean-field guide was built for {self.logits.shape[0]} points, got x with {x.shape[0]}: "
                "free per-point parameters do not transfer to new data (use the amortised guide)"
            )
        return torch.softmax(self.logits, -1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("points", x.shape[0], device=x.device):
            pyro.sample("z", dist.Categorical(logits=self.logits), infer=self.baseline.infer(lambda: x))


class Amortised(PyroModule):
    """q(z_n | x_n) = Cat(softmax(g(x_n))); g: Standardise -> MLP(D -> hidden -> K)."""

    def __init__(self, x_train: Tensor, num_components: int, hidden: Sequence[int] = (32,),
                 baseline: Baseline | None = None):
        super().__init__()
        self.baseline = Baseline("average") if baseline is None else baseline
        self.standardise = Standardise(x_train)
        self.net = MLP(x_train.shape[-1], hidden, num_components, device=x_train.device).to(x_train.dtype)

    def logits(self, x: Tensor) -> Tensor:
        return self.net(self.standardise(x))  # (N, K)

    def probs(self, x: Tensor, params: GMMParams | None = None) -> Tensor:
        return torch.softmax(self.logits(x), -1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("points", x.shape[0], device=x.device):
            pyro.sample("z", dist.Categorical(logits=self.logits(x)), infer=self.baseline.infer(lambda: self.standardise(x)))


class Marginal(torch.nn.Module):
    """No local guide: z is summed out in the model (:class:`models.gmm.MarginalGMM`).

    ``probs(x, params)`` is the exact posterior p(z | x; params), the q that the collapsed ELBO
    implicitly uses, so the reported KL is zero and ELBO = log p(x).
    """

    def probs(self, x: Tensor, params: GMMParams) -> Tensor:
        return exact_gmm.posterior(x, params)

    def forward(self, x: Tensor) -> None:
        pass


def marginal(x: Tensor, init: GMMParams, hidden: Sequence[int] = (), start: str = "uniform",
             baseline: str = "average") -> Marginal:
    """The empty guide for the collapsed model; ``hidden``, ``start`` and ``baseline`` do not apply."""
    return Marginal()


def mean_field(x: Tensor, init: GMMParams, hidden: Sequence[int] = (32,), start: str = "uniform",
               baseline: str = "average", local_steps: int | None = 0) -> MeanField:
    """Mean-field guide for data x: (N, D) and initial model parameters ``init``.

    start="uniform": q(z_n) uniform. start="posterior": q(z_n) = p(z_n | x_n; init), the E-step at
    the initial parameters, so SVI starts where EM's first bound touches log p(x).
    baseline: TraceGraph_ELBO's control variate (:class:`guides.nets.Baseline`); ``hidden`` sizes its
    network when baseline="network" (the guide itself has no network).
    local_steps: 0 off; >= 1 the exact E-step before every SVI step (:class:`MeanField`); None: the family's
    default, 1 (what a run's config gives: ``guide_args.local_steps`` unset; this function alone defaults to off).
    """
    local_steps = local_opt.check_local_steps(local_steps, 1)
    logits = None
    if start == "posterior":
        logits = exact_gmm.log_joint(x, init).log_softmax(-1)
    elif start != "uniform":
        raise ValueError(f"guide_args.start must be 'uniform' or 'posterior', got {start!r}")
    if logits is None:
        logits = x.new_zeros(x.shape[0], init.num_components)  # uniform q, on the data's device
    return MeanField(x.shape[0], init.num_components, logits, dtype=x.dtype,
                     baseline=Baseline(baseline, x.shape[-1], hidden, x.dtype, x.device), local_steps=local_steps)


def amortised(x: Tensor, init: GMMParams, hidden: Sequence[int] = (32,), start: str = "uniform",
              baseline: str = "average") -> Amortised:
    """Amortised guide for data x: (N, D); an MLP with the given hidden sizes.

    start="uniform": the network's last layer is zero, so q starts uniform. start="posterior": the
    network is first fitted to the E-step at the initial parameters, minimising the cross-entropy
    sum_n KL(p(z_n | x_n; init) || q(z_n | x_n)) with Adam (300 steps), so amortised SVI starts near
    where EM's first bound touches log p(x).
    """
    guide = Amortised(x, init.num_components, hidden, Baseline(baseline, x.shape[-1], hidden, x.dtype, x.device))
    if start == "posterior":
        target = exact_gmm.posterior(x, init).detach()
        fit_to_table(guide, x, target)
    elif start != "uniform":
        raise ValueError(f"guide_args.start must be 'uniform' or 'posterior', got {start!r}")
    return guide


def fit_to_table(guide: Amortised, x: Tensor, target: Tensor, steps: int = 300, lr: float = 0.02) -> float:
    """Fit the guide's network so q(z_n | x_n) matches ``target``: (N, K); returns the final mean KL."""
    optim = torch.optim.Adam(guide.parameters(), lr=lr)
    for _ in range(steps):
        # KL(target || q) is the mixture formula with the network's logits in place of the log-joint
        kl = mixture.kl_to_posterior(guide.logits(x), target) / x.shape[0]
        optim.zero_grad()
        kl.backward()
        optim.step()
    return float(kl.detach())
