r"""Guides for the factorial HMM (:mod:`models.fhmm`): the two mean-field families of Ghahramani & Jordan, and
an amortised one.

* ``mean_field``, completely factorised: q(s) = prod_n prod_t prod_m Cat(s_{n,t}^m | softmax(logits_{n,t,m})),
  free logits (N, T, M, L).
* ``structured_mean_field``: independent chains, q(s_n) = prod_m q(s_n^m), each chain a Markov chain
  q(s_n^m) proportional to pi^q_m[s_1] prod_t A^q_m[s_t, s_{t+1}] prod_t exp(h_{n,t}^m[s_t]), with free
  pseudo-emissions h (N, T, M, L) and guide-owned pi^q, A^q (started at the model's). Ghahramani & Jordan's
  fixed point is of this form (with A^q = A), so the family's optimum is reachable; marginals and pairwise
  tables come from one L-state forward-backward per chain.
* ``amortised``: the structured family with h = g(y; lambda), a bidirectional GRU over the sequence and a
  linear read-out to (M, L) per step, shared across sequences: any gap beyond ``structured_mean_field``'s at
  the same model parameters is the amortisation gap.

In the Pyro guide each chain's whole path is one site ``s`` (:class:`models.distributions.MarkovChain`,
batch (M, N), event (T,)), sampled from q's own conditionals q(s_{t+1} | s_t) = q(s_t, s_{t+1}) / q(s_t).

Valid estimators:
* ``Trace_ELBO``: the score-function gradient for the discrete paths (Rao-Blackwellised per sequence by the
  plate; its variance grows with T);
* ``TraceGraph_ELBO``: the same with Pyro's decaying-average baseline (``guide_args.baseline``);
* ``Analytic_ELBO``, the low-variance path the configs use: no sampling; the ELBO of each guide is computed in
  closed form from its marginal and pairwise tables (:func:`models.exact.fhmm.elbo`: Gaussian expectations in
  closed form, Bernoulli ones by contracting the L^M emission table with q) and differentiated exactly.
Not valid: ``TraceEnum_ELBO`` (one site holds a whole chain: L^T values) and ``TraceMeanField_ELBO``
(needs reparameterised sites).

Every guide gives ``variational(y)``: the :class:`models.exact.fhmm.Variational` tables the exact reference
scores (``probs(y, params)`` is the same, for the runner).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn

from ..models.distributions import MarkovChain
from ..models.exact import fhmm as exact
from ..models.exact.fhmm import FHMMParams, sequence_lengths
from . import local as local_opt
from .nets import Baseline

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "Analytic_ELBO")
WHY_NOT = ("TraceEnum_ELBO would sum over the L^T paths of each chain (one site holds a whole chain) and "
           "TraceMeanField_ELBO needs reparameterised sites; Analytic_ELBO is the exact, sampling-free path")
BASELINES = ("average", "none")
LOCAL_SWEEPS = 1
"""The free guides' default ``local_steps``: fixed-point sweeps per SVI step, from the last values (an incremental
E-step; on the chorales, 10 sweeps a step left test log p 1.4 nats per step lower at equal wall time than 1)."""
LOCAL_TOL = 1e-6
"""A local update stops early when a sweep's relative ELBO gain is at most this (0: every sweep runs): warm started
from the last step's values, most updates stop after a few sweeps."""


class _ChainGuide(PyroModule):
    """Shared sampling and scoring: subclasses define ``variational(y)``."""

    def __init__(self, baseline: str):
        super().__init__()
        if baseline not in BASELINES:
            raise ValueError(f"the factorial HMM guides take baseline {BASELINES}, got {baseline!r}")
        self.baseline = Baseline(baseline)

    def variational(self, y: Tensor) -> exact.Variational:
        raise NotImplementedError

    def probs(self, y: Tensor, params: FHMMParams | None = None) -> exact.Variational:
        return self.variational(y)

    def analytic_elbo(self, y: Tensor, params: FHMMParams) -> Tensor:
        """ELBO(q) summed over sequences, in closed form (differentiable): the Analytic_ELBO objective."""
        return exact.elbo(y, params, self.variational(y)).sum()

    def forward(self, y: Tensor) -> None:
        q = self.variational(y)
        lengths = sequence_lengths(y)
        tiny = torch.finfo(y.dtype).tiny
        init_logits = torch.log(q.marginals[:, 0].clamp_min(tiny)).transpose(0, 1)  # (M, N, L)
        # row i of log q(s_t, s_{t+1}) normalises to log q(s_{t+1} | s_t = i)
        trans_logits = torch.log(q.pairwise.clamp_min(tiny)).permute(2, 0, 1, 3, 4)  # (M, N, T-1, L, L)
        n, m = y.shape[0], q.marginals.shape[2]
        with pyro.plate("sequences", n, dim=-1, device=y.device), pyro.plate("chains", m, dim=-2, device=y.device):
            pyro.sample("s", MarkovChain(init_logits, trans_logits, lengths), infer=self.baseline.infer(lambda: y))


class _LocalSweeps:
    """local_steps > 0 (:mod:`guides.local`): before each SVI step (``final``: after the last, to convergence), up
    to ``local_steps`` of Ghahramani &
    Jordan's fixed-point sweeps in the guide's family (:func:`models.exact.fhmm.fit_mean_field`) from the current
    q, at the model's current parameters; each sweep maximises the ELBO over one chain at a time, so the
    sequences' ELBO never decreases. ``local_tol``: stop when a sweep's relative gain is at most this."""

    family = ""
    local_steps, local_tol = 0, LOCAL_TOL

    @torch.no_grad()
    def local_update(self, y: Tensor, idx: Tensor | None, model, final: bool = False) -> None:
        rows = y if idx is None else y[idx]
        params = model.params.to(y.dtype)
        start = exact.structured(self.init_logits, self.trans_logits, self.unary if idx is None else self.unary[idx],
                                 sequence_lengths(rows)) if self.family == "structured" else \
            exact.factorised(torch.softmax(self.logits if idx is None else self.logits[idx], -1), sequence_lengths(rows))
        sweeps = local_opt.FINAL_SWEEPS if final else self.local_steps
        fit = exact.fit_mean_field(rows, params, self.family, max_sweeps=sweeps, init=start.marginals,
                                   tol=self.local_tol if self.local_tol > 0 else -math.inf)
        if self.family == "factorised":
            local_opt.set_rows(self, "logits", idx, torch.log(fit.q.marginals.clamp_min(torch.finfo(y.dtype).tiny)))
            return
        local_opt.set_rows(self, "unary", idx, _pseudo_emissions(rows, params, fit.q.marginals))
        local_opt.set_rows(self, "init_logits", None, params.init_logits)  # at the fixed point q's chains are the model's
        local_opt.set_rows(self, "trans_logits", None, params.trans_logits)


class MeanField(_LocalSweeps, _ChainGuide):
    """Completely factorised: q(s_{n,t}^m) = softmax(logits[n, t, m]); logits: (N, T, M, L), free. Local sweeps:
    :class:`_LocalSweeps` (family "factorised")."""

    family = "factorised"
    local_parameters = ("logits",)  # free per sequence (experiments/param_groups.py)

    def __init__(self, logits: Tensor, baseline: str = "average", local_steps: int = 0):
        super().__init__(baseline)
        self.logits = PyroParam(logits.detach().clone())
        self.local_steps = local_steps
        if local_steps:
            local_opt.freeze(self, "logits")

    def variational(self, y: Tensor) -> exact.Variational:
        _check_size(y, self.logits.shape[0])
        return exact.factorised(torch.softmax(self.logits, -1), sequence_lengths(y))


class Structured(_LocalSweeps, _ChainGuide):
    """Independent chains with free pseudo-emissions h: (N, T, M, L) and guide-owned init (M, L) and transition
    (M, L, L) logits. Local sweeps (:class:`_LocalSweeps`, family "structured") set h to Ghahramani & Jordan's
    h_t^m = E_{-m}[log p(y_t | s_t)] and the guide's chains to the model's (where the fixed point has them); all
    three are then frozen, and the optimiser moves only the model."""

    family = "structured"
    local_parameters = ("unary",)  # free per sequence (experiments/param_groups.py)

    def __init__(self, unary: Tensor, init: FHMMParams, baseline: str = "average", local_steps: int = 0):
        super().__init__(baseline)
        self.unary = PyroParam(unary.detach().clone())
        self.init_logits = PyroParam(init.init_logits.detach().clone())
        self.trans_logits = PyroParam(init.trans_logits.detach().clone())
        self.local_steps = local_steps
        if local_steps:
            local_opt.freeze(self, "unary", "init_logits", "trans_logits")

    def variational(self, y: Tensor) -> exact.Variational:
        _check_size(y, self.unary.shape[0])
        return exact.structured(self.init_logits, self.trans_logits, self.unary, sequence_lengths(y))


class Amortised(_ChainGuide):
    """The structured family with h = Linear(BiGRU(y)): (N, T, M, L); inputs standardised with the training
    rows' mean and scale; the GRU has hidden[0] units per direction and len(hidden) layers. The read-out
    starts at zero (q = the guide's prior chains)."""

    def __init__(self, y_train: Tensor, init: FHMMParams, hidden: Sequence[int] = (32,), baseline: str = "average"):
        super().__init__(baseline)
        m, l = init.num_chains, init.num_states
        rows = torch.nan_to_num(y_train, nan=0.0)[exact.step_mask(sequence_lengths(y_train), y_train.shape[1])]
        std = rows.std(0, unbiased=False)
        self.register_buffer("mean", rows.mean(0))
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)))
        size = hidden[0]
        self.rnn = nn.GRU(y_train.shape[-1], size, num_layers=len(hidden), batch_first=True, bidirectional=True,
                          device=y_train.device).to(y_train.dtype)
        self.readout = nn.Linear(2 * size, m * l, device=y_train.device).to(y_train.dtype)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        self.shape = (m, l)
        self.init_logits = PyroParam(init.init_logits.detach().clone())
        self.trans_logits = PyroParam(init.trans_logits.detach().clone())

    def unary(self, y: Tensor) -> Tensor:
        lengths = sequence_lengths(y)
        x = (torch.nan_to_num(y, nan=0.0) - self.mean) / self.std
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)  # lengths: CPU
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=y.shape[1])
        return self.readout(out).reshape(y.shape[:2] + self.shape)

    def variational(self, y: Tensor) -> exact.Variational:
        return exact.structured(self.init_logits, self.trans_logits, self.unary(y), sequence_lengths(y))


def _check_size(y: Tensor, n: int) -> None:
    if y.shape[0] != n:
        raise ValueError(
            f"this guide was built for {n} sequences, got {y.shape[0]}: free per-sequence parameters do not "
            "transfer to new data (use the amortised guide)"
        )


def _start(y: Tensor, init: FHMMParams, family: str, start: str) -> Tensor | None:
    """Starting marginals: None (uniform) or the family's fixed point at the initial parameters."""
    if start not in ("uniform", "posterior"):
        raise ValueError(f"guide_args.start must be 'uniform' or 'posterior', got {start!r}")
    if start == "uniform":
        return None
    return exact.fit_mean_field(y, init.to(y.dtype), family, max_sweeps=100)


def _pseudo_emissions(y: Tensor, params: FHMMParams, marginals: Tensor) -> Tensor:
    """Ghahramani & Jordan's h: (N, T, M, L), h_t^m = E_{-m}[log p(y_t | s_t)] under the other chains' marginals
    (zero past each end): the structured family's fixed point, given its marginals."""
    mask = exact.step_mask(sequence_lengths(y), y.shape[1])
    return torch.stack([exact.expected_log_emission(torch.nan_to_num(y), params, marginals, chain=c)
                        for c in range(params.num_chains)], 2) * mask[..., None, None]


def mean_field(y: Tensor, init: FHMMParams, start: str = "uniform", baseline: str = "average",
               local_steps: int | None = 0) -> MeanField:
    """start="posterior": the logits of the completely factorised fixed point at ``init``. local_steps: fixed-point
    sweeps before each SVI step (0: off; None, what a run's config gives
    when ``guide_args.local_steps`` is unset: :data:`LOCAL_SWEEPS`)."""
    local_steps = local_opt.check_local_steps(local_steps, LOCAL_SWEEPS)
    n, t = y.shape[:2]
    fit = _start(y, init, "factorised", start)
    logits = y.new_zeros(n, t, init.num_chains, init.num_states)
    if fit is not None:
        logits = torch.log(fit.q.marginals.clamp_min(1e-30))
    return MeanField(logits, baseline, local_steps)


def structured_mean_field(y: Tensor, init: FHMMParams, start: str = "uniform", baseline: str = "average",
                          local_steps: int | None = 0) -> Structured:
    """start="posterior": pseudo-emissions of the structured fixed point at ``init`` (Ghahramani & Jordan's h).
    local_steps: fixed-point sweeps before each SVI step (0: off; None, what a run's config gives
    when ``guide_args.local_steps`` is unset: :data:`LOCAL_SWEEPS`)."""
    local_steps = local_opt.check_local_steps(local_steps, LOCAL_SWEEPS)
    n, t = y.shape[:2]
    unary = y.new_zeros(n, t, init.num_chains, init.num_states)
    fit = _start(y, init, "structured", start)
    if fit is not None:
        unary = _pseudo_emissions(y, init.to(y.dtype), fit.q.marginals)
    return Structured(unary, init.to(y.dtype), baseline, local_steps)


def amortised(y: Tensor, init: FHMMParams, hidden: Sequence[int] = (32,), baseline: str = "average") -> Amortised:
    return Amortised(y, init.to(y.dtype), hidden, baseline)
