r"""Exact inference for the noisy-OR network (:mod:`models.noisy_or`), in plain torch.

For a configuration of causes c: (K,) the probability that symptom j stays off is

    P(s_j = 0 | c) = (1 - leak_j) prod_i exp(-W_ij c_i),   so   log P(s_j = 0 | c) = log(1 - leak_j) - (c W)_j

and, for all N points and a chunk of C configurations at once (two matrix products, no (N, C, J) tensor),

    log p(s_n | c) = sum_j (1 - s_nj) log P(s_j = 0 | c) + s_nj log(1 - P(s_j = 0 | c)).

Enumeration, the posterior, ELBO, KL, the best mean field and generalised EM are the shared
binary-latent routines of :mod:`models.exact.binary` with this likelihood.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.exact import binary

if TYPE_CHECKING:
    from models.noisy_or import NoisyORParams


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0, accurate at both ends (Maechler's switch at -log 2)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_p_off(configs: Tensor, params: NoisyORParams) -> Tensor:
    """log P(s_j = 0 | c): (C, J)."""
    return torch.log1p(-params.leak) - configs @ params.weights


def log_likelihood(s: Tensor, configs: Tensor, params: NoisyORParams) -> Tensor:
    """log p(s_n | c): (N, C) for symptoms s: (N, J) and configurations configs: (C, K)."""
    off = log_p_off(configs, params)  # (C, J)
    return (1 - s) @ off.T + s @ log1mexp(off).T


_REFERENCE = binary.Reference(log_likelihood)
posterior = _REFERENCE.posterior
log_evidence = _REFERENCE.log_evidence
elbo = _REFERENCE.elbo
kl_to_posterior = _REFERENCE.kl_to_posterior
best_mean_field = _REFERENCE.best_mean_field
draws = _REFERENCE.draws
fit_em = _REFERENCE.fit_em
