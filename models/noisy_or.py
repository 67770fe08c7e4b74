r"""Noisy-OR network: K binary causes (diseases) per observation, J binary effects (symptoms).

Generative process, for observations n = 1..N, causes i = 1..K, symptoms j = 1..J::

    d_ni ~ Bernoulli(sigmoid(a_i))                                       a: (K,) prior logits
    P(s_nj = 0 | d_n) = (1 - leak_j) prod_i exp(-W_ij d_ni)             W: (K, J) >= 0, leak: (J,) in (0, 1)

A symptom is on unless the leak and every active cause all fail to switch it on. The causes are
independent a priori and dependent a posteriori: two causes of one observed symptom compete to
explain it (explaining away), which a mean-field q(d) = prod_i q(d_i) cannot represent.

Graphical model::

      a          W, leak
      |            |
      v            v
    +--[d_n] --> (s_n)--+
    |  (K,)      (J,)   |
    |        points N   |
    +-------------------+

Tensor shapes under ``Trace.format_shapes()`` with ``s: (N, J)``::

     Sample Sites:
    points dist       |
          value     N |
        d dist    N   | K
          value   N   | K        (2^K, 1 | K under parallel enumeration of the guide)
        s dist    N   | J
          value   N   | J

The whole latent vector d_n is one site (:class:`models.distributions.BernoulliVector`), so the
guide's ``TraceEnum_ELBO`` sums over all 2^K configurations exactly. :mod:`models.exact.noisy_or`
enumerates log p(s), the posterior and KL in plain torch, and fits by generalised EM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from .datasets import DataOptions, Dataset
from .distributions import BernoulliVector
from .errors import DataError
from .exact.noisy_or import NoisyORParams, log1mexp, log_p_off


@dataclass(frozen=True)
class NoisyORArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    num_causes: K, the number of binary causes per observation (exact enumeration up to 20, TraceEnum_ELBO up to 12).
    init_weight: initial W_ij are drawn uniformly from [0.5, 1.5] * init_weight (a symmetric start would
        leave every cause identical forever).
    """

    num_causes: int = 3
    init_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_causes < 1:
            raise ValueError(f"model_args.num_causes must be >= 1, got {self.num_causes}")
        if not self.init_weight > 0:
            raise ValueError(f"model_args.init_weight must be > 0, got {self.init_weight}")


def model(s: Tensor, params: NoisyORParams, subsample: Tensor | None = None) -> None:
    r"""Pyro model of the network given its parameters.

    d_n ~ prod_i Bern(sigmoid(a_i));  s_nj | d_n ~ Bern(1 - (1 - leak_j) exp(-(d_n W)_j))
    s: (num_points, num_symptoms) of 0/1; ``subsample`` (B,): only these points, the plate scaled by N / B
    (a data-parallel process's shard, experiments/distributed.py)
    """
    num_points, k = s.shape[0], params.num_latents
    with pyro.plate("points", num_points, subsample=subsample, device=s.device) as idx:
        d = pyro.sample("d", BernoulliVector(params.prior_logits.expand(len(idx), k)))  # (N, K)
        off = log_p_off(d, params)  # log P(s_j = 0 | d): (N, J)
        # Bernoulli with logit log(1 - P0) - log P0 scores s log(1 - P0) + (1 - s) log P0
        pyro.sample("s", dist.Bernoulli(logits=log1mexp(off) - off).to_event(1), obs=s if subsample is None else s[idx])


class NoisyOR(PyroModule):
    """The network with learnable point-estimated parameters, for SVI.

    Param sites: ``prior_logits`` (free), ``weights`` (positive, W = exp(u)), ``leak`` (sigmoid).
    """

    def __init__(self, init: NoisyORParams):
        super().__init__()
        self.prior_logits = PyroParam(init.prior_logits.detach().clone())
        self.weights = PyroParam(init.weights.detach().clamp_min(1e-6).clone(), constraint=constraints.positive)
        self.leak = PyroParam(init.leak.detach().clone(), constraint=constraints.unit_interval)

    @property
    def params(self) -> NoisyORParams:
        return NoisyORParams(self.prior_logits, self.weights, self.leak)

    def forward(self, s: Tensor, subsample: Tensor | None = None) -> None:
        model(s, self.params, subsample)


def simulate(params: NoisyORParams, num_points: int, seed: int) -> tuple[Tensor, Tensor]:
    """Draw ``num_points`` observations. Returns symptoms s: (N, J) and the true causes d: (N, K)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = params.weights.dtype
    d = torch.bernoulli(torch.sigmoid(params.prior_logits).expand(num_points, -1).contiguous(), generator=gen)
    p_on = -torch.expm1(log_p_off(d.to(dtype), params))
    return torch.bernoulli(p_on, generator=gen), d


def random_network(
    num_causes: int,
    num_symptoms: int,
    seed: int,
    links_per_symptom: int = 2,
    dtype: torch.dtype = torch.float64,
) -> NoisyORParams:
    """A QMR-like network with known parameters: sparse links, strong weights, rare causes, small leaks.

    Each symptom is linked to ``links_per_symptom`` distinct causes chosen at random (every cause gets
    at least one symptom when J allows) with W_ij ~ Uniform(1, 3) (a cause switches its symptom on with
    probability 0.63 to 0.95); every other W_ij is 0. P(d_i = 1) ~ Uniform(0.1, 0.3); leak_j ~
    Uniform(0.01, 0.05).
    """
    gen = torch.Generator().manual_seed(seed)  # every draw in float64, whatever torch's default dtype
    f64 = torch.float64
    links = min(links_per_symptom, num_causes)
    scores = torch.rand(num_symptoms, num_causes, generator=gen, dtype=f64)
    # symptom j's first link is cause j mod K, so every cause has a symptom when J >= K
    scores[torch.arange(num_symptoms), torch.arange(num_symptoms) % num_causes] = 2.0
    linked = torch.zeros(num_symptoms, num_causes, dtype=torch.bool)
    linked.scatter_(1, scores.topk(links, dim=1).indices, True)
    weights = torch.where(linked.T, 1 + 2 * torch.rand(num_causes, num_symptoms, generator=gen, dtype=f64), 0.0)
    prior = 0.1 + 0.2 * torch.rand(num_causes, generator=gen, dtype=f64)
    leak = 0.01 + 0.04 * torch.rand(num_symptoms, generator=gen, dtype=f64)
    return NoisyORParams(torch.logit(prior).to(dtype), weights.to(dtype).contiguous(), leak.to(dtype))


def validate_data(s, num_causes: int) -> Tensor:
    """Check a symptom matrix before any work starts; return it as float64.

    Raises :class:`DataError`: not a 2-D numeric matrix, empty, non-finite, or an entry other than 0/1
    (naming the first one). ``num_causes`` is accepted for a uniform signature.
    """
    if not isinstance(s, Tensor):
        arr = np.asarray(s)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"symptoms must be numbers (0 or 1); got dtype {arr.dtype}")
        s = torch.as_tensor(arr)
    if s.dim() != 2:
        raise DataError(f"symptoms must be a matrix of shape (num_points, num_symptoms); got shape {tuple(s.shape)}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise DataError(f"symptoms are empty: shape {tuple(s.shape)}")
    if s.is_complex():
        raise DataError(f"symptoms must be real 0/1 values; got dtype {s.dtype}")
    s = s.to(torch.float64)
    bad = ~((s == 0) | (s == 1))
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"symptoms must be binary (0 or 1); {int(bad.sum())} entries are not, first at row {row}, column {col}: {s[row, col].item()}"
        )
    return s


def init_params(s: Tensor, args: NoisyORArgs, seed: int) -> NoisyORParams:
    """Starting parameters shared by generalised EM and every guide.

    P(d_i = 1) = 0.2; W_ij ~ Uniform(0.5, 1.5) * init_weight (random, to break the symmetry between
    causes); leak_j = half the observed rate of symptom j, clamped to [0.005, 0.5].
    """
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU, then moved: the same start on every device
    k, j = args.num_causes, s.shape[1]
    weights = args.init_weight * (0.5 + torch.rand(k, j, generator=gen, dtype=s.dtype, device="cpu").to(s.device))
    leak = (0.5 * s.mean(0)).clamp(0.005, 0.5)
    return NoisyORParams(s.new_full((k,), float(torch.logit(torch.tensor(0.2, device="cpu")))), weights, leak)


def synthetic(opts: DataOptions, args: NoisyORArgs, seed: int) -> Dataset:
    """``opts.num_points`` observations of ``opts.dim`` symptoms from :func:`random_network` (known truth)."""
    truth = random_network(args.num_causes, opts.dim, seed)
    s, d = simulate(truth, opts.num_points, seed + 1)
    desc = f"synthetic QMR-like network (K={args.num_causes}, J={opts.dim}, N={opts.num_points})"
    return Dataset(s, desc, tuple(f"s{j}" for j in range(opts.dim)), truth=truth, labels=d)


def describe_fit(fits: dict[str, NoisyORParams], features: tuple[str, ...]) -> str:
    """Markdown: each method's prior and weights, causes as rows, symptoms as columns."""
    out = []
    for name, p in fits.items():
        head = "| cause | P(d=1) | " + " | ".join(features) + " |"
        rule = "|---|---:|" + "---:|" * len(features)
        rows = [
            f"| {i} | {float(torch.sigmoid(p.prior_logits[i])):.3f} | " + " | ".join(f"{float(w):.2f}" for w in p.weights[i]) + " |"
            for i in range(p.num_latents)
        ]
        leak = "| leak | | " + " | ".join(f"{float(v):.3f}" for v in p.leak) + " |"
        out.append(f"### {name}: W (causes x symptoms)\n\n" + "\n".join([head, rule, *rows, leak]))
    return "\n\n".join(out)
