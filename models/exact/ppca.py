r"""Probabilistic PCA (Tipping & Bishop 1999): the linear-Gaussian one-layer VAE, in closed form; plain torch.

    h ~ N(0, I_K),   x | h ~ N(W h + b, sigma^2 I_D)          W: (D, K), b: (D,), sigma^2 > 0

Everything is Gaussian, so every quantity the VAE tests need is exact:

    log p(x)   = log N(x | b, C),  C = W W^T + sigma^2 I                            (marginal)
    p(h | x)   = N(h | M^{-1} W^T (x - b), sigma^2 M^{-1}),  M = W^T W + sigma^2 I    (posterior)
    ELBO(q)    = E_q[log N(x | W h + b, sigma^2 I)] + E_q[log N(h | 0, I)] + H[q]  for Gaussian q(h) = N(m, S)
    KL(q || p(h | x)) between two Gaussians, in closed form (independent of the ELBO formula)
    MLE        b = mean(x); W = U_K (L_K - sigma^2 I)^{1/2}; sigma^2 = mean of the D - K smallest
               eigenvalues of the sample covariance (U_K, L_K: its K leading eigenvectors and values)

q may be diagonal (the VAE's guides: variances (N, K)) or full (covariances (N, K, K)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class PPCAParams(NamedTuple):
    """weight: (D, K); bias: (D,); noise_var: () sigma^2."""

    weight: Tensor
    bias: Tensor
    noise_var: Tensor

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self._asdict().items()}


class GaussianQ(NamedTuple):
    """q(h_n) = N(mean_n, cov_n): mean (N, K); cov (N, K) diagonal variances or (N, K, K)."""

    mean: Tensor
    cov: Tensor

    def full_cov(self) -> Tensor:
        return torch.diag_embed(self.cov) if self.cov.dim() == 2 else self.cov


def marginal_cov(params: PPCAParams) -> Tensor:
    """C = W W^T + sigma^2 I: (D, D)."""
    d = params.weight.shape[0]
    return params.weight @ params.weight.T + params.noise_var * torch.eye(d, dtype=params.weight.dtype, device=params.weight.device)


def log_evidence(x: Tensor, params: PPCAParams) -> Tensor:
    """log p(x_n): (N,), by the Cholesky factor of C."""
    chol = torch.linalg.cholesky(marginal_cov(params))
    z = torch.linalg.solve_triangular(chol, (x - params.bias).T, upper=False)  # (D, N)
    d = x.shape[1]
    return -0.5 * ((z**2).sum(0) + 2 * torch.log(torch.diagonal(chol)).sum() + d * math.log(2 * math.pi))


def posterior(x: Tensor, params: PPCAParams) -> GaussianQ:
    """p(h_n | x_n) = N(M^{-1} W^T (x_n - b), sigma^2 M^{-1}): mean (N, K), cov (N, K, K) (the same for every n)."""
    w, s2 = params.weight, params.noise_var
    k = w.shape[1]
    m = w.T @ w + s2 * torch.eye(k, dtype=w.dtype, device=w.device)
    mean = torch.linalg.solve(m, w.T @ (x - params.bias).T).T
    cov = s2 * torch.linalg.inv(m)
    return GaussianQ(mean, cov.expand(x.shape[0], k, k))


def elbo(x: Tensor, params: PPCAParams, q: GaussianQ) -> Tensor:
    """ELBO(q) per point: (N,), in closed form."""
    w, b, s2 = params.weight, params.bias, params.noise_var
    d, k = w.shape
    cov = q.full_cov()
    resid = x - q.mean @ w.T - b  # (N, D)
    trace_wsw = torch.einsum("dk,nkl,dl->n", w, cov, w)  # tr(W S W^T)
    expected_lik = -0.5 * ((resid**2).sum(-1) + trace_wsw) / s2 - 0.5 * d * torch.log(2 * math.pi * s2)
    expected_prior = -0.5 * ((q.mean**2).sum(-1) + torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)) - 0.5 * k * math.log(2 * math.pi)
    entropy = 0.5 * torch.logdet(cov) + 0.5 * k * (1 + math.log(2 * math.pi))
    return expected_lik + expected_prior + entropy


def best_diagonal(x: Tensor, params: PPCAParams) -> GaussianQ:
    """The best diagonal Gaussian q(h_n) (the VAE guides' family): the posterior mean, variances sigma^2 / M_kk
    (1 / the diagonal of the posterior precision M / sigma^2), which minimise KL(q || p(h | x)) over diagonal q."""
    post = posterior(x, params)
    w, s2 = params.weight, params.noise_var
    m = w.T @ w + s2 * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    return GaussianQ(post.mean, (s2 / torch.diagonal(m)).expand_as(post.mean))


def kl_gaussian(q: GaussianQ, p: GaussianQ) -> Tensor:
    """KL(N(m_q, S_q) || N(m_p, S_p)) per point: (N,)."""
    sq, sp = q.full_cov(), p.full_cov()
    k = q.mean.shape[-1]
    chol_p = torch.linalg.cholesky(sp)
    diff = (p.mean - q.mean).unsqueeze(-1)
    maha = (torch.linalg.solve_triangular(chol_p, diff, upper=False) ** 2).sum((-1, -2))
    trace = torch.diagonal(torch.cholesky_solve(sq, chol_p), dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (trace + maha - k + 2 * torch.log(torch.diagonal(chol_p, dim1=-2, dim2=-1)).sum(-1) - torch.logdet(sq))


def kl_to_posterior(x: Tensor, params: PPCAParams, q: GaussianQ) -> Tensor:
    """KL(q(h_n) || p(h_n | x_n)): (N,)."""
    return kl_gaussian(q, posterior(x, params))


def fit_mle(x: Tensor, num_latents: int) -> PPCAParams:
    """Tipping & Bishop's closed-form maximum-likelihood solution (W up to a rotation of h)."""
    n, d = x.shape
    if not 1 <= num_latents < d:
        raise ValueError(f"PPCA needs 1 <= num_latents < dim = {d}, got {num_latents}")
    b = x.mean(0)
    cov = (x - b).T @ (x - b) / n
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    s2 = evals[num_latents:].mean()
    w = evecs[:, :num_latents] * torch.sqrt((evals[:num_latents] - s2).clamp_min(0))
    return PPCAParams(w, b, s2)
