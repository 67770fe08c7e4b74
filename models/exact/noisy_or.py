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


def _lik(s: Tensor, params: NoisyORParams):
    return lambda configs: log_likelihood(s, configs, params)


def posterior(s: Tensor, params: NoisyORParams, moments: bool = False) -> binary.Posterior:
    """log p(s_n), p(d_nk = 1 | s_n) and optionally E[d_ni d_nj | s_n], by enumeration."""
    return binary.posterior(_lik(s, params), params.prior_logits, s.shape[0], s.shape[1], moments)


def log_evidence(s: Tensor, params: NoisyORParams) -> Tensor:
    """log p(s) = sum_n log p(s_n): a scalar."""
    return posterior(s, params).log_evidence.sum()


def elbo(s: Tensor, params: NoisyORParams, probs: Tensor) -> Tensor:
    """ELBO of the mean-field q with q(d_nk = 1) = probs[n, k], exactly: a scalar."""
    return binary.elbo(_lik(s, params), params.prior_logits, probs, s.shape[1])


def kl_to_posterior(s: Tensor, params: NoisyORParams, probs: Tensor) -> Tensor:
    """KL(q || p(d | s)), exactly: a scalar."""
    return binary.kl_to_posterior(_lik(s, params), params.prior_logits, probs, s.shape[1])


def best_mean_field(s: Tensor, params: NoisyORParams, **kwargs) -> binary.MeanFieldOptimum:
    """The best mean-field q per point (CAVI by enumeration): the approximation gap's reference."""
    return binary.best_mean_field(_lik(s, params), params.prior_logits, s.shape[0], **kwargs)


def fit_em(s: Tensor, init: NoisyORParams, max_iter: int = 200, tol: float = 1e-6, **kwargs) -> binary.GEMResult:
    """Generalised EM: exact E-step, closed-form prior, gradient M-step for W and the leaks."""
    return binary.fit_gem(lambda c, p: log_likelihood(s, c, p), init, s.shape[0], s.shape[1], max_iter, tol, **kwargs)
