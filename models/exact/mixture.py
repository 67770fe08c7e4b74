r"""Exact quantities for any model with one categorical latent per data point, from its log-joint table.

Given ``log_joint[n, k] = log p(x_n, z_n = k)`` (N, K) and a guide's table ``q[n, k] = q(z_n = k)``:

    log p(x)         = sum_n logsumexp_k log_joint[n, k]
    p(z_n = k | x_n) = softmax_k log_joint[n, k]
    ELBO(q)          = sum_n sum_k q_nk (log_joint[n, k] - log q_nk)
    KL(q || p(z|x))  = sum_n sum_k q_nk (log q_nk - log p(z_n = k | x_n))

Terms with q_nk = 0 contribute 0 (the limit of q log q). Plain torch; no Pyro.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _log_q(q: Tensor) -> Tensor:
    return torch.where(q > 0, q.log(), torch.zeros_like(q))


def log_evidence(log_joint: Tensor) -> Tensor:
    """log p(x), summed over points: a scalar."""
    return torch.logsumexp(log_joint, dim=-1).sum()


def posterior(log_joint: Tensor) -> Tensor:
    """p(z_n = k | x_n): (N, K), rows sum to one."""
    return torch.softmax(log_joint, dim=-1)


def elbo(log_joint: Tensor, q: Tensor) -> Tensor:
    """ELBO(q) = E_q[log p(x, z) - log q(z)], exact: a scalar."""
    return (q * (log_joint - _log_q(q))).sum()


def kl_to_posterior(log_joint: Tensor, q: Tensor) -> Tensor:
    """KL(q || p(z | x)), exact: a scalar."""
    return (q * (_log_q(q) - torch.log_softmax(log_joint, dim=-1))).sum()
