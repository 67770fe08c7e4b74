"""Exact posterior draws for a few data points, in the layout of the model's own sample sites.

These feed the guide comparison's pictures and its ArviZ export (experiments/compare.py): the exact
posterior beside each guide's. Each model's :class:`~models.ExactReference` has a ``draws`` hook built
from one of the two routines here:

* :func:`from_table`: discrete latents whose joint configurations are enumerated (the mixtures, the binary
  networks, declared discrete models): draw a configuration index per point from p(c | x_n) ∝ exp(table).
* :func:`gaussian`: linear-Gaussian models (PPCA, factor analysis), whose posterior is N(mean_n, cov_n).
"""

from __future__ import annotations

import torch
from torch import Tensor


def from_table(log_joint: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """Configuration indices (S, N) drawn from p(c | x_n) ∝ exp(log_joint[n, c]); log_joint: (N, C)."""
    probs = torch.softmax(log_joint, -1)
    return torch.multinomial(probs, num_samples, replacement=True, generator=generator).T


def gaussian(mean: Tensor, cov: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """(S, N, K) draws from N(mean_n, cov_n); mean (N, K), cov (N, K, K) or diagonal variances (N, K)."""
    eps = torch.randn((num_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=generator.device).to(mean.device)
    if cov.dim() == 2:
        return mean + cov.sqrt() * eps
    chol = torch.linalg.cholesky(cov)
    return mean + torch.einsum("nij,snj->sni", chol, eps)
