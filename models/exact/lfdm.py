r"""Exact inference for the latent factor document model (:mod:`models.lfdm`), in plain torch.

For a configuration of factors c: (K,) the decoder gives word log-probabilities
log f(c) = log_softmax(g(c; theta)): (V,), and a document with counts n_d: (V,) has

    log p(n_d | c) = sum_v n_dv log f(c)_v,     for all D documents and C configurations: n @ log f(C)^T  (D, C).

The decoder is applied once per configuration (2^K of them), never per document. Enumeration, ELBO,
KL, the best mean field and generalised EM are :mod:`models.exact.binary` with this likelihood.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.exact import binary

if TYPE_CHECKING:
    from models.lfdm import LFDMParams


def decode(z: Tensor, params: LFDMParams) -> Tensor:
    """Word logits g(z; theta): (..., V) for factors z: (..., K); tanh between layers, linear output."""
    h = z
    last = len(params.layers) - 1
    for i, (weight, bias) in enumerate(params.layers):
        h = h @ weight.T + bias
        if i < last:
            h = torch.tanh(h)
    return h


def log_likelihood(x: Tensor, configs: Tensor, params: LFDMParams) -> Tensor:
    """log p(x_d | c): (D, C) for counts x: (D, V) and configurations configs: (C, K)."""
    return x @ torch.log_softmax(decode(configs, params), -1).T


def _lik(x: Tensor, params: LFDMParams):
    return lambda configs: log_likelihood(x, configs, params)


def posterior(x: Tensor, params: LFDMParams, moments: bool = False) -> binary.Posterior:
    """log p(x_d), p(z_dk = 1 | x_d) and optionally E[z_di z_dj | x_d], by enumeration."""
    return binary.posterior(_lik(x, params), params.prior_logits, x.shape[0], x.shape[1], moments)


def log_evidence(x: Tensor, params: LFDMParams) -> Tensor:
    """log p(x) = sum_d log p(x_d): a scalar."""
    return posterior(x, params).log_evidence.sum()


def elbo(x: Tensor, params: LFDMParams, probs: Tensor) -> Tensor:
    """ELBO of the mean-field q with q(z_dk = 1) = probs[d, k], exactly: a scalar."""
    return binary.elbo(_lik(x, params), params.prior_logits, probs, x.shape[1])


def kl_to_posterior(x: Tensor, params: LFDMParams, probs: Tensor) -> Tensor:
    """KL(q || p(z | x)), exactly: a scalar."""
    return binary.kl_to_posterior(_lik(x, params), params.prior_logits, probs, x.shape[1])


def best_mean_field(x: Tensor, params: LFDMParams, **kwargs) -> binary.MeanFieldOptimum:
    """The best mean-field q per document (CAVI by enumeration)."""
    return binary.best_mean_field(_lik(x, params), params.prior_logits, x.shape[0], **kwargs)


def fit_em(x: Tensor, init: LFDMParams, max_iter: int = 200, tol: float = 1e-6, **kwargs) -> binary.GEMResult:
    """Generalised EM: exact E-step, closed-form prior, gradient M-step for the decoder."""
    return binary.fit_gem(lambda c, p: log_likelihood(x, c, p), init, x.shape[0], x.shape[1], max_iter, tol, **kwargs)
